"""The two client APIs' error bodies: OpenAI's `{"error": {...}}` and Anthropic's. Pure."""

from __future__ import annotations

import json
from typing import Final

__all__ = ["anthropic_error_body", "openai_error_body"]


def openai_error_body(message: str, error_type: str, code: str | None, param: str | None = None) -> bytes:
    return json.dumps(
        {"error": {"message": message, "type": error_type, "param": param, "code": code}},
        separators=(",", ":"),
    ).encode()


_ANTHROPIC_ERROR_TYPES: Final = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    529: "overloaded_error",
}


def anthropic_error_body(status: int, message: str) -> bytes:
    """The Anthropic error shape, for clients of `/v1/messages`: {"type": "error", "error": {...}}."""
    kind = _ANTHROPIC_ERROR_TYPES.get(status, "invalid_request_error" if status < 500 else "api_error")
    return json.dumps(
        {"type": "error", "error": {"type": kind, "message": message}}, separators=(",", ":")
    ).encode()
