"""Deterministic reply text, token counts and embedding vectors.

One "token" is one whitespace-separated word everywhere in the mock:

* prompt tokens of a chat/messages request = words in every text part of every message
  (+ the Anthropic ``system`` prompt) + 4 per message;
* prompt tokens of an embeddings request = words per string input, or the length of a token array;
* the reply has exactly ``visible`` words, so a stream of one chunk per token sends one word per chunk.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import math
import random
import re
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from .knobs import Knobs

PER_MESSAGE_TOKENS = 4
_WORD = re.compile(r"\w+")
_ECHO_WORDS = 8
_PREFIX = ["This", "is", "a", "mock", "reply", "to:"]
_FILLER = [
    "lorem", "ipsum", "dolor", "sit", "amet", "consectetur", "adipiscing", "elit", "sed", "do",
    "eiusmod", "tempor", "incididunt", "ut", "labore", "et", "dolore", "magna", "aliqua",
]  # fmt: skip


def text_of(content: Any) -> str:
    """The text of a message ``content``: a string, or a list of parts/blocks with ``text``."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(text_of(part) for part in content)
    if isinstance(content, dict):
        parts = []
        text = content.get("text")
        if isinstance(text, str):
            parts.append(text)
        nested = content.get("content")
        if nested is not None:
            parts.append(text_of(nested))
        return " ".join(parts)
    return ""


def count_words(text: str) -> int:
    return len(text.split())


def count_prompt(messages: Iterable[Any], system: Any = None) -> int:
    total = count_words(text_of(system)) if system is not None else 0
    for message in messages:
        total += PER_MESSAGE_TOKENS
        if isinstance(message, dict):
            total += count_words(text_of(message.get("content")))
    return total


def last_user_text(messages: list[Any]) -> str:
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            return text_of(message.get("content"))
    return ""


def reply_words(prompt_text: str, count: int) -> list[str]:
    """``count`` words: "This is a mock reply to: <first words of the prompt>", padded with filler."""
    if count <= 0:
        return []
    words = _PREFIX + prompt_text.split()[:_ECHO_WORDS]
    if len(words) < count:
        missing = count - len(words)
        words += (_FILLER * (missing // len(_FILLER) + 1))[:missing]
    return words[:count]


def split_pieces(words: list[str], chunks: int | None) -> list[str]:
    """Split the reply into ``chunks`` text pieces whose concatenation is ``" ".join(words)``."""
    n = len(words)
    if n == 0:
        return []
    k = n if chunks is None else max(1, min(chunks, n))
    pieces: list[str] = []
    for i in range(k):
        group = words[i * n // k : (i + 1) * n // k]
        text = " ".join(group)
        pieces.append(text if i == 0 else " " + text)
    return pieces


@dataclass(frozen=True, slots=True)
class Plan:
    """What one chat/messages reply will contain and report."""

    prompt_tokens: int
    completion_tokens: int  # total output tokens, reasoning included (as OpenAI reports it)
    reasoning_tokens: int
    cached_tokens: int
    cache_creation_tokens: int
    words: list[str]  # the visible reply: completion_tokens - reasoning_tokens words
    truncated: bool  # max_tokens cut the reply

    @property
    def text(self) -> str:
        return " ".join(self.words)


def plan_reply(*, counted_prompt: int, prompt_text: str, knobs: Knobs, limit: int | None) -> Plan:
    prompt = counted_prompt if knobs.prompt_tokens is None else knobs.prompt_tokens
    completion = knobs.completion_tokens
    truncated = False
    if limit is not None and completion > limit:
        completion, truncated = limit, True
    reasoning = min(knobs.reasoning_tokens, completion)
    return Plan(
        prompt_tokens=prompt,
        completion_tokens=completion,
        reasoning_tokens=reasoning,
        cached_tokens=knobs.cached_tokens,
        cache_creation_tokens=knobs.cache_creation_tokens,
        words=reply_words(prompt_text, completion - reasoning),
        truncated=truncated,
    )


def int_or_none(value: Any) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return None


# --- embeddings ---------------------------------------------------------------------------------


def embedding_inputs(raw: Any) -> list[str | list[int]] | None:
    """Normalise ``input``: a string, a list of strings, a token array or a list of token arrays."""
    if isinstance(raw, str):
        return [raw]
    if not isinstance(raw, list) or not raw:
        return None
    if all(isinstance(x, int) and not isinstance(x, bool) for x in raw):
        return [list(raw)]
    out: list[str | list[int]] = []
    for item in raw:
        if isinstance(item, str):
            out.append(item)
        elif isinstance(item, list) and all(isinstance(x, int) and not isinstance(x, bool) for x in item):
            out.append(list(item))
        else:
            return None
    return out


def input_tokens(item: str | list[int]) -> int:
    return count_words(item) if isinstance(item, str) else len(item)


@functools.lru_cache(maxsize=4096)
def _seeded_unit(key: bytes, dimensions: int) -> tuple[float, ...]:
    seed = int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little")
    rng = random.Random(seed)
    values = [rng.uniform(-1.0, 1.0) for _ in range(dimensions)]
    norm = math.sqrt(sum(v * v for v in values)) or 1.0
    return tuple(v / norm for v in values)


def embedding_vector(item: str | list[int], dimensions: int) -> list[float]:
    """A unit vector of float32 values, the same for the same input.

    A string is a bag of words: the sum of one seeded random unit vector per lowercase word, so texts
    sharing most of their words are close (cosine near the share of common words) and unrelated
    texts are near orthogonal, as a real model's paraphrases and unrelated prompts are. A token array
    (or a string without words) is one seeded vector of its own.
    """
    words = _WORD.findall(item.lower()) if isinstance(item, str) else []
    if words:
        total = [0.0] * dimensions
        for word in words:
            for index, value in enumerate(_seeded_unit(word.encode(), dimensions)):
                total[index] += value
    else:
        key = item.encode() if isinstance(item, str) else ("tokens:" + ",".join(map(str, item))).encode()
        total = list(_seeded_unit(key, dimensions))
    norm = math.sqrt(sum(v * v for v in total)) or 1.0
    packed = struct.pack(f"<{dimensions}f", *(v / norm for v in total))
    # Round-trip through float32 so the float and base64 encodings carry identical numbers.
    return list(struct.unpack(f"<{dimensions}f", packed))


def embedding_base64(vector: list[float]) -> str:
    """OpenAI's ``encoding_format: "base64"``: little-endian float32 bytes, base64-encoded."""
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")
