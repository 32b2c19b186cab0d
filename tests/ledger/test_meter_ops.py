"""The meter's operations against a real Redis and both databases: lag, period state, automatic
close (a driven clock, no sleeps), retention and an event the database refuses."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import pytest
import redis.asyncio as aioredis
from ledger_events import make_event, spread
from prometheus_client import CollectorRegistry, generate_latest

from tollway_meter import lag
from tollway_meter.consumer import ConsumerOptions, MeterConsumer, MeterStats
from tollway_meter.ledger import Ledger
from tollway_meter.maintenance import Maintenance, MaintenanceOptions
from tollway_meter.metrics import MaintenanceCollector
from tollway_meter.queries import usage
from tollway_meter.retention import first_kept, retain
from tollway_sidecar.contract.usage_event import (
    USAGE_DEAD_LETTER_STREAM,
    USAGE_FIELD,
    USAGE_STREAM,
    UsageEvent,
)

ALL_TIME = (datetime(2000, 1, 1, tzinfo=UTC), datetime(2100, 1, 1, tzinfo=UTC))
SEP, OCT, NOV, DEC = (datetime(2026, m, 10, 8, tzinfo=UTC) for m in (9, 10, 11, 12))


async def append(client: aioredis.Redis, events: list[UsageEvent]) -> list[str]:
    return [(await client.xadd(USAGE_STREAM, {USAGE_FIELD: e.to_json()})).decode() for e in events]


def consumer(client: aioredis.Redis, ledger: Ledger, name: str = "m") -> MeterConsumer:
    return MeterConsumer(client, ledger, ConsumerOptions(consumer=name, batch=50, block_ms=50))


async def drain(meter: MeterConsumer) -> None:
    await meter.ensure_group()
    while (await meter.step()).read:
        pass


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def totals(ledger: Ledger) -> list[tuple[str, int, int]]:
    return [(r.keys["team"] or "", r.requests, r.cost_nanos) for r in usage(ledger, ["team"], *ALL_TIME)]


def detail_count(ledger: Ledger) -> int:
    with ledger.transaction(readonly=True) as cur:
        cur.execute("SELECT count(*) FROM usage_events")
        row = cur.fetchone()
        return int(row[0])


async def test_lag_counts_undelivered_and_pending_entries_and_the_oldest_ones_age(
    redis_client: aioredis.Redis, ledger: Ledger
) -> None:
    assert await lag.measure(redis_client, USAGE_STREAM, "tollway-meter") == lag.Lag(0, 0, None)
    ids = await append(redis_client, spread(10))
    meter = consumer(redis_client, ledger)
    await meter.ensure_group()
    await redis_client.xreadgroup("tollway-meter", "gone", {USAGE_STREAM: ">"}, count=4)  # then died
    measured = await lag.measure(redis_client, USAGE_STREAM, "tollway-meter")
    first_ms = lag.id_ms(ids[0])
    assert measured == lag.Lag(undelivered=6, pending=4, oldest_ms=first_ms)
    assert measured.seconds(first_ms + 2_500) == 2.5
    # Scraped through the collector, the way /metrics serves it.
    maintenance = Maintenance(redis_client, ledger)
    await maintenance.refresh_lag()
    registry = CollectorRegistry()
    registry.register(MaintenanceCollector(maintenance.state))
    text = generate_latest(registry).decode()
    assert 'tollway_meter_lag_entries{state="undelivered"} 6.0' in text
    assert 'tollway_meter_lag_entries{state="pending"} 4.0' in text
    seconds = next(line for line in text.splitlines() if line.startswith("tollway_meter_lag_seconds "))
    assert float(seconds.split()[1]) > 0
    # The dead consumer's entries are still the oldest unacknowledged ones after the rest is read.
    await redis_client.xreadgroup("tollway-meter", "m", {USAGE_STREAM: ">"}, count=100)
    await redis_client.xack(USAGE_STREAM, "tollway-meter", *ids[4:])
    assert await lag.measure(redis_client, USAGE_STREAM, "tollway-meter") == lag.Lag(0, 4, first_ms)
    await redis_client.xack(USAGE_STREAM, "tollway-meter", *ids[:4])
    assert await lag.measure(redis_client, USAGE_STREAM, "tollway-meter") == lag.Lag(0, 0, None)


async def test_a_month_closes_after_the_delay_once_the_stream_holds_none_of_its_events(
    redis_client: aioredis.Redis, ledger_dsn: str, ledger: Ledger
) -> None:
    meter = consumer(redis_client, ledger)
    await append(redis_client, spread(5, at=NOV))
    await drain(meter)
    clock = Clock(datetime(2026, 12, 3, 23, 59, tzinfo=UTC))  # 72 h after November less a minute
    options = MaintenanceOptions(close_after=timedelta(hours=72))
    replicas = [Maintenance(redis_client, Ledger.open(ledger_dsn), options, now=clock) for _ in range(2)]
    assert await replicas[0].close_due() == []
    clock.now = datetime(2026, 12, 4, tzinfo=UTC)
    # A November event still waits in the stream (a December one would not hold November back).
    await append(
        redis_client, [make_event(at=DEC), make_event(at=datetime(2026, 11, 30, 23, 59, tzinfo=UTC))]
    )
    assert await replicas[0].close_due() == []
    assert ledger.closed_periods() == frozenset()
    await drain(meter)
    # Two replicas at once: one closes, the other finds it closed; neither fails.
    done = await asyncio.gather(*(r.close_due() for r in replicas))
    assert sorted(done) == [[], ["2026-11"]]
    assert ledger.closed_periods() == frozenset({"2026-11"})
    assert sum(r.state.auto_closed for r in replicas) == 1
    assert await replicas[1].refresh_periods() == {"2026-11": True, "2026-12": False}
    registry = CollectorRegistry()
    registry.register(MaintenanceCollector(replicas[1].state))
    assert 'tollway_meter_period_closed{period="2026-11"} 1.0' in generate_latest(registry).decode()
    # Off by default: a meter without --close-after never closes.
    assert (
        await Maintenance(redis_client, ledger, now=Clock(datetime(2027, 6, 1, tzinfo=UTC))).close_due() == []
    )
    for replica in replicas:
        replica.ledger.close()


async def test_retention_drops_old_closed_months_keeps_rollups_dedupe_and_open_bookings(
    redis_client: aioredis.Redis, ledger: Ledger
) -> None:
    sep, octo, nov, dec = spread(3, at=SEP), spread(4, at=OCT), spread(5, at=NOV), spread(2, at=DEC)
    ledger.ingest([*sep, *octo, *nov, *dec])
    ledger.close_period("2026-09")
    ledger.close_period("2026-10")
    # A late September event, booked as an adjustment into November (open), stored under September.
    late = make_event(at=datetime(2026, 9, 30, 23, tzinfo=UTC), cost="0.5", team="ops")
    assert ledger.ingest([late]).adjustments == 1
    before = totals(ledger)
    assert first_kept(datetime(2026, 12, 15, tzinfo=UTC), 1) == "2026-11"
    done = retain(ledger, datetime(2026, 12, 15, tzinfo=UTC), keep_months=1)
    assert [(r.period, r.dropped) for r in done] == [("2026-09", False), ("2026-10", True)]
    assert "2026-11" in done[0].reason  # September holds an event booked in November, still kept
    assert detail_count(ledger) == 3 + 1 + 5 + 2
    assert totals(ledger) == before  # roll-ups outlive the detail
    # A replay of October counts nothing; a new event for October is still stored (an adjustment).
    assert (ledger.ingest(octo).inserted, ledger.ingest(octo).duplicates) == (0, 4)
    assert ledger.ingest([make_event(at=OCT, cost="1")]).adjustments == 1
    ledger.close_period("2026-11")
    later = retain(ledger, datetime(2027, 2, 1, tzinfo=UTC), keep_months=1)
    dropped = {r.period for r in later if r.dropped}
    assert dropped == {"2026-09", "2026-10", "2026-11"}
    assert "2026-12" not in {r.period for r in later if r.dropped}  # an open period's detail stays
    assert detail_count(ledger) == 2
    assert ledger.ingest([*sep, late]).duplicates == 4
    with pytest.raises(ValueError, match="keep-months"):
        first_kept(DEC, -1)


def test_the_retain_command_drops_a_closed_months_detail(ledger_dsn: str, ledger: Ledger) -> None:
    ledger.ingest([*spread(3, at=datetime(2025, 1, 10, tzinfo=UTC)), *spread(2, at=NOV)])
    ledger.close_period("2025-01")
    done = subprocess.run(
        [sys.executable, "-m", "tollway.cli", "meter", "retain", "--keep-months", "3", "--db", ledger_dsn],
        capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("2025-01: dropped: ")
    assert detail_count(ledger) == 2


async def test_an_event_the_database_refuses_is_dead_lettered_not_retried_forever(
    redis_client: aioredis.Redis, ledger: Ledger
) -> None:
    with ledger.transaction() as cur:  # a rule of this database that the contract does not know
        if ledger.dialect == "postgresql":
            cur.execute("ALTER TABLE usage_events ADD CONSTRAINT no_poison CHECK (team <> 'poison')")
        else:
            cur.execute(
                "CREATE TRIGGER no_poison BEFORE INSERT ON usage_events WHEN NEW.team = 'poison' "
                "BEGIN SELECT RAISE(ABORT, 'no poison'); END"
            )
    good = spread(4)
    await append(redis_client, [*good[:2], make_event(team="poison"), *good[2:]])
    meter = consumer(redis_client, ledger)
    await asyncio.wait_for(drain(meter), timeout=20)
    assert (meter.stats.ingested, meter.stats.dead_lettered) == (4, 1)
    [(_, fields)] = await redis_client.xrange(USAGE_DEAD_LETTER_STREAM)
    assert fields[b"reason"].decode().startswith("the ledger refused it: ")
    assert int((await redis_client.xpending(USAGE_STREAM, "tollway-meter"))["pending"]) == 0
    assert isinstance(meter.stats, MeterStats)


def test_a_month_holding_an_adjustment_booked_in_a_kept_closed_month_is_kept(ledger: Ledger) -> None:
    ledger.ingest(spread(3, at=SEP))
    ledger.close_period("2026-09")
    assert (
        ledger.ingest([make_event(at=datetime(2026, 9, 30, 23, tzinfo=UTC))]).adjustments == 1
    )  # in October
    ledger.close_period("2026-10")
    # Keeping October (closed, but inside the window) keeps September's partition, which holds its row.
    [kept] = retain(ledger, datetime(2026, 12, 15, tzinfo=UTC), keep_months=2)
    assert (kept.period, kept.dropped) == ("2026-09", False)
    assert detail_count(ledger) == 4
