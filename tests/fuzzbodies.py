"""Mutated request bodies for the gateway's three request endpoints: every field given every wrong shape.

Pure and deterministic (no gateway, no sockets, no randomness unless `sample` is asked for one), so
any tier can send the same bodies: the unit fuzz test drives the router filter with them, a tier
with a real gateway can post them over HTTP. A test module imports it after putting `tests/` on
`sys.path` (`sys.path.insert(0, str(ROOT / "tests"))`).

Each `Mutation` starts from a valid request (`bases`) and changes one place in it (`path`, the
field's OpenAI-style name in `field`) to one replacement (`kind`): a wrong JSON type, a null, a huge
or non-finite number, deep nesting, a lone surrogate, or a structural change (the field removed,
wrapped in an array, wrapped in an object). Values that `json.dumps` cannot write (NaN, `1e999`,
10k-deep nesting, integers past Python's digit limit) are spliced into the encoded text, so the
body is exactly what a hostile client would send.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

__all__ = [
    "CHAT",
    "EMBEDDINGS",
    "ENDPOINTS",
    "KINDS",
    "MESSAGES",
    "Mutation",
    "bases",
    "field_name",
    "mutations",
    "sample",
]

CHAT: Final = "/v1/chat/completions"
EMBEDDINGS: Final = "/v1/embeddings"
MESSAGES: Final = "/v1/messages"
ENDPOINTS: Final = (CHAT, EMBEDDINGS, MESSAGES)

DEEP: Final = 10_000  # deeper than any parser's recursion limit
_MARKER: Final = "\x00tollway-fuzz\x00"
_MARKER_JSON: Final = json.dumps(_MARKER).encode()

Path = tuple[str | int, ...]


@dataclass(frozen=True)
class Mutation:
    endpoint: str
    base: int  # which of the endpoint's `bases`
    path: Path  # where the body was changed; () is the whole body
    kind: str  # one of KINDS
    body: bytes

    @property
    def field(self) -> str:
        return field_name(self.path)

    def __str__(self) -> str:
        return f"{self.endpoint} base {self.base}: {self.field or '<body>'} := {self.kind}"


def field_name(path: Path) -> str:
    """`messages[1].content[0].text`: the OpenAI `param` spelling of a path."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


# Replacement values. A `bytes` value is raw JSON text, spliced in as is.
_VALUES: Final[dict[str, Any]] = {
    "null": None,
    "true": True,
    "false": False,
    "zero": 0,
    "negative": -1,
    "fraction": 1.5,
    "huge_int": 10**400,
    "int_past_digit_limit": b"9" * 5_000,
    "float_overflow": b"1e999",
    "nan": b"NaN",
    "infinity": b"Infinity",
    "minus_infinity": b"-Infinity",
    "empty_string": "",
    "string": "x",
    "lone_surrogate": b'"\\ud800"',
    "empty_array": [],
    "array_of_null": [None],
    "array_of_strings": ["x", "y"],
    "empty_object": {},
    "object": {"x": 1},
    "object_with_type": {"type": "text", "text": {"nested": True}},
    "string_of_deep_json": "[" * DEEP + "]" * DEEP,  # where a field holds JSON text (arguments)
    "string_of_nan_json": '{"q": NaN}',
    "deep_array": b"[" * DEEP + b"]" * DEEP,
    "deep_object": b'{"a":' * DEEP + b"1" + b"}" * DEEP,
    "deep_mixed_200": b'[{"a":' * 100 + b"1" + b"}]" * 100,
}
_STRUCTURAL: Final = ("removed", "wrapped_in_array", "wrapped_in_object")
KINDS: Final = (*_VALUES, *_STRUCTURAL)


def bases(endpoint: str, model: str) -> list[dict[str, Any]]:
    """Valid requests for `endpoint`, rich enough that every field the gateway reads is present."""
    if endpoint == CHAT:
        return [
            {
                "model": model,
                "messages": [
                    {"role": "system", "content": "be brief"},
                    {
                        "role": "user",
                        "content": [
                            {"type": "text", "text": "hi"},
                            {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}},
                        ],
                        "name": "ann",
                    },
                    {
                        "role": "assistant",
                        "content": None,
                        "tool_calls": [
                            {
                                "id": "call_1",
                                "type": "function",
                                "function": {"name": "lookup", "arguments": '{"q": 1}'},
                            }
                        ],
                    },
                    {"role": "tool", "tool_call_id": "call_1", "content": "42"},
                    {"role": "user", "content": "and then?", "x-extension": {"type": "note", "text": "t"}},
                ],
                "tools": [
                    {
                        "type": "function",
                        "function": {
                            "name": "lookup",
                            "description": "look it up",
                            "parameters": {"type": "object", "properties": {"q": {"type": "integer"}}},
                        },
                    }
                ],
                "tool_choice": {"type": "function", "function": {"name": "lookup"}},
                "parallel_tool_calls": False,
                "stop": ["\n\n"],
                "temperature": 0.5,
                "top_p": 1,
                "max_tokens": 50,
                "n": 1,
                "user": "user-1",
                "response_format": {"type": "text"},
                "metadata": {"team": "a"},
                "seed": 7,
                "logit_bias": {"50256": -100},
            },
            {
                "model": model,
                "messages": [{"role": "user", "content": "hi"}],
                "stream": True,
                "stream_options": {"include_usage": False},
                "max_completion_tokens": 20,
                "stop": "END",
                "tool_choice": "auto",
            },
        ]
    if endpoint == EMBEDDINGS:
        return [
            {"model": model, "input": ["a", "b"], "encoding_format": "float", "dimensions": 8, "user": "u"},
            {"model": model, "input": "one text"},
            {"model": model, "input": [[1, 2, 3], [4, 5]]},
        ]
    if endpoint == MESSAGES:
        return [
            {
                "model": model,
                "max_tokens": 64,
                "system": [{"type": "text", "text": "be brief"}],
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "text", "text": "hi"},
                            {
                                "type": "image",
                                "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"},
                            },
                        ],
                    },
                    {"role": "assistant", "content": "ok"},
                    {"role": "user", "content": "more"},
                ],
                "tools": [{"name": "lookup", "description": "d", "input_schema": {"type": "object"}}],
                "tool_choice": {"type": "auto"},
                "temperature": 0.5,
                "stop_sequences": ["x"],
                "stream": False,
                "metadata": {"user_id": "u"},
            },
            {
                "model": model,
                "max_tokens": 16,
                "system": "short",
                "messages": [{"role": "user", "content": "hi"}],
            },
        ]
    raise ValueError(f"no bases for endpoint {endpoint!r}")


def _paths(value: Any, prefix: Path = ()) -> Iterator[Path]:
    yield prefix
    if isinstance(value, dict):
        for name, item in value.items():
            yield from _paths(item, (*prefix, name))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _paths(item, (*prefix, index))


def _replace(body: Any, path: Path, new: Any) -> Any:
    """A copy of `body` with the value at `path` replaced (`_REMOVE`: deleted)."""
    if not path:
        return new
    head, rest = path[0], path[1:]
    copy: Any = dict(body) if isinstance(body, dict) else list(body)
    replaced = _replace(copy[head], rest, new)
    if replaced is _REMOVE:
        del copy[head]
    else:
        copy[head] = replaced
    return copy


_REMOVE: Final = object()


def _get(body: Any, path: Path) -> Any:
    for part in path:
        body = body[part]
    return body


def _encode(body: Any, path: Path, kind: str) -> bytes:
    if kind == "removed":
        if not path:
            return b""
        return json.dumps(_replace(body, path, _REMOVE)).encode()
    if kind == "wrapped_in_array":
        return json.dumps(_replace(body, path, [_get(body, path)])).encode()
    if kind == "wrapped_in_object":
        return json.dumps(_replace(body, path, {"value": _get(body, path)})).encode()
    value = _VALUES[kind]
    if isinstance(value, bytes):
        text = json.dumps(_replace(body, path, _MARKER)).encode()
        return text.replace(_MARKER_JSON, value, 1)
    return json.dumps(_replace(body, path, value)).encode()


def mutations(endpoint: str, model: str, kinds: Sequence[str] = KINDS) -> Iterator[Mutation]:
    """Every (place, replacement) for every base request of `endpoint`, in a fixed order."""
    for number, body in enumerate(bases(endpoint, model)):
        for path in _paths(body):
            for kind in kinds:
                yield Mutation(endpoint, number, path, kind, _encode(body, path, kind))


def sample(models: Mapping[str, str], count: int, seed: int = 0) -> list[Mutation]:
    """`count` mutations drawn without replacement (with repeats once all are used) from every
    endpoint in `models` (endpoint → model name), reproducible by `seed`."""
    pool = [m for endpoint, model in models.items() for m in mutations(endpoint, model)]
    rng = random.Random(seed)
    out: list[Mutation] = []
    while len(out) < count:
        out.extend(rng.sample(pool, min(len(pool), count - len(out))))
    return out
