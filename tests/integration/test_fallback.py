"""Fallbacks across backends through the real Envoy: each retry on the next backend, and the answer
the client gets when every backend fails (mock providers with fixed failures: conftest.MOCK_FLEET)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import openai
import pytest
from gateway_env import DEMO_KEY, Gateway
from httpcall import Answer, bearer, call

CHAT = "/v1/chat/completions"


def chat(gateway: Gateway, model: str, headers: dict[str, str] | None = None, **fields: object) -> Answer:
    body = {"model": model, "messages": [{"role": "user", "content": "hello there"}], **fields}
    return call(
        gateway.origin, "POST", CHAT, json.dumps(body).encode(), {**bearer(DEMO_KEY), **(headers or {})}
    )


def test_primary_429_falls_back_to_the_secondary(gateway: Gateway) -> None:
    gateway.clear_mock_requests()
    answer = chat(gateway, "fb-429")
    assert answer.status == 200, answer.body
    assert answer.json()["choices"][0]["message"]["content"]
    assert answer.headers["x-tollway-backend"] == "second"
    assert answer.headers["x-tollway-attempts"] == "2"
    assert len(gateway.requests_at("LIMITED")) == 1
    assert len(gateway.requests_at("SECOND")) == 1
    metrics = gateway.metrics()
    assert (
        'tollway_upstream_attempts_total{backend="limited",outcome="429",route="default-fb-429"}' in metrics
    )


def test_primary_reset_falls_back(gateway: Gateway) -> None:
    answer = chat(gateway, "fb-reset")
    assert answer.status == 200, answer.body
    assert (answer.headers["x-tollway-backend"], answer.headers["x-tollway-attempts"]) == ("second", "2")


def test_primary_stalling_past_the_timeout_falls_back(gateway: Gateway) -> None:
    started = time.monotonic()
    answer = chat(gateway, "fb-stall")
    elapsed = time.monotonic() - started
    assert answer.status == 200, answer.body
    assert (answer.headers["x-tollway-backend"], answer.headers["x-tollway-attempts"]) == ("second", "2")
    assert 0.5 <= elapsed < 3  # one per-attempt timeout (500ms), then the second backend


def test_all_fail_the_rate_limit_beats_the_server_error(gateway: Gateway) -> None:
    answer = chat(gateway, "all-fail-rate-limit")
    assert answer.status == 429, answer.body
    assert answer.error["code"] == "rate_limit_exceeded"  # the provider's own error, unchanged
    assert answer.headers["retry-after"] == "1"
    assert answer.headers["x-tollway-attempts"] == "2"
    assert answer.headers["x-tollway-backend"] == "limited"


def test_all_fail_the_providers_auth_error_beats_the_server_error(
    gateway: Gateway, sdk_for: Callable[..., openai.OpenAI]
) -> None:
    with pytest.raises(openai.AuthenticationError) as caught:
        sdk_for().chat.completions.create(model="all-fail-auth", messages=[{"role": "user", "content": "hi"}])
    assert caught.value.response.headers["x-tollway-attempts"] == "2"
    assert caught.value.response.headers["x-tollway-backend"] == "unauth"
    assert "retry-after" not in caught.value.response.headers


def test_all_fail_a_rate_limit_beats_a_reset(gateway: Gateway) -> None:
    answer = chat(gateway, "all-fail-reset")
    assert answer.status == 429, answer.body
    assert answer.headers["retry-after"] == "1"
    assert answer.headers["x-tollway-attempts"] == "2"


def test_streaming_falls_back_before_the_first_byte(
    gateway: Gateway, sdk_for: Callable[..., openai.OpenAI]
) -> None:
    raw = sdk_for().chat.completions.with_raw_response.create(
        model="fb-429", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    assert raw.headers["x-tollway-backend"] == "second"
    assert raw.headers["x-tollway-attempts"] == "2"
    text = "".join(chunk.choices[0].delta.content or "" for chunk in raw.parse() if chunk.choices)
    assert text.startswith("This is a mock reply")


def test_streaming_does_not_fall_back_after_the_first_byte(
    gateway: Gateway, sdk_for: Callable[..., openai.OpenAI]
) -> None:
    gateway.clear_mock_requests()
    received = []
    with pytest.raises(openai.APIError):  # noqa: PT012 - the error comes while iterating
        stream = sdk_for().chat.completions.create(
            model="two-healthy",
            messages=[{"role": "user", "content": "hi"}],
            stream=True,
            extra_headers={"x-mock-fail": "broken-stream", "x-mock-chunk-delay-ms": "10"},
        )
        for chunk in stream:
            received.append(chunk)
    assert received, "the first backend's chunks reached the client"
    assert len(gateway.requests_at("MOCK")) == 1
    assert gateway.requests_at("SECOND") == []  # the client already had bytes: no second attempt


def _attempts_counted(gateway: Gateway, outcome: str) -> float:
    labels = f'backend="limited",outcome="{outcome}",route="default-retry-after"'
    line = f"tollway_upstream_attempts_total{{{labels}}} "
    found = [row for row in gateway.metrics().splitlines() if row.startswith(line)]
    return float(found[0].removeprefix(line)) if found else 0.0


def test_retry_after_is_waited_out_before_the_same_backend_again(gateway: Gateway) -> None:
    retried, limited = _attempts_counted(gateway, "retried"), _attempts_counted(gateway, "429")
    started = time.monotonic()
    answer = chat(gateway, "retry-after")
    elapsed = time.monotonic() - started
    assert answer.status == 429
    assert answer.headers["x-tollway-attempts"] == "2"
    assert elapsed >= 1.0  # the provider asked for one second, and the call had four left
    # One backend: Envoy retried on its own (`rate_limited_retry_back_off`); the sidecar saw the
    # final answer and counts the attempt before it as retried.
    assert _attempts_counted(gateway, "retried") == retried + 1
    assert _attempts_counted(gateway, "429") == limited + 1


def test_retry_after_longer_than_the_call_has_left_is_not_waited_for(gateway: Gateway) -> None:
    started = time.monotonic()
    answer = chat(gateway, "retry-after", {"x-mock-retry-after": "30"})
    elapsed = time.monotonic() - started
    assert answer.status == 429
    assert answer.headers["retry-after"] == "30"  # the client learns when to come back
    # A one-backend route is retried by Envoy itself (no upstream filter): a wait longer than the
    # call has left is not honoured, so the retry goes at once and meets the same 429.
    assert answer.headers["x-tollway-attempts"] == "2"
    assert elapsed < 1.0


def test_garbage_answer_is_a_502_naming_the_backend(gateway: Gateway) -> None:
    answer = chat(gateway, "two-healthy", {"x-mock-fail": "garbage"})
    assert answer.status == 502
    assert answer.error["code"] == "bad_gateway"
    assert "'first'" in answer.error["message"]
    assert answer.headers["x-tollway-backend"] == "first"


def test_many_calls_falling_back_at_once_all_fall_back(gateway: Gateway) -> None:
    """Envoy allows 3 retries in flight per cluster unless told otherwise: past that, a call that
    should have fallen back got the failed backend's answer."""
    from concurrent.futures import ThreadPoolExecutor

    slow = {"x-mock-latency-ms": "400"}  # every attempt takes a while, so the retries overlap
    with ThreadPoolExecutor(max_workers=16) as pool:
        answers = list(pool.map(lambda _: chat(gateway, "fb-429", slow), range(16)))
    assert [a.status for a in answers] == [200] * 16, [a.body[:120] for a in answers if a.status != 200]
    assert {a.headers["x-tollway-backend"] for a in answers} == {"second"}
