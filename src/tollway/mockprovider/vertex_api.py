"""Google Vertex AI wire format: Gemini generateContent / streamGenerateContent (`alt=sse`), Claude's
rawPredict / streamRawPredict, and the OAuth2 token endpoint that issues the tokens they require.

`POST /token` takes Google's jwt-bearer grant (`grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer`,
`assertion=<JWT>`): the assertion's RS256 signature is verified with the settings'
`vertex_public_key` (PEM; unset: structure and claims only), its `iss` must be `vertex_client_email`
(when set), its `aud` Google's token endpoint (or this one) and its `scope` must include
cloud-platform. It answers `{access_token, expires_in, token_type: "Bearer"}`; every model
endpoint then requires `Authorization: Bearer <a token it issued that has not expired>` (a 401
in Google's shape otherwise).
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field, replace
from typing import Any, Final

from aiohttp import web
from google.auth import exceptions as google_exceptions
from google.auth import jwt

from .anthropic_api import messages as anthropic_messages
from .content import Plan, int_or_none, plan_reply, split_pieces, text_of
from .knobs import JSON_CT, dumps, vertex_error_body
from .runtime import STATE_KEY, Call

__all__ = [
    "TOKENS_KEY",
    "TokenStore",
    "generate_content",
    "raw_predict",
    "stream_generate_content",
    "stream_raw_predict",
    "token",
    "verify_token",
]

JWT_BEARER: Final = "urn:ietf:params:oauth:grant-type:jwt-bearer"
GOOGLE_TOKEN_URI: Final = "https://oauth2.googleapis.com/token"
SCOPE: Final = "https://www.googleapis.com/auth/cloud-platform"
ANTHROPIC_VERSION: Final = "vertex-2023-10-16"
PER_CONTENT_TOKENS: Final = 3


@dataclass(slots=True)
class TokenStore:
    """Access tokens issued by `POST /token`, with when each expires (wall clock)."""

    issued: dict[str, float] = field(default_factory=dict)
    grants: int = 0  # how many tokens were issued (tests watch refreshes)

    def issue(self, lifetime_s: int) -> str:
        value = "ya29.mock-" + secrets.token_urlsafe(24)
        self.issued[value] = time.time() + lifetime_s
        self.grants += 1
        return value

    def valid(self, value: str) -> bool:
        expires = self.issued.get(value)
        return expires is not None and time.time() < expires


TOKENS_KEY: Final = web.AppKey("tollway_mock_vertex_tokens", TokenStore)


def _oauth_error(status: int, error: str, description: str) -> web.Response:
    return web.Response(
        status=status, text=dumps({"error": error, "error_description": description}), content_type=JSON_CT
    )


def _google_error(status: int, message: str) -> web.Response:
    return web.Response(status=status, text=dumps(vertex_error_body(status, message)), content_type=JSON_CT)


async def token(request: web.Request) -> web.Response:
    """The OAuth2 token endpoint (jwt-bearer grant), as `oauth2.googleapis.com/token` answers."""
    settings = request.app[STATE_KEY].settings
    form = await request.post()
    if form.get("grant_type") != JWT_BEARER:
        return _oauth_error(400, "unsupported_grant_type", "Invalid grant_type.")
    assertion = form.get("assertion")
    if not isinstance(assertion, str) or assertion.count(".") != 2:
        return _oauth_error(400, "invalid_request", "Missing or malformed assertion.")
    try:
        if settings.vertex_public_key:
            claims = jwt.decode(assertion, certs=settings.vertex_public_key, verify=True)  # type: ignore[no-untyped-call]
        else:
            claims = jwt.decode(assertion, verify=False)  # type: ignore[no-untyped-call]
    except (ValueError, google_exceptions.GoogleAuthError) as exc:
        return _oauth_error(400, "invalid_grant", f"Invalid JWT Signature. ({type(exc).__name__})")
    now = time.time()
    audience = f"{request.scheme}://{request.host}{request.path}"
    # google-auth always addresses assertions to Google's endpoint, whatever the key's token_uri.
    if settings.vertex_client_email and claims.get("iss") != settings.vertex_client_email:
        return _oauth_error(400, "invalid_grant", "Invalid JWT: iss is not the service account.")
    if claims.get("aud") not in (audience, GOOGLE_TOKEN_URI):
        return _oauth_error(400, "invalid_grant", f"Invalid JWT: aud must be {GOOGLE_TOKEN_URI}.")
    if not isinstance(claims.get("exp"), int) or claims["exp"] < now:
        return _oauth_error(400, "invalid_grant", "Invalid JWT: Token must be a short-lived token.")
    if SCOPE not in str(claims.get("scope", "")).split():
        return _oauth_error(400, "invalid_scope", "The cloud-platform scope is required.")
    lifetime = settings.vertex_token_lifetime_s
    value = request.app[TOKENS_KEY].issue(lifetime)
    return web.Response(
        text=dumps({"access_token": value, "expires_in": lifetime, "token_type": "Bearer"}),
        content_type=JSON_CT,
    )


def verify_token(request: web.Request) -> web.Response | None:
    """None when the request carries a live token from `POST /token`; else Google's 401."""
    auth = request.headers.get("Authorization", "")
    if auth[:7].lower() != "bearer " or not request.app[TOKENS_KEY].valid(auth[7:].strip()):
        return _google_error(
            401,
            "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie "
            "or other valid authentication credential.",
        )
    return None


# --- Gemini ---------------------------------------------------------------------------------------


def _contents_text(contents: list[Any]) -> tuple[int, str]:
    """(counted prompt tokens, the last user turn's text) of Gemini `contents`."""
    total, last = 0, ""
    for content in contents:
        if not isinstance(content, dict):
            continue
        total += PER_CONTENT_TOKENS
        text = text_of(content.get("parts"))
        total += len(text.split())
        if content.get("role", "user") == "user":
            last = text
    return total, last


def _gemini_plan(call: Call) -> Plan | web.Response:
    contents = call.body.get("contents")
    if not isinstance(contents, list) or not contents:
        return call.error(400, "Unable to submit request because it must include at least one parts field.")
    counted, last = _contents_text(contents)
    system = call.body.get("systemInstruction")
    if isinstance(system, dict):
        counted += len(text_of(system.get("parts")).split())
    config = call.body.get("generationConfig")
    limit = int_or_none(config.get("maxOutputTokens")) if isinstance(config, dict) else None
    return plan_reply(counted_prompt=counted, prompt_text=last, knobs=call.knobs, limit=limit)


def gemini_usage(plan: Plan, call: Call) -> dict[str, Any] | None:
    """`usageMetadata`: the prompt count includes the cached part; candidates leave thoughts out."""
    prompt = plan.prompt_tokens + plan.cached_tokens
    usage: dict[str, Any] = {
        "promptTokenCount": prompt,
        "candidatesTokenCount": plan.completion_tokens - plan.reasoning_tokens,
        "totalTokenCount": prompt + plan.completion_tokens,
    }
    if plan.cached_tokens:
        usage["cachedContentTokenCount"] = plan.cached_tokens
    if plan.reasoning_tokens:
        usage["thoughtsTokenCount"] = plan.reasoning_tokens
    return call.reported(usage)


def _candidate(parts: list[dict[str, Any]], finish: str | None) -> dict[str, Any]:
    candidate: dict[str, Any] = {"content": {"role": "model", "parts": parts}, "index": 0}
    if finish is not None:
        candidate["finishReason"] = finish
    return candidate


def _model(call: Call) -> str:
    return call.request.match_info.get("tail", "").rpartition(":")[0]


async def generate_content(call: Call) -> web.StreamResponse:
    plan = _gemini_plan(call)
    if isinstance(plan, web.Response):
        return plan
    reply: dict[str, Any] = {
        "candidates": [
            _candidate(
                [{"text": plan.text}] if plan.words else [], "MAX_TOKENS" if plan.truncated else "STOP"
            )
        ],
        "modelVersion": _model(call),
        "responseId": call.request_id,
    }
    usage = gemini_usage(plan, call)
    if usage is not None:
        reply["usageMetadata"] = usage
    return await call.json(dumps(reply).encode())


def _sse(obj: dict[str, Any]) -> bytes:
    return b"data: " + dumps(obj).encode() + b"\r\n\r\n"  # Google's SSE lines end in CRLF


async def stream_generate_content(call: Call) -> web.StreamResponse:
    if call.request.query.get("alt") != "sse":
        # Without alt=sse Vertex streams one JSON array; the gateway always asks for SSE.
        return call.error(400, "The mock provider streams only with alt=sse.")
    plan = _gemini_plan(call)
    if isinstance(plan, web.Response):
        return plan
    model = _model(call)
    texts = split_pieces(plan.words, call.knobs.chunks) or [""]
    finish = "MAX_TOKENS" if plan.truncated else "STOP"
    events: list[dict[str, Any]] = []
    for i, text in enumerate(texts):
        final = i == len(texts) - 1
        event: dict[str, Any] = {
            "candidates": [_candidate([{"text": text}], finish if final else None)],
            "modelVersion": model,
            "responseId": call.request_id,
        }
        usage = gemini_usage(plan, call) if final else None
        if usage is not None:
            event["usageMetadata"] = usage  # Gemini reports the totals on the last event
        events.append(event)
    last = events.pop()
    pieces = [_sse(event) for event in events]
    return await call.stream([], pieces, [_sse(last)])


# --- Claude on Vertex -----------------------------------------------------------------------------


def _claude_call(call: Call, stream: bool) -> Call | web.Response:
    body = call.body
    if body.get("anthropic_version") != ANTHROPIC_VERSION:
        return call.error(400, f"anthropic_version: must be {ANTHROPIC_VERSION!r}")
    if "model" in body:
        return call.error(400, "model: Extra inputs are not permitted")
    if (body.get("stream") is True) != stream:
        return call.error(400, "stream: must be true exactly on streamRawPredict")
    rest = {name: value for name, value in body.items() if name != "anthropic_version"}
    return replace(call, body={**rest, "model": _model(call)})


async def raw_predict(call: Call) -> web.StreamResponse:
    checked = _claude_call(call, stream=False)
    return checked if isinstance(checked, web.Response) else await anthropic_messages(checked)


async def stream_raw_predict(call: Call) -> web.StreamResponse:
    checked = _claude_call(call, stream=True)
    return checked if isinstance(checked, web.Response) else await anthropic_messages(checked)
