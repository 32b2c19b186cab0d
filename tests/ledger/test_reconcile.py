"""Reconcile against a real Redis charged by the sidecar's own store, on SQLite and on PostgreSQL."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from gateway_calls import ALICE, BOB, CONFIG, Gateway
from redisserver import RedisServer

from tollway.meter_ops_cli import counters_for
from tollway_meter.consumer import ConsumerOptions, MeterConsumer
from tollway_meter.ledger import Ledger
from tollway_meter.reconcile import Row, compare, ledger_spend, stream_backlog
from tollway_sidecar.contract.keys import budget_key, key_month_key
from tollway_sidecar.contract.redis_counters import RedisCounters
from tollway_sidecar.contract.usage_event import USAGE_STREAM
from tollway_sidecar.quota.redis_store import RedisStore

NOV = datetime(2026, 11, 10, 9, tzinfo=UTC)
TOLLWAY = [sys.executable, "-m", "tollway.cli"]


@pytest.fixture
async def gateway(redis_server: RedisServer, redis_client: aioredis.Redis) -> AsyncIterator[Gateway]:
    store = RedisStore(redis_server.url, timeout_s=2.0)
    try:
        yield Gateway(store)
    finally:
        await store.close()


async def november(gateway: Gateway) -> list[int]:
    """Calls by two keys and three end users, two budgets each; returns their costs."""
    costs = []
    for i in range(12):
        nanos = 1_000_003 * (i + 1) + i  # distinct, odd amounts: an off-by-one shows
        key = ALICE if i % 3 else BOB
        user = None if i % 3 == 0 or i % 6 == 5 else ("u1", "u2")[i % 2]
        await gateway.call(key, NOV + timedelta(hours=i), nanos, user=user)
        costs.append(nanos)
    return costs


async def reconcile(
    redis_server: RedisServer, client: aioredis.Redis, ledger: Ledger
) -> dict[tuple[str, str], Row]:
    backlog = await stream_backlog(client, "2026-11")
    in_ledger, in_stream = ledger_spend(ledger, "2026-11", backlog)
    counters = counters_for(set(in_ledger.by) | set(in_stream.by), "2026-11", CONFIG)
    reader = RedisCounters(redis_server.url)
    try:
        # The read sweeps reservations due by then: a day in, the one in flight has not expired.
        rows = await compare(counters, reader, in_ledger, in_stream, NOV + timedelta(days=1))
    finally:
        await reader.close()
    return {row.target: row for row in rows}


async def ingest(client: aioredis.Redis, ledger: Ledger, count: int | None = None) -> None:
    consumer = MeterConsumer(client, ledger, ConsumerOptions(consumer="m", batch=count or 500, block_ms=50))
    await consumer.ensure_group()
    while (await consumer.step()).read and count is None:
        pass


async def test_drift_is_zero_with_events_in_the_ledger_the_stream_and_calls_in_flight(
    redis_server: RedisServer, redis_client: aioredis.Redis, ledger: Ledger, gateway: Gateway
) -> None:
    costs = await november(gateway)
    await ingest(redis_client, ledger, count=7)  # 7 in the ledger, 5 still in the stream
    await gateway.in_flight(ALICE, NOV + timedelta(days=1))
    rows = await reconcile(redis_server, redis_client, ledger)
    alice = rows["key", "team-a/alice"]
    assert alice.status == "ok" and alice.drift == 0
    assert alice.ledger + alice.in_stream == sum(c for i, c in enumerate(costs) if i % 3)
    assert alice.in_stream > 0 and alice.in_flight == 10**7  # the reservation's estimate
    budget = rows["budget", "team-a/monthly"]
    assert (budget.status, budget.settled) == ("ok", sum(costs))
    # Per-user copies: one row per end user of the per-user budget, the anonymous user as "-".
    users = {name: row for (kind, name), row in rows.items() if kind == "user"}
    assert sorted(users) == ["team-a/per-user -", "team-a/per-user u1", "team-a/per-user u2"]
    assert all(row.status == "ok" and row.settled for row in users.values())
    assert rows["budget", "team-a/daily"].status == "not compared"
    assert {row.status for row in rows.values()} == {"ok", "not compared"}
    await ingest(redis_client, ledger)
    after = await reconcile(redis_server, redis_client, ledger)
    assert after["key", "team-a/alice"].in_stream == 0
    assert all(row.drift == 0 for row in after.values())


async def test_a_changed_counter_or_a_lost_event_is_drift(
    redis_server: RedisServer, redis_client: aioredis.Redis, ledger: Ledger, gateway: Gateway
) -> None:
    await november(gateway)
    lost = await gateway.call(BOB, NOV + timedelta(days=2), 4_242)
    # The event never reaches the ledger (deleted from the stream before the meter read it).
    [(entry_id, _)] = await redis_client.xrevrange(USAGE_STREAM, count=1)
    await redis_client.xdel(USAGE_STREAM, entry_id)
    await ingest(redis_client, ledger)
    await redis_client.hincrby(key_month_key(ALICE, NOV), "usd", 7)
    rows = await reconcile(redis_server, redis_client, ledger)
    assert (rows["key", "team-a/alice"].status, rows["key", "team-a/alice"].drift) == ("drift", 7)
    assert (rows["key", "team-a/bob"].status, rows["key", "team-a/bob"].drift) == ("drift", 4_242)
    assert rows["budget", "team-a/monthly"].drift == 4_242
    assert lost.namespace == "team-a"


async def test_expired_counters_are_no_counter_not_drift(
    redis_server: RedisServer, redis_client: aioredis.Redis, ledger: Ledger, gateway: Gateway
) -> None:
    await november(gateway)
    await ingest(redis_client, ledger)
    for key in (key_month_key(ALICE, NOV), budget_key(CONFIG.budgets[0], NOV)):
        await redis_client.delete(key)  # what the counter's TTL does a day after the month
    rows = await reconcile(redis_server, redis_client, ledger)
    assert rows["key", "team-a/alice"].status == "no counter"
    assert rows["budget", "team-a/monthly"].status == "no counter"
    assert rows["key", "team-a/bob"].status == "ok"


async def test_the_command_prints_the_table_and_exits_non_zero_on_drift(
    redis_server: RedisServer,
    redis_client: aioredis.Redis,
    ledger_dsn: str,
    ledger: Ledger,
    gateway: Gateway,
    tmp_path: Path,
) -> None:
    await november(gateway)
    await ingest(redis_client, ledger)
    config = tmp_path / "config.json"
    config.write_text(CONFIG.model_dump_json())
    metrics = tmp_path / "reconcile.prom"
    argv = [
        *TOLLWAY,
        "meter",
        "reconcile",
        "--period",
        "2026-11",
        "--redis",
        redis_server.url,
        "--db",
        ledger_dsn,
    ]

    def run(*extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*argv, *extra], capture_output=True, text=True, check=False, timeout=60)

    healthy = run("--config", str(config), "--metrics-file", str(metrics))
    assert healthy.returncode == 0, healthy.stderr
    header, _rule, *lines = healthy.stdout.splitlines()
    assert header.split()[:3] == ["kind", "name", "ledger_usd"]
    assert any(
        line.split()[:2] == ["key", "team-a/alice"] and line.split()[6] == "0.000000000" for line in lines
    )
    assert 'tollway_meter_reconcile_drift_nanos{kind="key",period="2026-11"} 0.0' in metrics.read_text()
    await redis_client.hincrby(budget_key(CONFIG.budgets[0], NOV), "usd", -1_000_000_000)
    drifting = run("--metrics-file", str(metrics))  # without the config: names from the events
    assert drifting.returncode == 1, drifting.stdout + drifting.stderr
    [row] = [line for line in drifting.stdout.splitlines() if "team-a/monthly" in line]
    assert row.split()[6] == "-1.000000000" and row.split()[7] == "drift"
    assert "drift in 1 of" in drifting.stderr
    text = metrics.read_text()
    assert 'tollway_meter_reconcile_drift_nanos{kind="budget",period="2026-11"} 1e+09' in text
    bad = run("--period", "2026-13")
    assert bad.returncode != 0 and "period: expected YYYY-MM" in bad.stderr
