"""Per-request behaviour knobs (``x-mock-*`` headers) and the providers' error bodies."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from http import HTTPStatus
from typing import Any

from aiohttp import web

from .settings import MockSettings

H_LATENCY = "x-mock-latency-ms"
H_TTFT = "x-mock-ttft-ms"
H_CHUNK_DELAY = "x-mock-chunk-delay-ms"
H_CHUNKS = "x-mock-chunks"
H_PROMPT = "x-mock-prompt-tokens"
H_COMPLETION = "x-mock-completion-tokens"
H_CACHED = "x-mock-cached-tokens"
H_CACHE_CREATION = "x-mock-cache-creation-tokens"
H_REASONING = "x-mock-reasoning-tokens"
H_STATUS = "x-mock-status"
H_RETRY_AFTER = "x-mock-retry-after"
H_FAIL = "x-mock-fail"

FAIL_RESET = "reset"
FAIL_STALL = "stall"
FAIL_GARBAGE = "garbage"
FAIL_BROKEN_STREAM = "broken-stream"
FAIL_NO_USAGE = "no-usage"
FAIL_HTML = "html"
FAIL_TRUNCATED_JSON = "truncated-json"
FAIL_EMPTY_BODY = "empty-body"
FAIL_NEGATIVE_USAGE = "negative-usage"
FAIL_STALL_STREAM = "stall-stream"
FAIL_BAD_FRAME = "bad-frame"  # Bedrock streams: one event-stream frame with a wrong CRC
FAIL_MODES = frozenset(
    {
        FAIL_RESET,
        FAIL_STALL,
        FAIL_GARBAGE,
        FAIL_BROKEN_STREAM,
        FAIL_NO_USAGE,
        FAIL_HTML,
        FAIL_TRUNCATED_JSON,
        FAIL_EMPTY_BODY,
        FAIL_NEGATIVE_USAGE,
        FAIL_STALL_STREAM,
        FAIL_BAD_FRAME,
    }
)

_MAX_DELAY_MS = 3_600_000.0
_MAX_COUNT = 100_000_000

JSON_CT = "application/json"


def dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


class Flavor(Enum):
    """Which provider's wire format an endpoint speaks (decides the error body shape)."""

    OPENAI = "openai"
    ANTHROPIC = "anthropic"
    BEDROCK = "bedrock"
    VERTEX = "vertex"  # Google's error shape (Vertex AI's Gemini endpoints)


class KnobError(ValueError):
    """A malformed ``x-mock-*`` header; answered with 400 in the provider's shape."""


@dataclass(frozen=True, slots=True)
class Knobs:
    latency_ms: float
    ttft_ms: float
    chunk_delay_ms: float
    chunks: int | None
    prompt_tokens: int | None
    completion_tokens: int
    cached_tokens: int
    cache_creation_tokens: int
    reasoning_tokens: int
    status: int | None
    retry_after: str | None
    fail: frozenset[str]


def _delay(headers: Mapping[str, str], name: str, default: float) -> float:
    raw = headers.get(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise KnobError(f"{name} must be a number of milliseconds, got {raw!r}") from None
    if not 0 <= value <= _MAX_DELAY_MS:
        raise KnobError(f"{name} must be within 0..{_MAX_DELAY_MS:.0f}, got {raw!r}")
    return value


def _count(headers: Mapping[str, str], name: str, minimum: int = 0) -> int | None:
    raw = headers.get(name)
    if raw is None:
        return None
    try:
        value = int(raw)
    except ValueError:
        raise KnobError(f"{name} must be an integer, got {raw!r}") from None
    if not minimum <= value <= _MAX_COUNT:
        raise KnobError(f"{name} must be within {minimum}..{_MAX_COUNT}, got {raw!r}")
    return value


def parse_knobs(headers: Mapping[str, str], settings: MockSettings) -> Knobs:
    """Read the ``x-mock-*`` headers over the settings' defaults; raise KnobError when malformed."""
    status = _count(headers, H_STATUS, minimum=400)
    if status is not None and status > 599:
        raise KnobError(f"{H_STATUS} must be within 400..599, got {status}")
    if status is None:
        status = settings.status
    retry_after = headers.get(H_RETRY_AFTER)
    if retry_after is not None and not retry_after.strip():
        raise KnobError(f"{H_RETRY_AFTER} must not be empty")
    if retry_after is None:
        retry_after = settings.retry_after
    fail_raw = headers.get(H_FAIL)
    fail: frozenset[str] = settings.fail
    if fail_raw is not None:
        fail = frozenset(part.strip().lower() for part in fail_raw.split(",") if part.strip())
        unknown = fail - FAIL_MODES
        if unknown:
            raise KnobError(
                f"{H_FAIL} has unknown mode(s) {', '.join(sorted(unknown))}; "
                f"known: {', '.join(sorted(FAIL_MODES))}"
            )
    completion = _count(headers, H_COMPLETION)
    chunks = _count(headers, H_CHUNKS, minimum=1)
    return Knobs(
        latency_ms=_delay(headers, H_LATENCY, settings.latency_ms),
        ttft_ms=_delay(headers, H_TTFT, settings.ttft_ms),
        chunk_delay_ms=_delay(headers, H_CHUNK_DELAY, settings.chunk_delay_ms),
        chunks=settings.chunks if chunks is None else chunks,
        prompt_tokens=_count(headers, H_PROMPT),
        completion_tokens=settings.completion_tokens if completion is None else completion,
        cached_tokens=_count(headers, H_CACHED) or 0,
        cache_creation_tokens=_count(headers, H_CACHE_CREATION) or 0,
        reasoning_tokens=_count(headers, H_REASONING) or 0,
        status=status,
        retry_after=retry_after.strip() if retry_after is not None else None,
        fail=fail,
    )


# --- error bodies -------------------------------------------------------------------------------

_OPENAI_ERRORS: dict[int, tuple[str, str, str | None]] = {
    400: ("Invalid request (simulated by the mock provider).", "invalid_request_error", None),
    401: (
        "Incorrect API key provided. You can find your API key at https://platform.openai.com/account/api-keys.",
        "invalid_request_error",
        "invalid_api_key",
    ),
    403: ("You are not allowed to access this resource.", "invalid_request_error", "permission_denied"),
    404: (
        "The model does not exist or you do not have access to it.",
        "invalid_request_error",
        "model_not_found",
    ),
    429: (
        "Rate limit reached for requests (simulated by the mock provider). Please try again later.",
        "requests",
        "rate_limit_exceeded",
    ),
    500: ("The server had an error while processing your request. Sorry about that!", "server_error", None),
    502: ("Bad gateway.", "server_error", None),
    503: ("The engine is currently overloaded, please try again later.", "server_error", None),
    504: ("Gateway timeout.", "server_error", None),
}

_ANTHROPIC_ERRORS: dict[int, tuple[str, str]] = {
    400: ("invalid_request_error", "Invalid request (simulated by the mock provider)."),
    401: ("authentication_error", "invalid x-api-key"),
    403: ("permission_error", "Your API key does not have permission to use the specified resource."),
    404: ("not_found_error", "The requested resource could not be found."),
    413: ("request_too_large", "Request exceeds the maximum allowed number of bytes."),
    429: ("rate_limit_error", "Number of request tokens has exceeded your per-minute rate limit."),
    500: ("api_error", "Internal server error"),
    529: ("overloaded_error", "Overloaded"),
}


def openai_error_body(
    status: int, message: str | None = None, *, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    default_message, etype, default_code = _OPENAI_ERRORS.get(
        status,
        ("Invalid request.", "invalid_request_error", None)
        if status < 500
        else ("The server had an error while processing your request.", "server_error", None),
    )
    return {
        "error": {
            "message": message or default_message,
            "type": etype,
            "param": param,
            "code": code if code is not None else default_code,
        }
    }


def anthropic_error_body(status: int, message: str | None = None, request_id: str = "") -> dict[str, Any]:
    etype, default_message = _ANTHROPIC_ERRORS.get(
        status,
        ("invalid_request_error", "Invalid request.") if status < 500 else ("api_error", "Internal error"),
    )
    body: dict[str, Any] = {"type": "error", "error": {"type": etype, "message": message or default_message}}
    if request_id:
        body["request_id"] = request_id
    return body


def error_response(
    flavor: Flavor,
    status: int,
    message: str | None = None,
    *,
    request_id: str,
    retry_after: str | None = None,
    param: str | None = None,
    code: str | None = None,
) -> web.Response:
    if flavor is Flavor.BEDROCK:
        return bedrock_error_response(status, message, request_id=request_id, retry_after=retry_after)
    if flavor is Flavor.VERTEX:
        body = vertex_error_body(status, message)
        headers = {"x-request-id": request_id}
    elif flavor is Flavor.ANTHROPIC:
        body = anthropic_error_body(status, message, request_id)
        headers = {"request-id": request_id}
    else:
        body = openai_error_body(status, message, param=param, code=code)
        headers = {"x-request-id": request_id}
    if retry_after is not None:
        headers["retry-after"] = retry_after
    return web.Response(
        status=status, reason=reason_phrase(status), text=dumps(body), content_type=JSON_CT, headers=headers
    )


# Google's canonical error status names per HTTP status.
_GOOGLE_STATUS: dict[int, str] = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ABORTED",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


def vertex_error_body(status: int, message: str | None = None) -> dict[str, Any]:
    """Google's error shape: `{"error": {"code", "message", "status"}}`."""
    name = _GOOGLE_STATUS.get(status, "FAILED_PRECONDITION" if status < 500 else "INTERNAL")
    return {
        "error": {
            "code": status,
            "message": message or f"{name.replace('_', ' ').capitalize()} (simulated by the mock provider).",
            "status": name,
        }
    }


# Bedrock's exception names per status, sent in `x-amzn-ErrorType`.
_BEDROCK_ERRORS: dict[int, tuple[str, str]] = {
    400: ("ValidationException", "Malformed input request (simulated by the mock provider)."),
    403: ("AccessDeniedException", "You don't have access to the model with the specified model ID."),
    404: ("ResourceNotFoundException", "The requested resource could not be found."),
    408: ("ModelTimeoutException", "The request took too long to process."),
    424: ("ModelErrorException", "The model failed to process the request."),
    429: ("ThrottlingException", "Too many requests, please wait before trying again."),
    500: ("InternalServerException", "An internal server error occurred."),
    503: ("ServiceUnavailableException", "The service is unavailable. Please try again later."),
}


def bedrock_error_response(
    status: int,
    message: str | None = None,
    *,
    request_id: str,
    kind: str | None = None,
    retry_after: str | None = None,
) -> web.Response:
    default_kind, default_message = _BEDROCK_ERRORS.get(
        status,
        ("ValidationException", "Invalid request.")
        if status < 500
        else ("InternalServerException", "Internal error."),
    )
    headers = {
        "x-amzn-ErrorType": f"{kind or default_kind}:http://internal.amazon.com/coral/com.amazon.bedrock/",
        "x-amzn-RequestId": request_id,
    }
    if retry_after is not None:
        headers["retry-after"] = retry_after
    return web.Response(
        status=status,
        reason=reason_phrase(status),
        text=dumps({"message": message or default_message}),
        content_type=JSON_CT,
        headers=headers,
    )


def reason_phrase(status: int) -> str:
    """The status line's reason; 529 (Anthropic's "overloaded") is not in the HTTP registry."""
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Overloaded" if status == 529 else "Error"
