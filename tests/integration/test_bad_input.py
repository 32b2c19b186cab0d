"""Every bad request gets a precise status in the OpenAI error shape, and the gateway keeps serving."""

from __future__ import annotations

import json
from collections.abc import Callable

import openai
import pytest
from gateway_env import DEMO_KEY, DISABLED_KEY, EXPIRED_KEY, RESTRICTED_KEY, Gateway
from httpcall import bearer, call

CHAT = "/v1/chat/completions"
GOOD = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}).encode()


def test_no_key_is_401(gateway: Gateway) -> None:
    answer = call(gateway.origin, "POST", CHAT, GOOD)
    assert answer.status == 401
    assert answer.error["code"] == "missing_api_key"


def test_unknown_key_is_401(gateway: Gateway) -> None:
    answer = call(gateway.origin, "POST", CHAT, GOOD, bearer("tw-not-a-key-0000000000000000"))
    assert answer.status == 401
    assert answer.error["code"] == "invalid_api_key"


def test_sdk_sees_authentication_error(gateway: Gateway, sdk_for: Callable[..., openai.OpenAI]) -> None:
    sdk = sdk_for("tw-wrong")
    with pytest.raises(openai.AuthenticationError) as caught:
        sdk.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    assert caught.value.code == "invalid_api_key"


def test_x_api_key_header_is_accepted(gateway: Gateway) -> None:
    answer = call(gateway.origin, "POST", CHAT, GOOD, {"x-api-key": DEMO_KEY})
    assert answer.status == 200, answer.body


@pytest.mark.parametrize(
    ("key", "code", "reason"),
    [(DISABLED_KEY, "key_disabled", "disabled"), (EXPIRED_KEY, "key_expired", "expired at 2020-01-01")],
)
def test_disabled_and_expired_keys_are_401_with_the_reason(
    gateway: Gateway, key: str, code: str, reason: str
) -> None:
    answer = call(gateway.origin, "POST", CHAT, GOOD, bearer(key))
    assert answer.status == 401
    assert answer.error["code"] == code
    assert reason in answer.error["message"]


def test_model_not_allowed_for_key_is_403(gateway: Gateway) -> None:
    body = json.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}).encode()
    answer = call(gateway.origin, "POST", CHAT, body, bearer(RESTRICTED_KEY))
    assert answer.status == 403
    assert answer.error["code"] == "model_not_allowed"
    assert "gpt-4o" in answer.error["message"]


def test_unknown_model_is_404_naming_it(gateway: Gateway, sdk_for: Callable[..., openai.OpenAI]) -> None:
    sdk = sdk_for()
    with pytest.raises(openai.NotFoundError) as caught:
        sdk.chat.completions.create(model="gpt-9-ultra", messages=[{"role": "user", "content": "hi"}])
    assert "gpt-9-ultra" in str(caught.value)
    assert caught.value.code == "model_not_found"


@pytest.mark.parametrize(
    ("body", "param", "fragment"),
    [
        (b"{not json", None, "not valid JSON"),
        (b"[1, 2]", None, "JSON object"),
        (b'{"messages": [{"role": "user", "content": "hi"}]}', "model", "model"),
        (b'{"model": 42, "messages": [{"role": "user", "content": "hi"}]}', "model", "model"),
        (b'{"model": "gpt-4o-mini"}', "messages", "messages"),
        (b'{"model": "gpt-4o-mini", "messages": "hi"}', "messages", "messages"),
        (
            b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "stream": "yes"}',
            "stream",
            "stream",
        ),
        (
            b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": -5}',
            "max_tokens",
            "max_tokens",
        ),
    ],
)
def test_malformed_requests_are_400_naming_the_field(
    gateway: Gateway, body: bytes, param: str | None, fragment: str
) -> None:
    answer = call(gateway.origin, "POST", CHAT, body, bearer(DEMO_KEY))
    assert answer.status == 400, answer.body
    error = answer.error
    assert error["param"] == param
    assert fragment in error["message"]


def test_embeddings_without_input_is_400(gateway: Gateway) -> None:
    body = json.dumps({"model": "text-embedding-3-small"}).encode()
    answer = call(gateway.origin, "POST", "/v1/embeddings", body, bearer(DEMO_KEY))
    assert answer.status == 400
    assert answer.error["param"] == "input"


def test_body_over_the_limit_is_413(gateway: Gateway) -> None:
    answer = call(gateway.origin, "POST", CHAT, None, bearer(DEMO_KEY), declared_length=11 << 20)
    assert answer.status == 413
    assert answer.error["code"] == "request_too_large"


def test_chunked_body_over_the_limit_is_413(gateway: Gateway) -> None:
    huge = (
        b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "' + b"x" * (11 << 20) + b'"}]}'
    )
    answer = call(gateway.origin, "POST", CHAT, huge, bearer(DEMO_KEY), chunked=True, timeout=30)
    assert answer.status == 413
    assert answer.error["code"] == "request_too_large"


def test_unknown_path_and_wrong_method(gateway: Gateway) -> None:
    answer = call(gateway.origin, "POST", "/v1/completions-typo", GOOD, bearer(DEMO_KEY))
    assert answer.status == 404
    assert answer.error["code"] == "unknown_url"
    answer = call(gateway.origin, "GET", CHAT, None, bearer(DEMO_KEY))
    assert answer.status == 405


def test_unreachable_provider_is_503_naming_the_backend(gateway: Gateway) -> None:
    body = json.dumps(
        {"model": "unreachable-model", "messages": [{"role": "user", "content": "hi"}]}
    ).encode()
    answer = call(gateway.origin, "POST", CHAT, body, bearer(DEMO_KEY))
    assert answer.status == 503, answer.body
    assert "dead-backend" in answer.error["message"]
    assert answer.error["code"] == "backend_unavailable"


def test_provider_error_reaches_the_client_unchanged(
    gateway: Gateway, sdk_for: Callable[..., openai.OpenAI]
) -> None:
    sdk = sdk_for()
    with pytest.raises(openai.RateLimitError) as caught:
        sdk.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "hi"}],
            extra_headers={"x-mock-status": "429", "x-mock-retry-after": "7"},
        )
    assert caught.value.response.headers["retry-after"] == "7"


def test_garbage_from_the_provider_is_a_502_naming_the_backend_and_counted_unpriced(
    gateway: Gateway, sdk_for: Callable[..., openai.OpenAI]
) -> None:
    # A 200 whose body is not JSON is not an API answer: the SDK would fail on it with a bare
    # JSONDecodeError. The client gets a 502 in the API's error shape instead (which SDKs retry).
    answer = call(gateway.origin, "POST", CHAT, GOOD, {**bearer(DEMO_KEY), "x-mock-fail": "garbage"})
    assert answer.status == 502
    assert answer.error["code"] == "bad_gateway"
    assert "'mock'" in answer.error["message"]
    assert "x-tollway-cost-usd" not in answer.headers
    assert 'tollway_unpriced_responses_total{backend="mock"}' in gateway.metrics()
    with pytest.raises(openai.InternalServerError) as caught:
        sdk_for().chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "hi"}],
            extra_headers={"x-mock-fail": "garbage"},
        )
    assert caught.value.status_code == 502
    assert call(gateway.origin, "POST", CHAT, GOOD, bearer(DEMO_KEY)).status == 200


def test_broken_stream_reaches_the_client_and_the_gateway_keeps_serving(
    gateway: Gateway, sdk_for: Callable[..., openai.OpenAI]
) -> None:
    sdk = sdk_for()
    received = []
    with pytest.raises(openai.APIError):  # noqa: PT012 - the error comes while iterating
        stream = sdk.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "hi"}],
            stream=True,
            extra_headers={"x-mock-fail": "broken-stream", "x-mock-chunk-delay-ms": "20"},
        )
        for chunk in stream:
            received.append(chunk)
    assert received, "the chunks sent before the break reach the client"
    assert call(gateway.origin, "POST", CHAT, GOOD, bearer(DEMO_KEY)).status == 200


def test_provider_that_resets_before_answering_is_503_naming_the_backend(gateway: Gateway) -> None:
    """The connection closes with no response at all (`x-mock-fail: reset`): Envoy's own reply, mapped."""
    body = json.dumps(
        {"model": "gpt-4o-mini", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    )
    answer = call(gateway.origin, "POST", CHAT, body.encode(), {**bearer(DEMO_KEY), "x-mock-fail": "reset"})
    assert answer.status == 503, answer.body
    assert answer.error["code"] == "backend_unavailable"
    assert "'mock'" in answer.error["message"]
