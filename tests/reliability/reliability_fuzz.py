"""Seeded, reproducible bad requests derived from valid chat-completions, embeddings and messages calls.

`mutants(family, count, seed)` gives the same requests for the same arguments. Each family breaks
requests one way (types, nulls, numbers, nesting, sizes, Unicode, duplicate keys, headers, framing,
structure, paths); a mutant changes one or two things in one valid base request.
"""

from __future__ import annotations

import copy
import gzip
import json
import random
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

JsonPath = tuple[str | int, ...]
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

# Values of every JSON type (and a few that look alike), for the type swaps.
TYPE_POOL: tuple[Any, ...] = (
    None,
    True,
    False,
    0,
    -1,
    1.5,
    2**63,
    "",
    "x",
    "16",
    "true",
    [],
    [1, "a"],
    {},
    {"a": 1},
    [{"role": "user", "content": "hi"}],
)
NUMBER_TOKENS: tuple[str, ...] = (
    "NaN",
    "Infinity",
    "-Infinity",
    "1e400",
    "-1e400",
    "-0.0",
    "0",
    "-1",
    "1.0",
    "18446744073709551616",
    "1" + "0" * 400,
    "1e-400",
    "4.9e-324",
    "0x10",
    "01",
    "+1",
    ".5",
)
UNICODE_POOL: tuple[str, ...] = (
    "\\ud800",  # a lone high surrogate (escaped; raw JSON text)
    "\\udfff",
    "\\ud83d\\ude00",  # a valid pair
    "\\u0000",
    "nul\\u0000inside",
    "\\u202egnp.exe",
    "\\u2028\\u2029",
    "\\ufeff",
)
RAW_STRINGS: tuple[str, ...] = (
    "😀" * 50,
    "e\u0301" * 500,
    "漢字かな交じり文",
    "\u200b" * 100,
    "مرحبا بالعالم",
    "\U0010ffff",
    "\t\r\n\f\b",
)
CONTENT_TYPES: tuple[str | None, ...] = (
    None,
    "",
    "text/plain",
    "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=xyz",
    "application/json; charset=utf-16",
    "application/json; charset=latin-1",
    "application/JSON",
    "application/json;;;",
    "*/*",
    "application/xml",
)
ENCODINGS: tuple[str, ...] = (
    "gzip",
    "deflate",
    "br",
    "identity",
    "gzip, gzip",
    "compress",
    "x-unknown",
    "zstd",
)
PATHS: tuple[str, ...] = (
    "{path}/",
    "{path}//",
    "/v1/{tail}",
    "/v1//{tail}",
    "/V1/{tail}",
    "{path}?foo=bar",
    "{path}?api-version=2024-01-01",
    "{path}?" + "q=1&" * 200,
    "{path}%2F",
    "{path}/../../v1/models",
    "{path}/x",
    "/v1/{tail}.json",
    "/v2/{tail}",
    "/{tail}",
    "{path}#frag",
    "/v1/%63hat/completions",
)
METHODS: tuple[str, ...] = ("GET", "PUT", "PATCH", "DELETE", "OPTIONS")


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


def json_paths(value: Any, prefix: JsonPath = ()) -> Iterator[JsonPath]:
    """Every node below the root, as a path of keys and indexes."""
    if isinstance(value, dict):
        for key, child in value.items():
            yield (*prefix, key)
            yield from json_paths(child, (*prefix, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            yield (*prefix, index)
            yield from json_paths(child, (*prefix, index))


def replaced(value: Any, path: JsonPath, new: Any) -> Any:
    out = copy.deepcopy(value)
    node = out
    for step in path[:-1]:
        node = node[step]
    node[path[-1]] = new
    return out


def deleted(value: Any, path: JsonPath) -> Any:
    out = copy.deepcopy(value)
    node = out
    for step in path[:-1]:
        node = node[step]
    del node[path[-1]]
    return out


SENTINEL = "\u0001RAW\u0001"


def with_raw(value: Any, path: JsonPath, raw: str) -> bytes:
    """`value` as JSON with the node at `path` replaced by the raw JSON text `raw` (not escaped)."""
    text = json.dumps(replaced(value, path, SENTINEL), ensure_ascii=True)
    return text.replace(json.dumps(SENTINEL), raw, 1).encode()


def _string_paths(body: dict[str, Any]) -> list[JsonPath]:
    found = [path for path in json_paths(body) if isinstance(_at(body, path), str)]
    return found or list(json_paths(body))


def _at(value: Any, path: JsonPath) -> Any:
    for step in path:
        value = value[step]
    return value


def _auth(path: str, key: str) -> dict[str, str]:
    return {"x-api-key": key} if path == MESSAGES else {"authorization": f"Bearer {key}"}


Build = tuple[str, str, str, dict[str, str], bytes | None]  # label, method, path, headers, body


def _type_swap(rng: random.Random, path: str, body: dict[str, Any]) -> Build:
    target = rng.choice(list(json_paths(body)))
    old = _at(body, target)
    new = rng.choice([v for v in TYPE_POOL if type(v) is not type(old)])
    return (
        f"{_name(target)}={json.dumps(new)[:20]}",
        "POST",
        path,
        {},
        json.dumps(replaced(body, target, new)).encode(),
    )


def _null_missing(rng: random.Random, path: str, body: dict[str, Any]) -> Build:
    target = rng.choice(list(json_paths(body)))
    if rng.random() < 0.5:
        return f"{_name(target)}=null", "POST", path, {}, json.dumps(replaced(body, target, None)).encode()
    return f"-{_name(target)}", "POST", path, {}, json.dumps(deleted(body, target)).encode()


def _numbers(rng: random.Random, path: str, body: dict[str, Any]) -> Build:
    numeric = [
        p
        for p in json_paths(body)
        if isinstance(_at(body, p), int | float) and not isinstance(_at(body, p), bool)
    ]
    candidates = [*numeric, ("max_tokens",), ("temperature",), ("n",), ("dimensions",), ("top_p",)]
    target = rng.choice(candidates)
    token = rng.choice(NUMBER_TOKENS)
    if target not in set(json_paths(body)):
        body = {**body, str(target[0]): 1}
    return f"{_name(target)}={token[:12]}", "POST", path, {}, with_raw(body, target, token)


def _nesting(rng: random.Random, path: str, body: dict[str, Any]) -> Build:
    target = rng.choice(list(json_paths(body)))
    depth = rng.choice((32, 200, 999, 1001, 3000, 20000, 100000))
    raw = "[" * depth + "]" * depth if rng.random() < 0.5 else '{"a":' * depth + "1" + "}" * depth
    return f"{_name(target)} depth {depth}", "POST", path, {}, with_raw(body, target, raw)


def _huge_string(rng: random.Random, path: str, body: dict[str, Any]) -> Build:
    target = rng.choice(_string_paths(body))
    length = rng.choice((1_000, 10_000, 10_000, 50_000, 100_000, 300_000))
    filler = rng.choice(("a", "word ", "😀", "{", "\\n", "ab" * 7))
    text = (filler * (length // len(filler) + 1))[:length]
    raw = json.dumps(text) if filler != "\\n" else '"' + text + '"'
    return f"{_name(target)} x{length}", "POST", path, {}, with_raw(body, target, raw)


def _unicode(rng: random.Random, path: str, body: dict[str, Any]) -> Build:
    target = rng.choice(_string_paths(body))
    roll = rng.random()
    if roll < 0.4:
        raw = '"' + rng.choice(UNICODE_POOL) + '"'
        return f"{_name(target)}={raw[:16]}", "POST", path, {}, with_raw(body, target, raw)
    if roll < 0.7:
        new = rng.choice(RAW_STRINGS)
        return (
            f"{_name(target)} raw",
            "POST",
            path,
            {},
            json.dumps(replaced(body, target, new), ensure_ascii=False).encode(),
        )
    # Bytes that are not UTF-8 (inside a string, or the whole body in another encoding).
    text = json.dumps(replaced(body, target, SENTINEL), ensure_ascii=False)
    bad = rng.choice((b"\xff\xfe", b"\xc0\xaf", b"\xed\xa0\x80", b"\xe2\x82", b"\x80"))
    data = text.encode().replace(json.dumps(SENTINEL, ensure_ascii=False).encode(), b'"' + bad + b'"', 1)
    if rng.random() < 0.3:
        data = json.dumps(body, ensure_ascii=False).encode(rng.choice(("utf-16", "utf-32", "utf-8-sig")))
        return "other encoding", "POST", path, {}, data
    return f"{_name(target)} bytes {bad.hex()}", "POST", path, {}, data


def _duplicate_keys(rng: random.Random, path: str, body: dict[str, Any]) -> Build:
    key = rng.choice([k for k in body] + ["stream", "model"])
    value = rng.choice((*TYPE_POOL, "gpt-9", "rel-embed", "rel-chat"))
    first = json.dumps(body)[1:-1]
    duplicate = f"{json.dumps(key)}: {json.dumps(value)}"
    text = "{" + (f"{duplicate}, {first}" if rng.random() < 0.5 else f"{first}, {duplicate}") + "}"
    return f"{key} twice", "POST", path, {}, text.encode()


def _headers(rng: random.Random, path: str, body: dict[str, Any]) -> Build:
    data = json.dumps(body).encode()
    roll = rng.random()
    if roll < 0.35:
        content_type = rng.choice(CONTENT_TYPES)
        headers = {} if content_type is None else {"content-type": content_type}
        if content_type and content_type.startswith("application/x-www"):
            data = b"model=rel-chat&messages=hi"
        return f"content-type {content_type}", "POST", path, headers, data
    if roll < 0.7:
        encoding = rng.choice(ENCODINGS)
        if rng.random() < 0.5 and encoding == "gzip":
            data = gzip.compress(data)
        elif rng.random() < 0.5 and encoding == "deflate":
            data = zlib.compress(data)
        return (
            f"content-encoding {encoding}",
            "POST",
            path,
            {"content-type": "application/json", "content-encoding": encoding},
            data,
        )
    name, value = rng.choice(
        (
            ("x-tollway-user", "ü" * 40),
            ("x-tollway-user", "x" * 5000),
            ("x-tollway-user", ""),
            ("helicone-user-id", "\t"),
            ("traceparent", "00-zzzz-yyyy-01"),
            ("traceparent", "00-" + "0" * 32 + "-" + "0" * 16 + "-01"),
            ("x-request-id", "../../etc/passwd"),
            ("accept", "text/event-stream"),
            ("accept-encoding", "br, zstd, gzip;q=0"),
            ("expect", "100-continue"),
        )
    )
    return f"{name}", "POST", path, {"content-type": "application/json", name: value}, data


def _framing(rng: random.Random, path: str, body: dict[str, Any]) -> Build:
    text = json.dumps(body).encode()
    roll = rng.random()
    if roll < 0.6:
        cut = rng.randrange(0, len(text))
        return f"cut at {cut}", "POST", path, {}, text[:cut]
    raw = rng.choice(
        (
            b"",
            b" ",
            b"\n\n",
            b"null",
            b"[]",
            b'"x"',
            b"1",
            b"true",
            b"{}",
            b"[{}]",
            text + b"garbage",
            text + text,
            b"\xef\xbb\xbf" + text,
            text + b"\x00",
            b"{" + b"\x00" * 10 + b"}",
            b'{"model":}',
            b"{'model': 'rel-chat'}",
            text.replace(b'"', b"'"),
            text.replace(b":", b"=", 1),
            b"/*c*/" + text,
        )
    )
    return f"body {raw[:12]!r}", "POST", path, {}, raw


def _structure(rng: random.Random, path: str, body: dict[str, Any]) -> Build:
    choices: list[tuple[str, Callable[[], dict[str, Any]]]] = [
        ("extra fields", lambda: {**body, "zzz": {"deep": [1, 2]}, "": None, "model ": "x"}),
        (
            "unknown model",
            lambda: {
                **body,
                "model": rng.choice(("gpt-9", "", " rel-chat", "REL-CHAT", "rel-chat\n", "x" * 300)),
            },
        ),
        ("empty messages", lambda: {**body, "messages": []}),
        (
            "many messages",
            lambda: {**body, "messages": [{"role": "user", "content": "m"}] * rng.choice((500, 3000))},
        ),
        (
            "odd role",
            lambda: {
                **body,
                "messages": [
                    {"role": rng.choice(("", "god", "tool", "function", "developer", 7)), "content": "x"}
                ],
            },
        ),
        (
            "odd parts",
            lambda: {
                **body,
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            rng.choice(
                                (
                                    {"type": "image_url", "image_url": {"url": "data:,"}},
                                    {"type": "nope"},
                                    {"text": 5},
                                    "x",
                                    None,
                                    {"type": "text"},
                                    [],
                                    {"type": "text", "text": ["a"]},
                                )
                            )
                        ],
                    }
                ],
            },
        ),
        ("no content", lambda: {**body, "messages": [{"role": "user"}]}),
        ("message list in list", lambda: {**body, "messages": [[{"role": "user", "content": "x"}]]}),
        (
            "tools broken",
            lambda: {
                **body,
                "tools": rng.choice(([{"type": "function"}], "tools", [None], [{"function": 5}])),
            },
        ),
        (
            "stream options",
            lambda: {
                **body,
                "stream": True,
                "stream_options": rng.choice(
                    ({"include_usage": "yes"}, {"include_usage": None}, [], {"x": 1})
                ),
            },
        ),
        ("huge max_tokens", lambda: {**body, "max_tokens": rng.choice((10**9, 2**31, 2**53 + 1, 2**63))}),
        ("many inputs", lambda: {**body, "input": ["x"] * rng.choice((2048, 5000))}),
        (
            "token input",
            lambda: {**body, "input": rng.choice(([[1, 2, 3]], [-1], [2**40], [[]], [1.5], [[1, "a"]]))},
        ),
        ("user types", lambda: {**body, "user": rng.choice((5, [], {"id": 1}, "u" * 10000, ""))}),
        (
            "system blocks",
            lambda: {
                **body,
                "system": rng.choice(([{"type": "text", "text": "s"}], [{"type": "text"}], [5], {"a": 1})),
            },
        ),
        ("n", lambda: {**body, "n": rng.choice((0, 2, 128, -1, 10**6))}),
    ]
    label, make = rng.choice(choices)
    return label, "POST", path, {}, json.dumps(make()).encode()


def _paths(rng: random.Random, path: str, body: dict[str, Any]) -> Build:
    data = json.dumps(body).encode()
    if rng.random() < 0.3:
        return f"method {path}", rng.choice(METHODS), path, {}, data if rng.random() < 0.5 else None
    template = rng.choice(PATHS)
    new = template.format(path=path, tail=path.removeprefix("/v1/"))
    return f"path {template}", "POST", new, {}, data


FAMILIES: dict[str, Callable[[random.Random, str, dict[str, Any]], Build]] = {
    "type-swap": _type_swap,
    "null-missing": _null_missing,
    "numbers": _numbers,
    "nesting": _nesting,
    "huge-string": _huge_string,
    "unicode": _unicode,
    "duplicate-keys": _duplicate_keys,
    "headers": _headers,
    "framing": _framing,
    "structure": _structure,
    "paths": _paths,
}


def _name(path: JsonPath) -> str:
    return ".".join(str(step) for step in path)


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
