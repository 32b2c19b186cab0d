"""Upstream attempts that skip ext_proc phases (no body rewrite; a route that never retries),
through the real Envoy: the same answers, headers, metrics and bodies as with every phase."""

from __future__ import annotations

import json

from gateway_env import DEMO_KEY, Gateway
from httpcall import Answer, bearer, call

CHAT = "/v1/chat/completions"


def chat(gateway: Gateway, model: str, **fields: object) -> Answer:
    body = {"model": model, "messages": [{"role": "user", "content": "hello there"}], **fields}
    return call(gateway.origin, "POST", CHAT, json.dumps(body).encode(), bearer(DEMO_KEY))


def _counted(gateway: Gateway, route: str, backend: str, outcome: str) -> float:
    prefix = f'tollway_upstream_attempts_total{{backend="{backend}",outcome="{outcome}",route="{route}"}} '
    for line in gateway.metrics().splitlines():
        if line.startswith(prefix):
            return float(line.removeprefix(prefix))
    return 0.0


def test_one_attempt_without_a_rewrite(gateway: Gateway) -> None:
    gateway.clear_mock_requests()
    before = _counted(gateway, "default-single-shot", "only", "200")
    answer = chat(gateway, "single-shot")
    assert answer.status == 200, answer.body
    assert answer.json()["choices"][0]["message"]["content"]
    assert answer.headers["x-tollway-backend"] == "only"
    assert answer.headers["x-tollway-attempts"] == "1"
    assert float(answer.headers["x-tollway-cost-usd"]) >= 0
    seen = [r for r in gateway.mock_requests() if r["path"].endswith("/chat/completions")]
    assert len(seen) == 1
    assert seen[0]["body"]["model"] == "single-shot"
    assert not any(name.lower().startswith("x-tollway") for name in seen[0]["headers"])
    assert _counted(gateway, "default-single-shot", "only", "200") == before + 1


def test_one_attempt_streams(gateway: Gateway) -> None:
    answer = chat(gateway, "single-shot", stream=True)
    assert answer.status == 200, answer.body
    assert answer.headers["x-tollway-attempts"] == "1"
    events = [line for line in answer.body.decode().splitlines() if line.startswith("data: ")]
    assert events[-1] == "data: [DONE]"
    # The usage chunk the gateway asked for is not passed on.
    assert all(json.loads(e.removeprefix("data: "))["choices"] for e in events[:-1])


def test_one_attempt_passes_a_rate_limit_on(gateway: Gateway) -> None:
    gateway.clear_mock_requests()
    before = _counted(gateway, "default-single-limited", "limited", "429")
    answer = chat(gateway, "single-limited")
    assert answer.status == 429, answer.body
    assert answer.headers["retry-after"] == "1"
    assert answer.headers["x-tollway-attempts"] == "1"
    assert len(gateway.requests_at("LIMITED")) == 1
    assert _counted(gateway, "default-single-limited", "limited", "429") == before + 1


def test_one_attempt_without_an_answer_counts_no_response(gateway: Gateway) -> None:
    before = _counted(gateway, "default-single-reset", "resetting", "no_response")
    answer = chat(gateway, "single-reset")
    assert answer.status >= 500, answer.body
    assert answer.json()["error"]
    assert _counted(gateway, "default-single-reset", "resetting", "no_response") == before + 1


def test_a_retry_without_a_rewrite_sends_the_original_length(gateway: Gateway) -> None:
    gateway.clear_mock_requests()
    answer = chat(gateway, "fb-length")
    assert answer.status == 200, answer.body
    assert answer.headers["x-tollway-backend"] == "second"
    assert answer.headers["x-tollway-attempts"] == "2"
    assert gateway.requests_at("LIMITED")[0]["body"]["model"] == "a-much-longer-upstream-model-name"
    second = gateway.requests_at("SECOND")
    assert len(second) == 1 and second[0]["body"]["model"] == "fb-length"
