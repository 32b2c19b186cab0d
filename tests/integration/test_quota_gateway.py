"""Quotas and budgets through the real data plane: Envoy, the sidecar, the mock provider, real Redis.

Two gateways (each its own sidecar and Envoy) share one redis-server; the first also runs the mock
provider both of them call.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal

import openai
import pytest
from genai_prices import Usage, calc_price
from httpcall import bearer, call
from quotagateway import QuotaGateway, budget_yaml, config_folder, key_value, key_yaml, start_gateway
from redisserver import RedisServer

from tollway.dev import free_port
from tollway_sidecar.quota.estimate import prompt_tokens
from tollway_sidecar.quota.tokens import counter_for_model

CHAT = "/v1/chat/completions"
MESSAGES = [{"role": "user", "content": "hi"}]
ADMITTED = 37  # the burst budget admits exactly this many calls at their reserved cost


def catalogue_cost(prompt: int, completion: int) -> Decimal:
    """gpt-4o-mini's price from genai-prices itself, to check the gateway's arithmetic independently."""
    usage = Usage(input_tokens=prompt, output_tokens=completion)
    return Decimal(calc_price(usage, "gpt-4o-mini", provider_id="openai").total_price)


RESERVED_PER_BURST_CALL = catalogue_cost(9, 10)  # 9 prompt tokens (estimated) + max_tokens 10

RESOURCES = "".join(
    [
        budget_yaml("burst-budget", ADMITTED * RESERVED_PER_BURST_CALL, "period: Total"),
        key_yaml("burst", "budgetRefs: [burst-budget]"),
        key_yaml("rpm", "limits: {requestsPerMinute: 10}"),
        key_yaml("big", "limits: {tokensPerMinute: 50}"),
        budget_yaml("pair-budget", "10"),
        key_yaml("pair", "budgetRefs: [pair-budget]"),
        key_yaml("cut", ""),
        key_yaml("peruser", "perUserLimits: {requestsPerMinute: 1}"),
        budget_yaml("watch-budget", "1", "period: Daily"),
        key_yaml("watch", "budgetRefs: [watch-budget]"),
    ]
)


@dataclass
class Pair:
    a: QuotaGateway
    b: QuotaGateway


@pytest.fixture(scope="module")
def gateways(tmp_path_factory: pytest.TempPathFactory, redis_server: RedisServer) -> Iterator[Pair]:
    base = tmp_path_factory.mktemp("quota")
    mock_port = free_port()
    folder = config_folder(base, mock_port, RESOURCES)
    a = start_gateway(base / "a", folder, redis_server.url, mock_port=mock_port)
    try:
        b = start_gateway(base / "b", folder, redis_server.url, mock_port=mock_port, mock_provider=False)
        try:
            yield Pair(a, b)
        finally:
            b.dev.stop()
    finally:
        a.dev.stop()


def chat_body(**fields: object) -> bytes:
    return json.dumps({"model": "gpt-4o-mini", "messages": MESSAGES, **fields}).encode()


def test_the_estimate_the_budget_test_relies_on() -> None:
    # 3 (reply priming) + 4 (per message) + "user" (1) + "hi" (1), with gpt-4o-mini's o200k_base.
    assert prompt_tokens("chat", {"messages": MESSAGES}, counter_for_model("gpt-4o-mini")) == 9
    assert Decimal("0.00000735") == RESERVED_PER_BURST_CALL


async def test_200_concurrent_calls_against_a_budget_admitting_exactly_37(gateways: Pair) -> None:
    a = gateways.a
    denials: list[openai.RateLimitError] = []
    async with openai.AsyncOpenAI(
        base_url=a.base_url, api_key=key_value("burst"), max_retries=0, timeout=60
    ) as sdk:

        async def one() -> str:
            try:
                # The mock reports exactly the reserved usage (9 prompt tokens, max_tokens output), so
                # settling frees nothing and the budget admits exactly 37, whatever the interleaving.
                await sdk.chat.completions.create(
                    model="gpt-4o-mini",
                    messages=MESSAGES,  # type: ignore[arg-type]
                    max_tokens=10,
                    extra_headers={"x-mock-prompt-tokens": "9"},
                )
            except openai.RateLimitError as exc:
                denials.append(exc)
                return str(exc.code)
            return "ok"

        outcomes = await asyncio.gather(*(one() for _ in range(200)))
    assert outcomes.count("ok") == 37
    assert outcomes.count("budget_exceeded") == 163
    assert all(exc.type == "insufficient_quota" for exc in denials)
    message = denials[0].message
    assert "Budget 'default/burst-budget'" in message and "Total budget and never resets" in message
    assert denials[0].response.headers["x-should-retry"] == "false"
    budget = a.spend()["budgets"]["default/burst-budget"]
    assert Decimal(budget["spent_usd"]) == 37 * Decimal("0.00000735") == Decimal(budget["limit_usd"])
    assert budget["reserved_usd"] == "0" and budget["remaining_usd"] == "0"
    key = gateways.b.spend()["keys"]["default/burst"]  # the other replica reads the same numbers
    assert key["requests"] == 37 and key["input_tokens"] == 37 * 9 and key["output_tokens"] == 37 * 10


def _room_in_this_minute(seconds: float) -> None:
    """Start a per-minute test with at least `seconds` left in the UTC minute (windows are fixed)."""
    left = 60 - time.time() % 60
    if left < seconds:
        time.sleep(left + 0.05)


def test_two_gateways_sharing_redis_enforce_one_requests_per_minute_limit(gateways: Pair) -> None:
    _room_in_this_minute(10)
    answers = [
        call(
            (gateways.a if i % 2 == 0 else gateways.b).origin,
            "POST",
            CHAT,
            chat_body(),
            bearer(key_value("rpm")),
        )
        for i in range(14)
    ]
    assert [answer.status for answer in answers] == [200] * 10 + [429] * 4
    assert [answer.headers["x-ratelimit-remaining-requests"] for answer in answers] == [
        "9", "8", "7", "6", "5", "4", "3", "2", "1", "0", "0", "0", "0", "0",
    ]  # fmt: skip
    assert all(answer.headers["x-ratelimit-limit-requests"] == "10" for answer in answers)
    denied = answers[-1]
    assert denied.error["code"] == "rate_limit_exceeded" and denied.error["type"] == "requests"
    assert "requests per minute: limit 10, used 10, requested 1" in denied.error["message"]
    assert 1 <= int(denied.headers["retry-after"]) <= 60
    assert denied.headers["x-ratelimit-reset-requests"].endswith("s")


def test_per_user_limits_know_the_user_from_header_body_or_helicone_in_that_order(gateways: Pair) -> None:
    _room_in_this_minute(5)
    origin, key = gateways.a.origin, bearer(key_value("peruser"))

    def status(headers: dict[str, str], **body: object) -> int:
        return call(origin, "POST", CHAT, chat_body(**body), {**key, **headers}).status

    assert status({"helicone-user-id": "bo"}, user="ana") == 200  # the body's user: ana
    assert status({"helicone-user-id": "bo"}) == 200  # no body user: Helicone's, bo
    assert status({"x-tollway-user": "cy"}, user="ana") == 200  # the header wins: cy
    assert status({"x-tollway-user": "ana"}, user="cy") == 429  # ana has had her one
    assert status({}, user="bo") == 429
    assert status({}) == 200  # anonymous callers share one bucket of their own
    assert status({}) == 429


def test_a_call_larger_than_the_token_limit_is_refused_for_good(gateways: Pair) -> None:
    answer = call(gateways.a.origin, "POST", CHAT, chat_body(max_tokens=100), bearer(key_value("big")))
    assert answer.status == 429
    assert answer.error["code"] == "rate_limit_exceeded" and answer.error["type"] == "tokens"
    assert "limit 50, requested 109" in answer.error["message"]  # 9 prompt + 100 output
    assert answer.headers["x-should-retry"] == "false"
    fits = call(gateways.a.origin, "POST", CHAT, chat_body(max_tokens=20), bearer(key_value("big")))
    assert fits.status == 200
    assert fits.headers["x-ratelimit-limit-tokens"] == "50"
    assert fits.headers["x-ratelimit-remaining-tokens"] == "21"  # 50 - (9 + 20) reserved


def test_streamed_and_plain_calls_are_charged_the_same(gateways: Pair) -> None:
    a = gateways.a
    with openai.OpenAI(base_url=a.base_url, api_key=key_value("pair"), max_retries=0) as sdk:
        plain = sdk.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)  # type: ignore[arg-type]
        assert plain.usage is not None
        assert (plain.usage.prompt_tokens, plain.usage.completion_tokens) == (5, 20)  # the mock's counts
        after_plain = a.spend()
        with sdk.chat.completions.create(
            model="gpt-4o-mini",
            messages=MESSAGES,  # type: ignore[arg-type]
            stream=True,
        ) as stream:
            text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
        assert text == plain.choices[0].message.content
    after_stream = a.spend()
    per_call = Decimal("0.00001275")  # 5 x $0.15/M + 20 x $0.60/M
    assert catalogue_cost(5, 20) == per_call
    assert Decimal(after_plain["keys"]["default/pair"]["spent_usd"]) == per_call
    assert Decimal(after_stream["keys"]["default/pair"]["spent_usd"]) == 2 * per_call
    budget = after_stream["budgets"]["default/pair-budget"]
    assert Decimal(budget["spent_usd"]) == 2 * per_call
    assert Decimal(budget["remaining_usd"]) == Decimal(10) - 2 * per_call
    assert after_stream["keys"]["default/pair"]["output_tokens"] == 40


def _wait_settled(gateway: QuotaGateway, key: str, requests: int) -> dict[str, object]:
    deadline = time.monotonic() + 10
    while True:
        entry = dict(gateway.spend()["keys"][key])
        if entry["requests"] == requests and entry["reserved_usd"] == "0":
            return entry
        assert time.monotonic() < deadline, entry
        time.sleep(0.05)


def test_a_client_that_disconnects_halfway_is_charged_for_what_it_received(gateways: Pair) -> None:
    a = gateways.a
    with openai.OpenAI(base_url=a.base_url, api_key=key_value("cut"), max_retries=0) as sdk:
        received = 0
        stream = sdk.chat.completions.create(
            model="gpt-4o-mini",
            messages=MESSAGES,  # type: ignore[arg-type]
            stream=True,
            max_tokens=40,
            extra_headers={"x-mock-completion-tokens": "40", "x-mock-chunk-delay-ms": "50"},
        )
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                received += 1
            if received == 20:
                break
        stream.close()  # hang up with 20 of the 40 tokens read
    key = _wait_settled(a, "default/cut", requests=1)
    assert received == 20
    assert key["input_tokens"] == 9  # the estimated prompt: no usage chunk ever came
    output = key["output_tokens"]
    assert isinstance(output, int) and 20 <= output <= 21  # what the gateway had passed on
    assert Decimal(str(key["spent_usd"])) == catalogue_cost(9, output)
    assert key["unpriced_requests"] == 1  # charged from what was seen, not from provider usage


def test_spend_shows_what_a_call_in_flight_has_reserved(gateways: Pair) -> None:
    a = gateways.a
    done = threading.Event()

    def slow_call() -> None:
        call(
            a.origin,
            "POST",
            CHAT,
            chat_body(max_tokens=10),
            {**bearer(key_value("watch")), "x-mock-latency-ms": "1500"},
        )
        done.set()

    worker = threading.Thread(target=slow_call)
    worker.start()
    try:
        deadline = time.monotonic() + 5
        while (budget := a.spend()["budgets"]["default/watch-budget"])["reserved_usd"] == "0":
            assert time.monotonic() < deadline and not done.is_set(), budget
            time.sleep(0.02)
        assert Decimal(budget["reserved_usd"]) == Decimal("0.00000735")  # 9 prompt + 10 output, worst case
        assert Decimal(budget["remaining_usd"]) == Decimal(1) - Decimal("0.00000735")
        assert gateways.b.spend()["keys"]["default/watch"]["reserved_usd"] == "0.00000735"
    finally:
        worker.join()
    settled = _wait_settled(a, "default/watch", requests=1)
    assert Decimal(str(settled["spent_usd"])) == catalogue_cost(5, 10)  # the mock counted 5 prompt tokens
