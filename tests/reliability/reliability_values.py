"""The values and JSON-path helpers the fuzzer's mutations are made of (reliability_mutations.py)."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from typing import Any

JsonPath = tuple[str | int, ...]

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


def string_paths(body: dict[str, Any]) -> list[JsonPath]:
    found = [path for path in json_paths(body) if isinstance(node_at(body, path), str)]
    return found or list(json_paths(body))


def node_at(value: Any, path: JsonPath) -> Any:
    for step in path:
        value = value[step]
    return value


def path_name(path: JsonPath) -> str:
    return ".".join(str(step) for step in path)
