"""Strict JSON parsing of what clients send: what Python's `json` accepts but JSON (RFC 8259) does not.

Python reads `NaN`, `Infinity`, `-Infinity` and `1e999` (as a float infinity), strings with lone
UTF-16 surrogates, and bodies in UTF-16 or UTF-32; a provider's parser refuses all of them, and a
gateway that forwards them gets the provider's error (or re-encodes them as invalid JSON). Nesting
deeper than `MAX_DEPTH` is refused too: the estimate, the Anthropic translation and the spans walk
the body recursively. Each refusal names the field (`param`), found by a second look at the body
that only a refused request pays for.
"""

from __future__ import annotations

import json
import json.scanner
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Final

__all__ = ["MAX_DEPTH", "BadJson", "field_name", "parse_strict"]

# Deep enough for any real request (a tool's JSON schema nested 25 levels is ~60 here).
MAX_DEPTH: Final = 64
# Only bodies that contain one of these need the surrogate check (a `\uD800`..`\uDFFF` escape).
_SURROGATE_ESCAPE: Final = re.compile(r"\\u[dD][89a-fA-F]")
_PARAM_PARTS: Final = 6  # a param deeper than this is cut (the message says where it starts)


@dataclass(frozen=True)
class BadJson(Exception):
    message: str
    param: str | None = None


Path = tuple[str | int, ...]


def field_name(path: Path) -> str | None:
    """`messages[0].content`: OpenAI's spelling of a place in the body (None for the body itself)."""
    out = ""
    for part in path[:_PARAM_PARTS]:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out or None


class _NotFinite(ValueError):
    pass


@dataclass(frozen=True)
class _Marker:
    """Stands where a non-finite number was, when the body is read again to find it."""

    literal: str


def _refuse_constant(literal: str) -> Any:
    raise _NotFinite(literal)


def _finite_float(literal: str) -> float:
    value = float(literal)
    if not math.isfinite(value):
        raise _NotFinite(literal)
    return value


def _mark_float(literal: str) -> Any:
    value = float(literal)
    return value if math.isfinite(value) else _Marker(literal)


def parse_strict(raw: bytes | str) -> Any:
    """The JSON value of `raw`, or `BadJson` naming the field that no JSON parser would accept."""
    if isinstance(raw, str):
        text = raw
    else:
        try:
            text = raw.decode("utf-8")  # strict: refuses encoded surrogates and other encodings
        except UnicodeDecodeError as exc:
            raise BadJson(f"The request body is not UTF-8 ({exc.reason} at byte {exc.start}).") from None
    try:
        value = json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float)
    except _NotFinite:
        value = json.loads(text, parse_constant=_Marker, parse_float=_mark_float)
        path, marker = next(_find(value, lambda node: isinstance(node, _Marker)))
        raise BadJson(
            f"{_where(path)} is {marker.literal}, which is not a JSON number; send a finite number.",
            field_name(path),
        ) from None
    except RecursionError:
        name = _deep_field(text)
        raise BadJson(
            f"{_where((name,) if name else ())} nests deeper than {MAX_DEPTH} levels.", name
        ) from None
    except ValueError as exc:
        raise BadJson(f"The request body is not valid JSON: {exc}.") from None
    # Cheap first: a body with few brackets cannot be too deep.
    if text.count("[") + text.count("{") > MAX_DEPTH and _too_deep(value, MAX_DEPTH):
        for path, _ in _find(value, lambda _node: False, depth_limit=MAX_DEPTH):
            raise BadJson(f"{_where(path)} nests deeper than {MAX_DEPTH} levels.", field_name(path))
    if _SURROGATE_ESCAPE.search(text):
        try:
            json.dumps(value, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            path, _ = next(_find(value, _has_lone_surrogate))
            raise BadJson(
                f"{_where(path)} contains an unpaired UTF-16 surrogate escape, which is not text.",
                field_name(path),
            ) from None
    return value


def _where(path: Path) -> str:
    name = field_name(path)
    if name is None:
        return "The request body"
    return f"'{name}'" + ("…" if len(path) > _PARAM_PARTS else "")


def _has_lone_surrogate(node: Any) -> bool:
    if not isinstance(node, str):
        return False
    try:
        node.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _too_deep(value: Any, limit: int) -> bool:
    """Whether a container sits `limit` levels down (the body itself is level 0)."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        node, depth = stack.pop()
        children = node.values() if isinstance(node, dict) else node
        for child in children:
            if isinstance(child, dict | list):
                if depth + 1 >= limit:
                    return True
                stack.append((child, depth + 1))
    return False


def _find(value: Any, match: Any, depth_limit: int | None = None) -> Iterator[tuple[Path, Any]]:
    """(path, node) of every node `match` accepts (a key: the path of its object) — or, with
    `depth_limit`, of the first container nested that deep. Iterative: the body may be deep."""
    stack: list[tuple[Path, Any]] = [((), value)]
    while stack:
        path, node = stack.pop()
        if match(node):
            yield path, node
        if isinstance(node, dict | list) and depth_limit is not None and len(path) >= depth_limit:
            yield path, node
            return
        if isinstance(node, dict):
            for key in reversed(list(node)):
                if match(key):  # named by the object it is in: the key itself may be unprintable
                    yield path, key
                stack.append(((*path, key), node[key]))
        elif isinstance(node, list):
            stack.extend(((*path, i), item) for i, item in reversed(list(enumerate(node))))


def _deep_field(text: str) -> str | None:
    """The top-level field whose value is too deep for the parser (the body is an object)."""
    decoder = json.JSONDecoder()
    scan = json.scanner.make_scanner(decoder)  # type: ignore[arg-type]
    index = _skip_space(text, 0)
    if not text.startswith("{", index):
        return None
    index = _skip_space(text, index + 1)
    while text.startswith('"', index):
        try:
            key, index = json.decoder.scanstring(text, index + 1)  # type: ignore[attr-defined]
            index = _skip_space(text, index)
            if not text.startswith(":", index):
                return None
            _, index = scan(text, _skip_space(text, index + 1))
        except RecursionError:
            return str(key)
        except (ValueError, StopIteration):
            return None
        index = _skip_space(text, index)
        if not text.startswith(",", index):
            return None
        index = _skip_space(text, index + 1)
    return None


def _skip_space(text: str, index: int) -> int:
    while index < len(text) and text[index] in " \t\n\r":
        index += 1
    return index
