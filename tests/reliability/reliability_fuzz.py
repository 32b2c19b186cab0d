"""Seeded, reproducible bad requests derived from valid chat-completions, embeddings and messages calls.

`mutants(family, count, seed)` gives the same requests for the same arguments. Each family breaks
requests one way (types, nulls, numbers, nesting, sizes, Unicode, duplicate keys, headers, framing,
structure, paths); a mutant changes one or two things in one valid base request.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from typing import Any

from reliability_mutations import FAMILIES

CHAT = "/v1/chat/completions"
EMBED = "/v1/embeddings"
MESSAGES = "/v1/messages"

# Valid requests the mutations start from: each is answered 200 by the gateway and the mock.
BASES: tuple[tuple[str, dict[str, Any]], ...] = (
    (
        CHAT,
        {
            "model": "rel-chat",
            "messages": [
                {"role": "system", "content": "Answer briefly."},
                {"role": "user", "content": "What is a toll road?"},
            ],
            "max_tokens": 16,
            "temperature": 0.2,
            "user": "fuzz-user",
        },
    ),
    (
        CHAT,
        {
            "model": "rel-chat",
            "messages": [{"role": "user", "content": [{"type": "text", "text": "hi there"}]}],
            "stream": True,
            "stream_options": {"include_usage": True},
            "max_completion_tokens": 8,
            "n": 1,
        },
    ),
    (
        CHAT,
        {
            "model": "rel-chat",
            "messages": [
                {"role": "user", "content": "call a tool"},
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
                    ],
                },
                {"role": "tool", "tool_call_id": "c1", "content": "42"},
            ],
            "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
            "max_tokens": 8,
        },
    ),
    (EMBED, {"model": "rel-embed", "input": "the quick brown fox"}),
    (EMBED, {"model": "rel-embed", "input": ["one", "two"], "encoding_format": "float", "dimensions": 4}),
    (
        MESSAGES,
        {
            "model": "rel-claude",
            "max_tokens": 16,
            "system": "Be brief.",
            "messages": [{"role": "user", "content": [{"type": "text", "text": "hello"}]}],
        },
    ),
    (
        MESSAGES,
        {
            "model": "rel-claude",
            "max_tokens": 8,
            "stream": True,
            "messages": [{"role": "user", "content": "hi"}],
        },
    ),
)


@dataclass(frozen=True)
class Mutant:
    family: str
    label: str
    method: str
    path: str
    headers: dict[str, str]
    body: bytes | None

    def describe(self) -> str:
        size = len(self.body) if self.body is not None else 0
        return f"{self.family}/{self.label} {self.method} {self.path} ({size} bytes)"


def _auth(path: str, key: str) -> dict[str, str]:
    return {"x-api-key": key} if path == MESSAGES else {"authorization": f"Bearer {key}"}


def mutants(family: str, count: int, seed: int, key: str) -> list[Mutant]:
    """`count` requests of one family, the same for the same seed; most break one thing, some two."""
    rng = random.Random(f"{seed}:{family}")
    make = FAMILIES[family]
    out: list[Mutant] = []
    for _ in range(count):
        path, base = rng.choice(BASES)
        label, method, new_path, headers, body = make(rng, path, base)
        if body is not None and rng.random() < 0.15 and family not in ("framing", "headers", "paths"):
            # A second mutation of the same family on top of the first (combined damage).
            try:
                second = json.loads(body)
                if isinstance(second, dict):
                    more, method, new_path, headers, body = make(rng, path, second)
                    label = f"{label} + {more}"
            except (ValueError, RecursionError):  # too deep, or a lone surrogate that cannot be encoded
                pass
        all_headers = {"content-type": "application/json", **_auth(path, key)}
        if family == "headers":
            all_headers.pop("content-type")
        all_headers.update(headers)
        out.append(Mutant(family, label, method, new_path, all_headers, body))
    return out


def huge_bodies(key: str) -> list[Mutant]:
    """Valid chat requests of 1 to 12 MiB: up to 10 MiB they are served, above it 413."""
    out = []
    for mib in (1, 3.9, 4.5, 6, 8, 9.9, 10.5, 12):
        size = int(mib * (1 << 20))
        words = ("word " * (size // 5 + 1))[: size - 100]
        body = json.dumps(
            {"model": "rel-chat", "messages": [{"role": "user", "content": words}], "max_tokens": 4}
        ).encode()
        out.append(
            Mutant(
                "huge-body",
                f"{mib} MiB",
                "POST",
                CHAT,
                {"content-type": "application/json", **_auth(CHAT, key)},
                body,
            )
        )
    return out
