"""Checks on client request bodies, each failure naming the field (OpenAI's `param`).

The body is parsed strictly first (`strictjson`: no NaN, no infinities, no lone surrogates, no
nesting past `MAX_DEPTH`). Then every field the gateway itself reads — to route, estimate, translate
for Anthropic or record on a span — must have the type it is read as: a wrong type is the client's
400 here, not an exception later. Fields the gateway only passes on are left to the provider.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from tollway_sidecar.extproc.state import Operation
from tollway_sidecar.strictjson import BadJson, parse_strict

__all__ = ["BadRequest", "parse_body", "validate"]

# Exact in a double and in an int64 span attribute; far beyond any real parameter.
MAX_NUMBER: Final = 2**53
MAX_TOKENS: Final = 2**31 - 1
MAX_CHOICES: Final = 128  # OpenAI's own limit for `n`
_INT64: Final = 2**63


@dataclass(frozen=True)
class BadRequest(Exception):
    message: str
    param: str | None = None
    code: str | None = "invalid_request_error"


def parse_body(raw: bytes) -> dict[str, Any]:
    if not raw.strip():
        raise BadRequest("The request body is empty; send a JSON object.", code="invalid_json")
    try:
        body = parse_strict(raw)
    except BadJson as exc:
        raise BadRequest(exc.message, param=exc.param, code="invalid_json") from None
    if not isinstance(body, dict):
        raise BadRequest("The request body must be a JSON object.", code="invalid_json")
    return body


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _shown(value: Any) -> str:
    """The offending value, short: containers by their kind, strings cut before encoding."""
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return f"an array of {len(value)}"
    text = json.dumps(value[:80] if isinstance(value, str) else value)
    return text if len(text) <= 80 else text[:77] + "..."


_KINDS: Final[dict[str, Callable[[Any], bool]]] = {
    "string": lambda v: isinstance(v, str),
    "boolean": lambda v: isinstance(v, bool),
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "array of objects": lambda v: isinstance(v, list) and all(isinstance(i, dict) for i in v),
    "string or array of strings": lambda v: (
        isinstance(v, str) or (isinstance(v, list) and all(isinstance(i, str) for i in v))
    ),
    "string or object": lambda v: isinstance(v, str | dict),
    f"number between -{MAX_NUMBER} and {MAX_NUMBER}": lambda v: (
        isinstance(v, int | float) and not isinstance(v, bool) and abs(v) <= MAX_NUMBER
    ),
    "64-bit integer": lambda v: _is_int(v) and -_INT64 <= v < _INT64,
    f"integer between 1 and {MAX_TOKENS}": lambda v: _is_int(v) and 0 < v <= MAX_TOKENS,
    f"integer between 1 and {MAX_CHOICES}": lambda v: _is_int(v) and 0 < v <= MAX_CHOICES,
}
_NUMBER: Final = f"number between -{MAX_NUMBER} and {MAX_NUMBER}"
_TOKENS: Final = f"integer between 1 and {MAX_TOKENS}"


def _expect(container: dict[str, Any], name: str, kind: str, where: str = "") -> None:
    """`container[name]`, when present and not null, must be of `kind`."""
    value = container.get(name)
    if value is None or _KINDS[kind](value):
        return
    param = f"{where}.{name}" if where else name
    article = "an" if kind[0] in "aeiou" else "a"
    raise BadRequest(
        f"'{param}' must be {article} {kind}, got {_shown(value)}.", param=param, code="invalid_type"
    )


def _fields(container: dict[str, Any], kinds: dict[str, str], where: str = "") -> None:
    for name, kind in kinds.items():
        _expect(container, name, kind, where)


_CHAT_FIELDS: Final = {
    "stream": "boolean",
    "stream_options": "object",
    "user": "string",
    "max_tokens": _TOKENS,
    "max_completion_tokens": _TOKENS,
    "temperature": _NUMBER,
    "top_p": _NUMBER,
    "frequency_penalty": _NUMBER,
    "presence_penalty": _NUMBER,
    "seed": "64-bit integer",
    "n": f"integer between 1 and {MAX_CHOICES}",
    "stop": "string or array of strings",
    "tools": "array of objects",
    "tool_choice": "string or object",
    "parallel_tool_calls": "boolean",
    "response_format": "object",
}
_MESSAGES_FIELDS: Final = {
    "max_tokens": _TOKENS,
    "stream": "boolean",
    "temperature": _NUMBER,
    "top_p": _NUMBER,
    "top_k": _TOKENS,
    "stop_sequences": "string or array of strings",
    "tools": "array of objects",
    "tool_choice": "object",
    "metadata": "object",
}


def validate(operation: Operation, body: dict[str, Any]) -> str:
    """Validate the fields the gateway relies on; return the requested model."""
    model = body.get("model")
    if model is None:
        raise BadRequest(
            "You must provide a model parameter.", param="model", code="missing_required_parameter"
        )
    if not isinstance(model, str) or not model:
        raise BadRequest("'model' must be a non-empty string.", param="model", code="invalid_type")
    if operation == "chat":
        _chat_checks(body)
    elif operation == "messages":
        _messages_checks(body)
    elif operation == "embeddings":
        _embeddings_checks(body)
    elif operation == "responses":
        _responses_checks(body)
    return model


def _chat_checks(body: dict[str, Any]) -> None:
    messages = body.get("messages")
    if messages is None:
        raise BadRequest(
            "Missing required parameter: 'messages'.", param="messages", code="missing_required_parameter"
        )
    if not isinstance(messages, list) or not messages:
        raise BadRequest("'messages' must be a non-empty array.", param="messages", code="invalid_type")
    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise BadRequest(
                f"'{where}' must be an object with a string 'role'.", param=where, code="invalid_type"
            )
        _content(message.get("content"), f"{where}.content")
        _fields(message, {"name": "string", "tool_call_id": "string", "tool_calls": "array"}, where)
        for number, call in enumerate(message.get("tool_calls") or ()):
            _tool_call(call, f"{where}.tool_calls[{number}]")
    _fields(body, _CHAT_FIELDS)
    if body.get("stream_options") is not None and not body.get("stream"):
        raise BadRequest("'stream_options' is only allowed when 'stream' is true.", param="stream_options")


def _content(content: Any, where: str) -> None:
    """A message's content: text, or an array of typed parts (OpenAI and Anthropic alike)."""
    if content is None or isinstance(content, str):
        return
    if not isinstance(content, list):
        raise BadRequest(
            f"'{where}' must be a string or an array of content parts, got {_shown(content)}.",
            param=where,
            code="invalid_type",
        )
    for index, part in enumerate(content):
        here = f"{where}[{index}]"
        if not isinstance(part, dict) or not isinstance(part.get("type"), str):
            raise BadRequest(
                f"'{here}' must be an object with a string 'type', got {_shown(part)}.",
                param=here,
                code="invalid_type",
            )
        if part["type"] == "text" and not isinstance(part.get("text"), str):
            raise BadRequest(f"'{here}.text' must be a string.", param=f"{here}.text", code="invalid_type")


def _tool_call(call: Any, where: str) -> None:
    if not isinstance(call, dict):
        raise BadRequest(f"'{where}' must be an object.", param=where, code="invalid_type")
    _fields(call, {"id": "string", "type": "string", "function": "object"}, where)
    function = call.get("function")
    if isinstance(function, dict):
        _fields(function, {"name": "string", "arguments": "string or object"}, f"{where}.function")


def _messages_checks(body: dict[str, Any]) -> None:
    """Anthropic Messages: the fields the gateway reads (the provider checks the rest)."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("messages: Field required (a non-empty array).", param="messages", code=None)
    if body.get("max_tokens") is None:
        raise BadRequest("max_tokens: Field required.", param="max_tokens", code=None)
    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise BadRequest(
                f"'{where}' must be an object with a string 'role'.", param=where, code="invalid_type"
            )
        _content(message.get("content"), f"{where}.content")
    _content(body.get("system"), "system")
    _fields(body, _MESSAGES_FIELDS)


_RESPONSES_FIELDS: Final = {
    "instructions": "string",
    "stream": "boolean",
    "store": "boolean",
    "background": "boolean",
    "user": "string",
    "max_output_tokens": _TOKENS,
    "temperature": _NUMBER,
    "top_p": _NUMBER,
    "tools": "array of objects",
    "tool_choice": "string or object",
    "parallel_tool_calls": "boolean",
    "previous_response_id": "string",
    "reasoning": "object",
    "text": "object",
    "metadata": "object",
}


def _responses_checks(body: dict[str, Any]) -> None:
    """The Responses API: `input` is text or an array of items (each an object with a `type` or a
    `role`); the fields the gateway reads to estimate and route have their types."""
    value = body.get("input")
    if value is None and body.get("previous_response_id") is None and body.get("prompt") is None:
        raise BadRequest(
            "Missing required parameter: 'input'.", param="input", code="missing_required_parameter"
        )
    if value is not None and not isinstance(value, str | list):
        raise BadRequest(
            f"'input' must be a string or an array of input items, got {_shown(value)}.",
            param="input",
            code="invalid_type",
        )
    for index, item in enumerate(value if isinstance(value, list) else ()):
        where = f"input[{index}]"
        if not isinstance(item, dict) or not (
            isinstance(item.get("type"), str) or isinstance(item.get("role"), str)
        ):
            raise BadRequest(
                f"'{where}' must be an object with a string 'type' or 'role', got {_shown(item)}.",
                param=where,
                code="invalid_type",
            )
        if item.get("role") is not None:
            _content(item.get("content"), f"{where}.content")
    _fields(body, _RESPONSES_FIELDS)


def _embeddings_checks(body: dict[str, Any]) -> None:
    value = body.get("input")
    if value is None:
        raise BadRequest(
            "Missing required parameter: 'input'.", param="input", code="missing_required_parameter"
        )
    if not (isinstance(value, str) or (isinstance(value, list) and value)):
        raise BadRequest("'input' must be a string or a non-empty array.", param="input", code="invalid_type")
    if isinstance(value, list):
        for index, item in enumerate(value):
            if isinstance(item, str) or _is_int(item):
                continue
            if isinstance(item, list) and all(_is_int(token) for token in item):
                continue
            raise BadRequest(
                f"'input[{index}]' must be a string, a token id or an array of token ids, "
                f"got {_shown(item)}.",
                param=f"input[{index}]",
                code="invalid_type",
            )
    _fields(body, {"user": "string", "encoding_format": "string", "dimensions": _TOKENS})
