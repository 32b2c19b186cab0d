"""Checks on client request bodies, each failure naming the field (OpenAI's `param`)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from tollway_sidecar.extproc.state import Operation


@dataclass(frozen=True)
class BadRequest(Exception):
    message: str
    param: str | None = None
    code: str | None = "invalid_request_error"


def parse_body(raw: bytes) -> dict[str, Any]:
    if not raw.strip():
        raise BadRequest("The request body is empty; send a JSON object.", code="invalid_json")
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"The request body is not valid JSON: {exc}.", code="invalid_json") from None
    if not isinstance(body, dict):
        raise BadRequest("The request body must be a JSON object.", code="invalid_json")
    return body


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _expect(body: dict[str, Any], name: str, kind: str) -> None:
    value = body.get(name)
    if value is None:
        return
    ok = {
        "string": isinstance(value, str),
        "boolean": isinstance(value, bool),
        "object": isinstance(value, dict),
        "positive integer": _is_int(value) and value > 0,
        "array": isinstance(value, list),
        "number": isinstance(value, int | float) and not isinstance(value, bool),
    }[kind]
    if not ok:
        raise BadRequest(
            f"'{name}' must be a {kind}, got {json.dumps(value)[:80]}.", param=name, code="invalid_type"
        )


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
        messages = body.get("messages")
        if messages is None:
            raise BadRequest(
                "Missing required parameter: 'messages'.", param="messages", code="missing_required_parameter"
            )
        if not isinstance(messages, list) or not messages:
            raise BadRequest("'messages' must be a non-empty array.", param="messages", code="invalid_type")
        for index, message in enumerate(messages):
            if not isinstance(message, dict) or not isinstance(message.get("role"), str):
                raise BadRequest(
                    f"'messages[{index}]' must be an object with a string 'role'.",
                    param=f"messages[{index}]",
                    code="invalid_type",
                )
        for name, kind in (
            ("stream", "boolean"),
            ("stream_options", "object"),
            ("user", "string"),
            ("max_tokens", "positive integer"),
            ("max_completion_tokens", "positive integer"),
            ("temperature", "number"),
            ("top_p", "number"),
            ("n", "positive integer"),
        ):
            _expect(body, name, kind)
        options = body.get("stream_options")
        if options is not None and not body.get("stream"):
            raise BadRequest(
                "'stream_options' is only allowed when 'stream' is true.", param="stream_options"
            )
    elif operation == "messages":
        _messages_checks(body)
    elif operation == "embeddings":
        value = body.get("input")
        if value is None:
            raise BadRequest(
                "Missing required parameter: 'input'.", param="input", code="missing_required_parameter"
            )
        if not (isinstance(value, str) or (isinstance(value, list) and value)):
            raise BadRequest(
                "'input' must be a string or a non-empty array.", param="input", code="invalid_type"
            )
        _expect(body, "user", "string")
        _expect(body, "encoding_format", "string")
    return model


def _messages_checks(body: dict[str, Any]) -> None:
    """Anthropic Messages: the fields the gateway reads (the provider checks the rest)."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("messages: Field required (a non-empty array).", param="messages", code=None)
    if body.get("max_tokens") is None:
        raise BadRequest("max_tokens: Field required.", param="max_tokens", code=None)
    _expect(body, "max_tokens", "positive integer")
    _expect(body, "stream", "boolean")
