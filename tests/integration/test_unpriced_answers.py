"""Answers that cannot be priced, and upstreams that stall mid-stream, through the real data plane:
Envoy, the sidecar, the mock provider, real Redis.

A broken 200 (not JSON, cut, empty) reaches the client as an OpenAI-shaped 502 naming the backend;
an answer without usable usage is passed on. Either way the key is charged the estimated prompt only
(the provider had the request; nothing proves what it produced), the reservation is released and
the call is counted as unpriced with its reason. A stream that goes silent is cut within the
route's timeout and settled for what it carried.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import urllib.request
from collections.abc import Iterator
from decimal import Decimal

import openai
import pytest
from genai_prices import Usage, calc_price
from httpcall import bearer, call
from quotagateway import QuotaGateway, config_folder, key_value, key_yaml, start_gateway
from redisserver import RedisServer

from tollway.dev import free_port

CHAT = "/v1/chat/completions"
MESSAGES = [{"role": "user", "content": "hi"}]
PROMPT = 9  # the gateway's estimate for MESSAGES on gpt-4o-mini (test_quota_gateway checks it)
STALL_TIMEOUT_S = 2.0
# Envoy closes an HTTP/1.1 connection it resets after `delayed_close_timeout` (1 s) at most.
CLOSE_SLACK_S = 1.5

BROKEN = {  # x-mock-fail mode → (the key charged for it, the unpriced reasons it may be counted as)
    "garbage": ("bad-garbage", ("bad_body",)),
    "html": ("bad-html", ("bad_body",)),
    "truncated-json": ("bad-truncated", ("bad_body",)),
    "empty-body": ("bad-empty", ("bad_body",)),
    # Half of the declared body, then a reset. When the reset overtakes the response headers'
    # message (a few calls in a hundred under load), Envoy closes the ext_proc stream before the
    # sidecar reads them: the call never saw an answer (`no_answer`), and is charged the same.
    "broken-stream": ("bad-short", ("body_cut", "no_answer")),
}
PASSED_ON = {"no-usage": "bad-nousage", "negative-usage": "bad-negative"}

ROUTES = """\
---
apiVersion: tollway.dev/v1alpha1
kind: RouteRule
metadata: {{name: stall-direct}}
spec:
  model: stall-direct
  timeout: 2s
  backends:
    - {{name: mock, provider: openai-compatible, model: gpt-4o-mini, baseURL: "http://127.0.0.1:{port}/v1"}}
---
apiVersion: tollway.dev/v1alpha1
kind: RouteRule
metadata: {{name: stall-pair}}
spec:
  model: stall-pair
  timeout: 2s
  backends:
    - {{name: first, provider: openai-compatible, model: gpt-4o-mini, baseURL: "http://127.0.0.1:{port}/v1"}}
    - {{name: second, provider: openai-compatible, model: gpt-4o-mini, baseURL: "http://127.0.0.1:{port}/v1"}}
"""


def catalogue_cost(prompt: int, completion: int) -> Decimal:
    usage = Usage(input_tokens=prompt, output_tokens=completion)
    return Decimal(calc_price(usage, "gpt-4o-mini", provider_id="openai").total_price)


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, redis_server: RedisServer) -> Iterator[QuotaGateway]:
    base = tmp_path_factory.mktemp("unpriced")
    mock_port = free_port()
    names = [*(key for key, _ in BROKEN.values()), *PASSED_ON.values(), "stall-direct-key", "stall-pair-key"]
    resources = "".join(key_yaml(name) for name in names) + ROUTES.format(port=mock_port)
    folder = config_folder(base, mock_port, resources)
    started = start_gateway(base / "gw", folder, redis_server.url, mock_port=mock_port)
    try:
        yield started
    finally:
        started.dev.stop()


def settled(gateway: QuotaGateway, key: str, requests: int) -> dict[str, object]:
    deadline = time.monotonic() + 10
    while True:
        entry = dict(gateway.spend()["keys"][f"default/{key}"])
        if entry["requests"] == requests and entry["reserved_usd"] == "0":
            return entry
        assert time.monotonic() < deadline, entry
        time.sleep(0.05)


def unpriced_count(gateway: QuotaGateway, backend: str, *reasons: str) -> float:
    """The unpriced calls counted for `backend` under any of `reasons`."""
    with urllib.request.urlopen(f"{gateway.admin_url}/metrics", timeout=5) as response:
        text = response.read().decode()
    total = 0.0
    for reason in reasons:
        pattern = rf'^tollway_unpriced_calls_total\{{backend="{backend}",reason="{reason}"\}} (\S+)$'
        match = re.search(pattern, text, re.MULTILINE)
        total += float(match.group(1)) if match else 0.0
    return total


@pytest.mark.parametrize("mode", sorted(BROKEN))
def test_a_broken_200_is_a_502_and_charged_the_prompt_only(gateway: QuotaGateway, mode: str) -> None:
    key, reasons = BROKEN[mode]
    before = unpriced_count(gateway, "mock", *reasons)
    body = json.dumps({"model": "gpt-4o-mini", "messages": MESSAGES, "max_tokens": 1000}).encode()
    answer = call(gateway.origin, "POST", CHAT, body, {**bearer(key_value(key)), "x-mock-fail": mode})
    assert answer.status == 502, answer.body
    assert answer.error["code"] == "bad_gateway" and answer.error["type"] == "api_error"
    assert "Backend 'mock'" in answer.error["message"]
    assert "x-tollway-cost-usd" not in answer.headers
    entry = settled(gateway, key, requests=1)
    # Not the reservation (9 prompt + 1000 output tokens): the prompt the provider was sent.
    assert Decimal(str(entry["spent_usd"])) == catalogue_cost(PROMPT, 0) == Decimal("0.00000135")
    assert (entry["input_tokens"], entry["output_tokens"], entry["unpriced_requests"]) == (PROMPT, 0, 1)
    assert unpriced_count(gateway, "mock", *reasons) == before + 1


@pytest.mark.parametrize(("mode", "reason"), [("no-usage", "no_usage"), ("negative-usage", "invalid_usage")])
def test_an_answer_without_usable_usage_is_passed_on_and_charged_the_prompt_only(
    gateway: QuotaGateway, mode: str, reason: str
) -> None:
    key = PASSED_ON[mode]
    before = unpriced_count(gateway, "mock", reason)
    with openai.OpenAI(base_url=gateway.base_url, api_key=key_value(key), max_retries=0) as sdk:
        reply = sdk.chat.completions.with_raw_response.create(
            model="gpt-4o-mini",
            messages=MESSAGES,  # type: ignore[arg-type]
            max_tokens=1000,
            extra_headers={"x-mock-fail": mode},
        )
    assert reply.http_response.status_code == 200
    assert reply.parse().choices[0].message.content
    assert "x-tollway-cost-usd" not in reply.headers
    entry = settled(gateway, key, requests=1)
    assert Decimal(str(entry["spent_usd"])) == catalogue_cost(PROMPT, 0)
    assert (entry["input_tokens"], entry["output_tokens"], entry["unpriced_requests"]) == (PROMPT, 0, 1)
    assert unpriced_count(gateway, "mock", reason) == before + 1


@pytest.mark.parametrize(
    ("model", "key"), [("stall-direct", "stall-direct-key"), ("stall-pair", "stall-pair-key")]
)
async def test_three_streams_stalling_midway_end_within_the_timeout_and_are_settled(
    gateway: QuotaGateway, model: str, key: str
) -> None:
    async def one(sdk: openai.AsyncOpenAI) -> tuple[int, float, BaseException | None]:
        received, last = 0, time.monotonic()
        try:
            stream = await sdk.chat.completions.create(
                model=model,
                messages=MESSAGES,  # type: ignore[arg-type]
                stream=True,
                max_tokens=100,
                extra_headers={"x-mock-fail": "stall-stream", "x-mock-chunk-delay-ms": "20"},
            )
            async for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    received += 1
                    last = time.monotonic()
        except openai.APIError as exc:
            return received, time.monotonic() - last, exc
        return received, time.monotonic() - last, None

    async with openai.AsyncOpenAI(
        base_url=gateway.base_url, api_key=key_value(key), max_retries=0, timeout=10 * STALL_TIMEOUT_S
    ) as sdk:
        outcomes = await asyncio.gather(*(one(sdk) for _ in range(3)))
    for received, silent_for, error in outcomes:
        assert received == 10  # half of the mock's 20 content chunks, then silence
        assert isinstance(error, openai.APIConnectionError), error  # cut, not the client's timeout
        assert STALL_TIMEOUT_S - 0.2 <= silent_for <= STALL_TIMEOUT_S + CLOSE_SLACK_S, silent_for
    entry = settled(gateway, key, requests=3)
    # Settled for what was streamed: the estimated prompt and one token per content chunk.
    assert (entry["input_tokens"], entry["output_tokens"], entry["unpriced_requests"]) == (3 * PROMPT, 30, 3)
    assert Decimal(str(entry["spent_usd"])) == 3 * catalogue_cost(PROMPT, 10)
