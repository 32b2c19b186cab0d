"""Redis stopped, restarted and hung under a running gateway: each Budget's failurePolicy decides,
and enforcement resumes when Redis answers again, without restarting anything. A refused call's
usage event that meets a stopped Redis waits in the sidecar and is appended once when it is back."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
import redis
from httpcall import Answer, bearer, call
from quotagateway import QuotaGateway, budget_yaml, config_folder, key_value, key_yaml, start_gateway
from redisserver import RedisServer

from tollway.dev import free_port
from tollway_sidecar.config.models import Backend, Budget, GatewayConfig, Pricing, Route, VirtualKey
from tollway_sidecar.contract.usage_event import USAGE_FIELD, USAGE_STREAM, UsageEvent
from tollway_sidecar.extproc.state import RequestState
from tollway_sidecar.extproc.usage_record import event_json, facts_of
from tollway_sidecar.pricing import PriceBook
from tollway_sidecar.quota.decision import Denial
from tollway_sidecar.quota.gate import QuotaGate
from tollway_sidecar.quota.redis_store import RedisStore

CHAT = "/v1/chat/completions"
BODY = json.dumps(
    {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 20}
).encode()
# The mock answers "hi" with 5 prompt and 20 completion tokens: 5 x $0.15/M + 20 x $0.60/M.
COST = Decimal("0.00001275")
# What a call reserves: 9 estimated prompt tokens + max_tokens 20.
RESERVED = Decimal("0.00001335")

RESOURCES = "".join(
    [
        budget_yaml("closed-budget", "10", "failurePolicy: FailClosed"),
        key_yaml("closed", "budgetRefs: [closed-budget]"),
        # Three calls' reservations: the outage serves three, counted blind, and refuses a fourth.
        budget_yaml("open-budget", 3 * RESERVED, "failurePolicy: FailOpen"),
        key_yaml("open", "budgetRefs: [open-budget]"),
    ]
)


@dataclass
class Outage:
    redis: RedisServer
    gateway: QuotaGateway

    def chat(self, key: str) -> Answer:
        return call(self.gateway.origin, "POST", CHAT, BODY, bearer(key_value(key)))


@pytest.fixture(scope="module")
def outage(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Outage]:
    base = tmp_path_factory.mktemp("outage")
    redis = RedisServer(base / "redis")
    redis.start()
    mock_port = free_port()
    try:
        gateway = start_gateway(
            base / "gw", config_folder(base, mock_port, RESOURCES), redis.url, mock_port=mock_port
        )
        try:
            yield Outage(redis, gateway)
        finally:
            gateway.dev.stop()
    finally:
        redis.stop()


def wait_until(check: Callable[[], bool], what: str, seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, f"{what} within {seconds:.0f} s"
        time.sleep(0.1)


def test_redis_down_fail_closed_refuses_fail_open_serves_and_both_recover(outage: Outage) -> None:
    assert outage.chat("closed").status == 200

    outage.redis.stop()
    refused = outage.chat("closed")
    assert refused.status == 503
    assert refused.error["code"] == "quota_store_unavailable"
    assert "quota store (Redis) is unreachable" in refused.error["message"]
    assert "'default/closed'" in refused.error["message"]
    served = [outage.chat("open") for _ in range(3)]
    assert [answer.status for answer in served] == [200, 200, 200]
    # FailOpen still holds the budget by what this gateway served: 3 x COST + RESERVED is too much.
    blind = outage.chat("open")
    assert blind.status == 429 and blind.error["code"] == "budget_exceeded"
    assert outage.gateway.spend()["status"] == 503  # /spend says it cannot read the store

    outage.redis.start()  # same port, empty: nothing survived the restart
    wait_until(lambda: outage.chat("closed").status == 200, "FailClosed serves again")
    wait_until(lambda: outage.gateway.spend().get("pending_reconciliation") == 0, "the local counts are sent")
    spend = outage.gateway.spend()
    key = spend["keys"]["default/open"]
    assert key["requests"] == 3 and key["input_tokens"] == 15 and key["output_tokens"] == 60
    budget = spend["budgets"]["default/open-budget"]
    assert Decimal(budget["spent_usd"]) == 3 * COST
    # Enforcement resumed: what the outage calls spent leaves less than a reservation.
    after = outage.chat("open")
    assert after.status == 429 and after.error["code"] == "budget_exceeded"
    assert f"may cost up to ${RESERVED}" in after.error["message"]


def test_a_hung_redis_is_a_503_not_a_hang(outage: Outage) -> None:
    assert outage.chat("closed").status == 200
    outage.redis.pause()  # accepts connections, answers nothing
    try:
        answer = outage.chat("closed")
        assert answer.status == 503  # our timeout (200 ms), not Envoy's 2 s message timeout
        assert answer.error["code"] == "quota_store_unavailable"
    finally:
        outage.redis.resume()
    wait_until(lambda: outage.chat("closed").status == 200, "serving again after Redis resumed")


async def test_a_refused_calls_event_waits_out_a_redis_outage_and_is_appended_once(tmp_path: Path) -> None:
    # The gate as the sidecar runs it, on a real redis-server: a 429 needs Redis to answer the
    # reserve, so the outage is made between the refusal and its event's append.
    server = RedisServer(tmp_path / "redis")
    server.start()
    backend = Backend(
        name="m",
        provider="openai-compatible",
        model="gpt-4o-mini",
        base_url="http://127.0.0.1:9/v1",
        pricing=Pricing(input_per_million=Decimal("1"), output_per_million=Decimal("1")),
    )
    route = Route(id="r", name="r", namespace="default", model="gpt-4o-mini", backends=(backend,))
    cap = Budget(name="tiny", namespace="default", limit_usd=Decimal("0.000000001"))
    key = VirtualKey(name="app", namespace="default", key_sha256="0" * 64, budgets=(cap.id,))
    gate = QuotaGate(RedisStore(server.url, timeout_s=0.2, cooldown_s=0.05), retry_s=0.05)
    client = redis.Redis.from_url(server.url)
    try:
        denial = await gate.admit(
            key=key,
            budgets={cap.id: cap},
            route=route,
            prices=PriceBook(GatewayConfig(routes=(route,))),
            operation="chat",
            body={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 5},
            user=None,
            rid="rid-refused",
        )
        assert isinstance(denial, Denial) and denial.status == 429
        state = RequestState(request_id="rid-refused", started=time.monotonic())
        state.key, state.route, state.client_model, state.status = key, route, "gpt-4o-mini", 429
        facts = facts_of(
            state, price=None, now=datetime.now(UTC), monotonic=time.monotonic(), source="gw", denied=True
        )
        refused = event_json(facts, None)

        server.stop()
        gate.emit_soon(lambda: refused, namespace=key.namespace)
        await gate.drain()
        assert gate.pending == 1  # kept, not dropped
        await asyncio.sleep(0.3)  # the retry loop meets the stopped server a few times
        assert gate.pending == 1

        server.start()  # same port, empty
        deadline = time.monotonic() + 10
        while gate.pending:
            assert time.monotonic() < deadline, "the kept event was not appended within 10 s"
            await asyncio.sleep(0.05)
        entries = client.xrange(USAGE_STREAM)
        assert [fields[USAGE_FIELD.encode()].decode() for _id, fields in entries] == [refused]
        event = UsageEvent.from_json(refused)
        assert (event.data.outcome, event.data.status, event.data.cost) == ("denied", 429, "0")
        await asyncio.sleep(0.2)  # nothing more is sent: one copy
        assert client.xlen(USAGE_STREAM) == 1
    finally:
        client.close()
        await gate.close()
        server.stop()
