"""Bedrock with the gateway's web identity through the real Envoy: the sidecar trades its
ServiceAccount token for temporary keys at the mock's STS (AssumeRoleWithWebIdentity), signs with
them and their session token, and renews them in the background before they expire, so calls made
across several key lifetimes all succeed (the mock refuses an expired key with 403)."""

from __future__ import annotations

import re
import time
from collections.abc import Callable

import openai
from gateway_env import IRSA_KEY_LIFETIME_S, IRSA_ROLE, WEB_IDENTITY_TOKEN, Gateway

_KEY_ID = re.compile(r"^AWS4-HMAC-SHA256 Credential=(ASIA[A-Z0-9]{16})/")


def _call(sdk: openai.OpenAI, text: str) -> openai.types.chat.ChatCompletion:
    raw = sdk.chat.completions.with_raw_response.create(
        model="nova-irsa", messages=[{"role": "user", "content": text}], max_tokens=16
    )
    assert raw.headers["x-tollway-backend"] == "bedrock-irsa"
    assert raw.headers["x-tollway-attempts"] == "1"  # no failed attempt hidden by a fallback
    return raw.parse()


def test_openai_sdk_call_is_signed_with_web_identity_keys(
    gateway: Gateway, sdk_for: Callable[..., openai.OpenAI]
) -> None:
    gateway.clear_mock_requests()
    chat = _call(sdk_for(), "Hello, IRSA")
    assert chat.choices[0].message.content and "Hello, IRSA" in chat.choices[0].message.content
    seen = gateway.requests_at("IRSA")
    (upstream,) = [r for r in seen if r["path"].endswith("/converse")]
    assert _KEY_ID.match(upstream["headers"]["authorization"])
    assert "x-amz-security-token" in upstream["headers"]["authorization"]  # signed, as AWS wants
    assert upstream["headers"]["x-amz-security-token"]


def test_keys_expiring_during_the_run_are_renewed_without_failing_a_call(
    gateway: Gateway, sdk_for: Callable[..., openai.OpenAI]
) -> None:
    gateway.clear_mock_requests()
    sdk = sdk_for()
    deadline = time.monotonic() + 2.5 * IRSA_KEY_LIFETIME_S
    calls = 0
    while time.monotonic() < deadline:
        _call(sdk, f"call {calls}")  # each raises on any failure
        calls += 1
        time.sleep(0.5)
    seen = gateway.requests_at("IRSA")
    key_ids = []
    for request in seen:
        match = _KEY_ID.match(request["headers"].get("authorization", ""))
        if request["path"].endswith("/converse") and match:
            key_ids.append(match[1])
    assert len(key_ids) == calls
    # Over 2.5 lifetimes the sidecar used at least three sets of keys, each new one before the old
    # expired (an expired key would have been a 403 and a failed call above).
    assert len(set(key_ids)) >= 3, key_ids
    exchanges = [r for r in seen if r["path"] == "/" and r["method"] == "POST"]
    assert len(exchanges) >= 2
    assert all(r["body"]["Action"] == "AssumeRoleWithWebIdentity" for r in exchanges)
    assert {r["body"]["RoleArn"] for r in exchanges} == {IRSA_ROLE}
    assert {r["body"]["WebIdentityToken"] for r in exchanges} == {WEB_IDENTITY_TOKEN}
