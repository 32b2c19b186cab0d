"""AWS STS `AssumeRoleWithWebIdentity` in STS's own wire format (form-encoded query API, XML answers).

`POST /` (or `/sts`) with `Action=AssumeRoleWithWebIdentity&Version=2011-06-15&RoleArn=…&
RoleSessionName=…&WebIdentityToken=…`, as botocore's STS client sends it. The web identity token must
be a JWT (three base64url parts, JSON header with `alg`, JSON claims with `iss`, `sub`, `aud`, an
`exp` not passed) and exactly the one the mock was started with (`sts_web_identity_token`); the role
must match `sts_role_arn` when that is set. The answer issues temporary keys (`ASIA…`, a secret and a
session token) that live `sts_duration_s` seconds; the Bedrock endpoints accept them for SigV4 with
the session token sent, and answer `ExpiredTokenException` once they have expired.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import os
import re
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from xml.etree import ElementTree as ET

from aiohttp import web

from .runtime import STATE_KEY

XMLNS = "https://sts.amazonaws.com/doc/2011-06-15/"
XML_CT = "text/xml"
_ROLE_ARN = re.compile(r"^arn:aws[a-z-]*:iam::[0-9]{12}:role/[\w+=,.@/-]{1,512}$")
_SESSION_NAME = re.compile(r"^[\w+=,.@-]{2,64}$")


@dataclass(frozen=True, slots=True)
class TemporaryKey:
    secret_access_key: str
    session_token: str
    expires_at: float


@dataclass(slots=True)
class IssuedKeys:
    """Temporary keys the STS endpoint handed out, by access key id (the Bedrock endpoints look here)."""

    keys: dict[str, TemporaryKey] = field(default_factory=dict)
    issued: int = 0


ISSUED_KEY = web.AppKey("tollway_mock_sts_keys", IssuedKeys)


class StsError(Exception):
    def __init__(self, status: int, code: str, message: str, kind: str = "Sender") -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.kind = status, code, message, kind


def _xml(root: ET.Element) -> str:
    return ET.tostring(root, encoding="unicode", xml_declaration=False)


def _sub(parent: ET.Element, tag: str, text: str | None = None) -> ET.Element:
    element = ET.SubElement(parent, tag)
    if text is not None:
        element.text = text
    return element


def error_response(error: StsError, request_id: str) -> web.Response:
    root = ET.Element("ErrorResponse", xmlns=XMLNS)
    detail = _sub(root, "Error")
    _sub(detail, "Type", error.kind)
    _sub(detail, "Code", error.code)
    _sub(detail, "Message", error.message)
    _sub(root, "RequestId", request_id)
    return web.Response(
        status=error.status, text=_xml(root), content_type=XML_CT, headers={"x-amzn-RequestId": request_id}
    )


def _b64_json(part: str) -> Any:
    padded = part + "=" * (-len(part) % 4)
    return json.loads(base64.urlsafe_b64decode(padded.encode("ascii")))


def check_token(token: str, expected: str | None, now: float) -> dict[str, Any]:
    """The token's claims when it is a well-formed, unexpired JWT and the configured one."""
    parts = token.split(".")
    try:
        if len(parts) != 3 or not all(parts):
            raise ValueError("not three parts")
        header, claims = _b64_json(parts[0]), _b64_json(parts[1])
    except (ValueError, UnicodeError, binascii.Error):
        raise StsError(400, "InvalidIdentityToken", "The web identity token is not a valid JWT.") from None
    if not isinstance(header, dict) or not isinstance(header.get("alg"), str):
        raise StsError(400, "InvalidIdentityToken", "The web identity token's header names no alg.")
    if not isinstance(claims, dict) or not all(isinstance(claims.get(c), str) for c in ("iss", "sub")):
        raise StsError(400, "InvalidIdentityToken", "The web identity token has no iss and sub claims.")
    if not isinstance(claims.get("aud"), str | list):
        raise StsError(400, "InvalidIdentityToken", "Incorrect token audience")
    exp = claims.get("exp")
    if isinstance(exp, int | float) and exp <= now:
        raise StsError(400, "ExpiredTokenException", "Token expired: current date/time is after exp")
    if expected is None or not hmac.compare_digest(token.encode(), expected.encode()):
        raise StsError(
            400,
            "InvalidIdentityToken",
            "Couldn't retrieve verification key from your identity provider, please reference "
            "AssumeRoleWithWebIdentity documentation for requirements",
        )
    return claims


def _key_id() -> str:
    return "ASIA" + base64.b32encode(os.urandom(10)).decode()[:16]


def _secret() -> str:
    return base64.b64encode(os.urandom(30)).decode()


def _expiration(at: float) -> str:
    return datetime.fromtimestamp(at, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _assume(form: dict[str, str], request: web.Request, request_id: str) -> str:
    settings = request.app[STATE_KEY].settings
    if form.get("Action") != "AssumeRoleWithWebIdentity":
        raise StsError(400, "InvalidAction", f"Could not find operation {form.get('Action')!r} for version.")
    if form.get("Version") != "2011-06-15":
        raise StsError(
            400, "InvalidAction", "Could not find operation for version " + form.get("Version", "")
        )
    role, session = form.get("RoleArn", ""), form.get("RoleSessionName", "")
    if not _ROLE_ARN.match(role):
        raise StsError(400, "ValidationError", f"1 validation error detected: Value {role!r} at 'roleArn'")
    if not _SESSION_NAME.match(session):
        raise StsError(400, "ValidationError", "1 validation error detected: 'roleSessionName'")
    now = time.time()
    claims = check_token(form.get("WebIdentityToken", ""), settings.sts_web_identity_token, now)
    if settings.sts_role_arn is not None and role != settings.sts_role_arn:
        raise StsError(403, "AccessDenied", "Not authorized to perform sts:AssumeRoleWithWebIdentity")
    issued = request.app[ISSUED_KEY]
    key_id, key = _key_id(), TemporaryKey(_secret(), _secret() * 4, now + settings.sts_duration_s)
    issued.keys[key_id] = key
    issued.issued += 1
    role_name = role.rsplit("/", 1)[-1]
    account = role.split(":")[4]
    root = ET.Element("AssumeRoleWithWebIdentityResponse", xmlns=XMLNS)
    result = _sub(root, "AssumeRoleWithWebIdentityResult")
    _sub(result, "SubjectFromWebIdentityToken", str(claims["sub"]))
    audience = claims["aud"]
    _sub(result, "Audience", audience if isinstance(audience, str) else str(audience[0]))
    user = _sub(result, "AssumedRoleUser")
    _sub(user, "Arn", f"arn:aws:sts::{account}:assumed-role/{role_name}/{session}")
    _sub(user, "AssumedRoleId", f"AROA{account}:{session}")
    credentials = _sub(result, "Credentials")
    _sub(credentials, "SessionToken", key.session_token)
    _sub(credentials, "SecretAccessKey", key.secret_access_key)
    _sub(credentials, "Expiration", _expiration(key.expires_at))
    _sub(credentials, "AccessKeyId", key_id)
    _sub(result, "Provider", str(claims["iss"]))
    metadata = _sub(root, "ResponseMetadata")
    _sub(metadata, "RequestId", request_id)
    return _xml(root)


async def assume_role_with_web_identity(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    request_id = state.new_id("sts-")
    form = {k: v for k, v in (await request.post()).items() if isinstance(v, str)}
    state.record(request, form, None)
    try:
        return web.Response(
            text=_assume(form, request, request_id),
            content_type=XML_CT,
            headers={"x-amzn-RequestId": request_id},
        )
    except StsError as exc:
        return error_response(exc, request_id)


def temporary_key(app: web.Application, key_id: str) -> TemporaryKey | None:
    return app[ISSUED_KEY].keys.get(key_id)
