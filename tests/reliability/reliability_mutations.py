"""The fuzzer's mutation families: each takes a valid request and breaks it one way.

A family is `(rng, path, body) -> (label, method, path, headers, body)`; `FAMILIES` names them.
"""

from __future__ import annotations

import gzip
import json
import random
import zlib
from collections.abc import Callable
from typing import Any

from reliability_values import (
    CONTENT_TYPES,
    ENCODINGS,
    METHODS,
    NUMBER_TOKENS,
    PATHS,
    RAW_STRINGS,
    SENTINEL,
    TYPE_POOL,
    UNICODE_POOL,
    deleted,
    json_paths,
    node_at,
    path_name,
    replaced,
    string_paths,
    with_raw,
)

Build = tuple[str, str, str, dict[str, str], bytes | None]  # label, method, path, headers, body


def _type_swap(rng: random.Random, path: str, body: dict[str, Any]) -> Build:
    target = rng.choice(list(json_paths(body)))
    old = node_at(body, target)
    new = rng.choice([v for v in TYPE_POOL if type(v) is not type(old)])
    return (
        f"{path_name(target)}={json.dumps(new)[:20]}",
        "POST",
        path,
        {},
        json.dumps(replaced(body, target, new)).encode(),
    )


def _null_missing(rng: random.Random, path: str, body: dict[str, Any]) -> Build:
    target = rng.choice(list(json_paths(body)))
    if rng.random() < 0.5:
        return (
            f"{path_name(target)}=null",
            "POST",
            path,
            {},
            json.dumps(replaced(body, target, None)).encode(),
        )
    return f"-{path_name(target)}", "POST", path, {}, json.dumps(deleted(body, target)).encode()


def _numbers(rng: random.Random, path: str, body: dict[str, Any]) -> Build:
    numeric = [
        p
        for p in json_paths(body)
        if isinstance(node_at(body, p), int | float) and not isinstance(node_at(body, p), bool)
    ]
    candidates = [*numeric, ("max_tokens",), ("temperature",), ("n",), ("dimensions",), ("top_p",)]
    target = rng.choice(candidates)
    token = rng.choice(NUMBER_TOKENS)
    if target not in set(json_paths(body)):
        body = {**body, str(target[0]): 1}
    return f"{path_name(target)}={token[:12]}", "POST", path, {}, with_raw(body, target, token)


def _nesting(rng: random.Random, path: str, body: dict[str, Any]) -> Build:
    target = rng.choice(list(json_paths(body)))
    depth = rng.choice((32, 200, 999, 1001, 3000, 20000, 100000))
    raw = "[" * depth + "]" * depth if rng.random() < 0.5 else '{"a":' * depth + "1" + "}" * depth
    return f"{path_name(target)} depth {depth}", "POST", path, {}, with_raw(body, target, raw)


def _huge_string(rng: random.Random, path: str, body: dict[str, Any]) -> Build:
    target = rng.choice(string_paths(body))
    length = rng.choice((1_000, 10_000, 10_000, 50_000, 100_000, 300_000))
    filler = rng.choice(("a", "word ", "😀", "{", "\\n", "ab" * 7))
    text = (filler * (length // len(filler) + 1))[:length]
    raw = json.dumps(text) if filler != "\\n" else '"' + text + '"'
    return f"{path_name(target)} x{length}", "POST", path, {}, with_raw(body, target, raw)


def _unicode(rng: random.Random, path: str, body: dict[str, Any]) -> Build:
    target = rng.choice(string_paths(body))
    roll = rng.random()
    if roll < 0.4:
        raw = '"' + rng.choice(UNICODE_POOL) + '"'
        return f"{path_name(target)}={raw[:16]}", "POST", path, {}, with_raw(body, target, raw)
    if roll < 0.7:
        new = rng.choice(RAW_STRINGS)
        return (
            f"{path_name(target)} raw",
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
    return f"{path_name(target)} bytes {bad.hex()}", "POST", path, {}, data


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
            data = gzip.compress(data, mtime=0)  # no timestamp: the same bytes every run
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
