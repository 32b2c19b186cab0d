"""AWS Bedrock wire format: Converse (JSON) and ConverseStream (AWS event-stream frames), SigV4-checked.

Every Bedrock request is verified like AWS does: the `Authorization` header's SigV4 signature is
recomputed (botocore's signer) over the method, raw path, query, the signed headers and the body
with the settings' `aws_secret_access_key`, or the secret of a temporary key the mock's STS endpoint
issued (its session token sent and signed; expired: `ExpiredTokenException`); a missing, unknown or
wrong signature is a 403 in Bedrock's error shape (`{"message"}` + `x-amzn-ErrorType`). Frames are
encoded here (prelude, typed string headers, JSON payload, both CRC32s); `x-mock-fail: bad-frame`
corrupts one frame's CRC.
"""

from __future__ import annotations

import binascii
import hmac
import re
import struct
import time
from typing import Any

from aiohttp import web
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from . import sts_api
from .content import Plan, count_prompt, int_or_none, last_user_text, plan_reply, split_pieces
from .knobs import FAIL_BAD_FRAME, bedrock_error_response, dumps
from .runtime import Call
from .settings import MockSettings

EVENTSTREAM_CT = "application/vnd.amazon.eventstream"
_AUTH = re.compile(
    r"^AWS4-HMAC-SHA256 Credential=(?P<key>[^/,\s]+)/(?P<scope>[^,\s]+),\s*"
    r"SignedHeaders=(?P<signed>[^,\s]+),\s*Signature=(?P<signature>[0-9a-f]{64})$"
)
# --- SigV4 verification -------------------------------------------------------------------------------


class _Signer(SigV4Auth):  # type: ignore[misc]
    def signature_at(self, request: AWSRequest, timestamp: str) -> str:
        request.context["timestamp"] = timestamp
        canonical = self.canonical_request(request)
        return str(self.signature(self.string_to_sign(request, canonical), request))


def _secret_for(request: web.Request, key_id: str, settings: MockSettings) -> str | web.Response:
    """The secret of the static key, or of a live temporary key whose session token was sent and
    signed; else Bedrock's 403 (`ExpiredTokenException` once a temporary key has expired)."""
    if settings.aws_access_key_id and hmac.compare_digest(
        key_id.encode(), settings.aws_access_key_id.encode()
    ):
        return settings.aws_secret_access_key or ""
    request_id = request.headers.get("x-amzn-requestid", "")
    key = sts_api.temporary_key(request.app, key_id)
    token = request.headers.get("x-amz-security-token", "")
    # AWS wants the session token sent and among the signed headers.
    signed = "x-amz-security-token" in request.headers.get("Authorization", "")
    if key is None or not signed or not hmac.compare_digest(token.encode(), key.session_token.encode()):
        return bedrock_error_response(
            403,
            "The security token included in the request is invalid.",
            request_id=request_id,
            kind="UnrecognizedClientException",
        )
    if time.time() >= key.expires_at:
        return bedrock_error_response(
            403,
            "The security token included in the request is expired",
            request_id=request_id,
            kind="ExpiredTokenException",
        )
    return key.secret_access_key


def verify_signature(request: web.Request, raw: bytes, settings: MockSettings) -> web.Response | None:
    """None when the request is signed with the settings' credentials; else Bedrock's 403."""
    request_id = request.headers.get("x-amzn-requestid", "")
    match = _AUTH.match(request.headers.get("Authorization", ""))
    if match is None:
        return bedrock_error_response(
            403,
            "Missing Authentication Token",
            request_id=request_id,
            kind="MissingAuthenticationTokenException",
        )
    secret = _secret_for(request, match["key"], settings)
    if isinstance(secret, web.Response):
        return secret
    scope = match["scope"].split("/")
    timestamp = request.headers.get("x-amz-date", "")
    if len(scope) != 4 or scope[2] != "bedrock" or scope[3] != "aws4_request" or timestamp[:8] != scope[0]:
        return bedrock_error_response(
            403,
            "Credential should be scoped to a valid region and service.",
            request_id=request_id,
            kind="InvalidSignatureException",
        )
    signed = match["signed"].split(";")
    headers = {name: request.headers.get(name, "") for name in signed}
    aws = AWSRequest(
        method=request.method, url=f"http://{request.host}{request.raw_path}", data=raw, headers=headers
    )
    credentials = Credentials(match["key"], secret, request.headers.get("x-amz-security-token"))
    expected = _Signer(credentials, "bedrock", scope[1]).signature_at(aws, timestamp)
    if "host" not in signed or not hmac.compare_digest(expected.encode(), match["signature"].encode()):
        return bedrock_error_response(
            403,
            "The request signature we calculated does not match the signature you provided.",
            request_id=request_id,
            kind="InvalidSignatureException",
        )
    return None


# --- event-stream framing --------------------------------------------------------------------------


def encode_frame(headers: dict[str, str], payload: bytes) -> bytes:
    """One AWS event-stream message: every header a string (type 7)."""
    head = b"".join(
        struct.pack(">B", len(name.encode()))
        + name.encode()
        + b"\x07"
        + struct.pack(">H", len(value.encode()))
        + value.encode()
        for name, value in headers.items()
    )
    prelude = struct.pack(">II", 16 + len(head) + len(payload), len(head))
    prelude += struct.pack(">I", binascii.crc32(prelude))
    message = prelude + head + payload
    return message + struct.pack(">I", binascii.crc32(message))


def event_frame(event_type: str, payload: dict[str, Any]) -> bytes:
    # Bedrock pads every event's JSON with a `p` field so sizes do not reveal the content.
    body = dumps({**payload, "p": "abcdefghijklmnopqrstuvwxyzABCDEF"[: 8 + len(event_type)]}).encode()
    return encode_frame(
        {":event-type": event_type, ":content-type": "application/json", ":message-type": "event"}, body
    )


def _corrupt(frame: bytes) -> bytes:
    return frame[:-4] + bytes(b ^ 0xFF for b in frame[-4:])


# --- Converse -------------------------------------------------------------------------------------


def bedrock_usage(plan: Plan, call: Call) -> dict[str, Any] | None:
    """Converse usage: `inputTokens` leaves the cache reads and writes out; `totalTokens` has all."""
    usage = {
        "inputTokens": plan.prompt_tokens,
        "outputTokens": plan.completion_tokens,
        "totalTokens": plan.prompt_tokens
        + plan.cached_tokens
        + plan.cache_creation_tokens
        + plan.completion_tokens,
        "cacheReadInputTokens": plan.cached_tokens,
        "cacheWriteInputTokens": plan.cache_creation_tokens,
    }
    return call.reported(usage)


def _plan(call: Call) -> Plan | web.Response:
    body = call.body
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return call.error(400, "The model returned the following errors: messages: field required")
    config = body.get("inferenceConfig")
    limit = int_or_none(config.get("maxTokens")) if isinstance(config, dict) else None
    return plan_reply(
        counted_prompt=count_prompt(messages, body.get("system")),
        prompt_text=last_user_text(messages),
        knobs=call.knobs,
        limit=limit,
    )


async def converse(call: Call) -> web.StreamResponse:
    plan = _plan(call)
    if isinstance(plan, web.Response):
        return plan
    reply: dict[str, Any] = {
        "output": {"message": {"role": "assistant", "content": [{"text": plan.text}] if plan.words else []}},
        "stopReason": "max_tokens" if plan.truncated else "end_turn",
        "metrics": {"latencyMs": 1},
    }
    usage = bedrock_usage(plan, call)
    if usage is not None:
        reply["usage"] = usage
    return await call.json(dumps(reply).encode())


async def converse_stream(call: Call) -> web.StreamResponse:
    plan = _plan(call)
    if isinstance(plan, web.Response):
        return plan
    head = [event_frame("messageStart", {"role": "assistant"})]
    texts = split_pieces(plan.words, call.knobs.chunks)
    pieces = [
        event_frame("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": text}}) for text in texts
    ]
    tail = [
        event_frame("contentBlockStop", {"contentBlockIndex": 0}),
        event_frame("messageStop", {"stopReason": "max_tokens" if plan.truncated else "end_turn"}),
    ]
    usage = bedrock_usage(plan, call)
    metadata: dict[str, Any] = {"metrics": {"latencyMs": 1}}
    if usage is not None:
        metadata["usage"] = usage
    tail.append(event_frame("metadata", metadata))
    if FAIL_BAD_FRAME in call.knobs.fail:
        # The middle content frame (or the first of the tail) arrives with a wrong message CRC.
        if pieces:
            pieces[len(pieces) // 2] = _corrupt(pieces[len(pieces) // 2])
        else:
            tail[0] = _corrupt(tail[0])
    return await call.stream(head, pieces, tail, content_type=EVENTSTREAM_CT)
