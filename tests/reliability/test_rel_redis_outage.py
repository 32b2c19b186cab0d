"""Redis SIGKILLed and restarted (empty) under load: FailClosed refuses, FailOpen serves, both recover
without a restart, and the calls FailOpen served during the outage are recorded once Redis is back."""

from __future__ import annotations

import asyncio
import os
import signal
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal

import pytest
from reliability_env import (
    COST,
    QuotaGateway,
    RedisServer,
    budget_yaml,
    config_folder,
    get_json,
    key_yaml,
    provider_key,
    record,
    routes_yaml,
    start_gateway,
)
from reliability_load import Call, Load, now

from tollway.dev import free_port

RESOURCES = "".join(
    [
        budget_yaml("closed-budget", "100", "failurePolicy: FailClosed"),
        key_yaml("closed", "budgetRefs: [closed-budget]"),
        budget_yaml("open-budget", "100", "failurePolicy: FailOpen"),
        key_yaml("open", "budgetRefs: [open-budget]"),
    ]
)
BEFORE_S, OUTAGE_S, AFTER_S = 1.5, 3.0, 3.0
RECOVERY_MAX_S = 2.0  # the store fails fast for 0.5 s after a failure, then reconnects


@dataclass
class Stage:
    redis: RedisServer
    gateway: QuotaGateway


@pytest.fixture(scope="module")
def stage(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stage]:
    base = tmp_path_factory.mktemp("redis-outage")
    redis = RedisServer(base / "redis")
    redis.start()
    mock_port = free_port()
    try:
        resources = routes_yaml(mock_port, provider_key()) + RESOURCES
        gateway = start_gateway(
            base / "gw", config_folder(base, mock_port, resources), redis.url, mock_port=mock_port
        )
        try:
            yield Stage(redis, gateway)
        finally:
            gateway.dev.stop()
    finally:
        redis.stop()


def kill(redis: RedisServer) -> None:
    assert redis.process is not None
    os.kill(redis.process.pid, signal.SIGKILL)
    redis.process.wait()
    redis.process = None


def statuses(calls: list[Call]) -> dict[str, int]:
    return dict(sorted(Counter(f"{c.status} {c.code or ''}".strip() for c in calls).items()))


@pytest.mark.timeout(90)
async def test_redis_killed_under_load_fail_closed_refuses_fail_open_serves_and_spend_is_recorded(
    stage: Stage,
) -> None:
    load = Load([stage.gateway.origin], ["closed", "open"], workers=3)
    await load.start()
    await asyncio.sleep(BEFORE_S)
    killed = now()
    kill(stage.redis)
    await asyncio.sleep(OUTAGE_S)
    restarting = now()  # Redis may answer a little before start() has seen it answer
    await asyncio.to_thread(stage.redis.start)  # same port, empty: nothing survived
    restarted = now()
    await asyncio.sleep(AFTER_S)
    await load.stop()

    def before(c: Call) -> bool:
        return c.ended < killed

    def during(c: Call) -> bool:  # started once Redis was gone, ended before it came back
        return c.started > killed + 0.05 and c.ended < restarting

    def after(c: Call) -> bool:
        return c.started > restarted

    closed_first_200 = min((c.ended for c in load.select("closed", after) if c.status == 200), default=None)
    open_during = load.select("open", during)
    closed_during = load.select("closed", during)
    recovery = None if closed_first_200 is None else closed_first_200 - restarted

    def settled() -> bool:
        spend = get_json(f"{stage.gateway.admin_url}/spend")
        return bool(spend.get("pending_reconciliation") == 0)

    deadline = now() + 10
    while not await asyncio.to_thread(settled):
        assert now() < deadline, "FailOpen's local counts were not sent to Redis within 10 s"
        await asyncio.sleep(0.2)
    spend = await asyncio.to_thread(get_json, f"{stage.gateway.admin_url}/spend")
    open_key, closed_key = spend["keys"]["default/open"], spend["keys"]["default/closed"]
    record(
        "redis outage",
        calls=len(load.calls),
        before_closed=statuses(load.select("closed", before)),
        before_open=statuses(load.select("open", before)),
        during_closed=statuses(closed_during),
        during_open=statuses(open_during),
        after_closed=statuses(load.select("closed", after)),
        after_open=statuses(load.select("open", after)),
        fail_closed_recovery_s=None if recovery is None else round(recovery, 2),
        open_requests_recorded=open_key["requests"],
        open_spent_usd=open_key["spent_usd"],
        open_served_during_outage=sum(1 for c in open_during if c.status == 200),
    )

    assert {c.status for c in load.select("closed", before)} | {
        c.status for c in load.select("open", before)
    } == {200}
    assert closed_during and open_during, "load reached the gateway during the outage"
    assert all(c.status == 503 and c.code == "quota_store_unavailable" for c in closed_during), statuses(
        closed_during
    )
    assert all(c.status == 200 for c in open_during), statuses(open_during)
    assert recovery is not None and recovery < RECOVERY_MAX_S, f"FailClosed served again after {recovery} s"
    late = [c for c in load.calls if c.started > restarted + RECOVERY_MAX_S]
    assert late and all(c.status == 200 for c in late), statuses(late)

    # Every served call's cost header is its price; the restarted Redis holds what FailOpen served
    # during the outage (reconciled) plus what both served after it. Calls around the restart may
    # land on either side, hence the bounds.
    served = [c for c in load.calls if c.status == 200]
    assert all(c.cost == COST for c in served), {c.cost for c in served}
    open_after = load.select("open", lambda c: c.status == 200 and c.started > restarted)
    # A call answered just before the kill may still have been settling (settles run after the answer).
    open_after_kill = load.select("open", lambda c: c.status == 200 and c.ended > killed - 0.5)
    reconciled_at_least = sum(1 for c in open_during if c.status == 200) + len(open_after)
    assert reconciled_at_least <= open_key["requests"] <= len(open_after_kill)
    assert Decimal(open_key["spent_usd"]) == open_key["requests"] * COST
    assert Decimal(spend["budgets"]["default/open-budget"]["spent_usd"]) == open_key["requests"] * COST
    closed_after = load.select("closed", lambda c: c.status == 200 and c.started > restarted)
    closed_after_kill = load.select("closed", lambda c: c.status == 200 and c.ended > killed - 0.5)
    assert len(closed_after) <= closed_key["requests"] <= len(closed_after_kill)
    assert Decimal(closed_key["spent_usd"]) == closed_key["requests"] * COST
