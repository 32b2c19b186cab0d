"""The stream consumer against a real redis-server, on SQLite and on PostgreSQL."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import redis.asyncio as aioredis
from ledger_events import make_event, spread

from tollway_meter.consumer import ConsumerOptions, MeterConsumer
from tollway_meter.ledger import Ledger
from tollway_meter.queries import usage
from tollway_sidecar.contract.usage_event import (
    USAGE_DEAD_LETTER_STREAM,
    USAGE_FIELD,
    USAGE_STREAM,
    UsageEvent,
)

ALL_TIME = (datetime(2000, 1, 1, tzinfo=UTC), datetime(2100, 1, 1, tzinfo=UTC))


def options(name: str, **changes: object) -> ConsumerOptions:
    return ConsumerOptions(consumer=name, batch=25, block_ms=50, **changes)  # type: ignore[arg-type]


async def append(client: aioredis.Redis, events: list[UsageEvent]) -> list[str]:
    ids = []
    for event in events:
        ids.append((await client.xadd(USAGE_STREAM, {USAGE_FIELD: event.to_json()})).decode())
    return ids


async def drain(consumer: MeterConsumer) -> None:
    """Steps until a step reads nothing."""
    await consumer.ensure_group()
    while (await consumer.step()).read:
        pass


def totals(ledger: Ledger) -> tuple[int, int]:
    rows = usage(ledger, [], *ALL_TIME)
    return (rows[0].requests, rows[0].cost_nanos) if rows else (0, 0)


async def pending(client: aioredis.Redis) -> int:
    return int((await client.xpending(USAGE_STREAM, "tollway-meter"))["pending"])


async def test_replaying_the_stream_twice_changes_no_total(
    redis_client: aioredis.Redis, ledger: Ledger
) -> None:
    events = spread(60)
    expected = (60, sum(e.data.cost_nanos for e in events))
    consumer = MeterConsumer(redis_client, ledger, options("a"))
    await append(redis_client, events)
    await drain(consumer)
    assert totals(ledger) == expected
    for _ in range(2):  # the whole stream delivered again, twice
        await append(redis_client, events)
        await drain(consumer)
    assert totals(ledger) == expected
    assert (consumer.stats.ingested, consumer.stats.duplicates) == (60, 120)
    assert await pending(redis_client) == 0
    # Everything was acknowledged, so everything could be trimmed.
    assert await redis_client.xlen(USAGE_STREAM) == 0


async def test_two_consumers_at_once_count_each_event_once(
    redis_client: aioredis.Redis, ledger_dsn: str, ledger: Ledger
) -> None:
    events = spread(200)
    other = Ledger.open(ledger_dsn)
    a = MeterConsumer(redis_client, ledger, options("a"))
    b = MeterConsumer(redis_client, other, options("b"))
    await a.ensure_group()
    writer = asyncio.create_task(append(redis_client, events))
    stop = asyncio.Event()
    runs = [asyncio.create_task(c.run(stop)) for c in (a, b)]
    await writer
    for _ in range(200):
        if a.stats.ingested + b.stats.ingested == 200:
            break
        await asyncio.sleep(0.05)
    stop.set()
    await asyncio.gather(*runs)
    other.close()
    assert a.stats.ingested > 0 and b.stats.ingested > 0, "both consumers should have taken a share"
    assert a.stats.ingested + b.stats.ingested == 200
    assert totals(ledger) == (200, sum(e.data.cost_nanos for e in events))


async def test_a_consumer_killed_before_its_ack_loses_nothing(
    redis_client: aioredis.Redis, ledger: Ledger
) -> None:
    events = spread(30)
    await append(redis_client, events)
    await MeterConsumer(redis_client, ledger, options("dead")).ensure_group()
    # The dead consumer read a batch and committed part of it, then died before XACK.
    taken = await redis_client.xreadgroup("tollway-meter", "dead", {USAGE_STREAM: ">"}, count=20)
    assert len(taken[0][1]) == 20
    ledger.ingest(events[:10])
    assert await pending(redis_client) == 20
    survivor = MeterConsumer(redis_client, ledger, options("alive", claim_idle_ms=0))
    await drain(survivor)
    assert survivor.stats.claimed == 20
    assert (survivor.stats.ingested, survivor.stats.duplicates) == (20, 10)
    assert totals(ledger) == (30, sum(e.data.cost_nanos for e in events))
    assert await pending(redis_client) == 0


async def test_a_restarted_consumer_takes_its_own_pending_entries_first(
    redis_client: aioredis.Redis, ledger: Ledger
) -> None:
    events = spread(10)
    await append(redis_client, events)
    await MeterConsumer(redis_client, ledger, options("m")).ensure_group()
    await redis_client.xreadgroup("tollway-meter", "m", {USAGE_STREAM: ">"}, count=10)
    # Same name after a restart; a long claim time, so only its own-pending pass can find them.
    restarted = MeterConsumer(redis_client, ledger, options("m", claim_idle_ms=3_600_000))
    await drain(restarted)
    assert (restarted.stats.ingested, restarted.stats.claimed) == (10, 0)
    assert await pending(redis_client) == 0


async def test_a_malformed_event_is_dead_lettered_and_blocks_nothing(
    redis_client: aioredis.Redis, ledger: Ledger
) -> None:
    good = spread(4)
    await append(redis_client, good[:2])
    bad_id = (
        await redis_client.xadd(USAGE_STREAM, {USAGE_FIELD: '{"specversion": "1.0", "type": "x"}'})
    ).decode()
    await redis_client.xadd(USAGE_STREAM, {"something": "else"})
    wrong = make_event().to_json().replace('"cost":"0.000123456"', '"cost":0.5')
    await redis_client.xadd(USAGE_STREAM, {USAGE_FIELD: wrong})
    await append(redis_client, good[2:])
    consumer = MeterConsumer(redis_client, ledger, options("a"))
    await drain(consumer)
    assert totals(ledger)[0] == 4
    dead = await redis_client.xrange(USAGE_DEAD_LETTER_STREAM)
    reasons = [fields[b"reason"].decode() for _, fields in dead]
    assert reasons == [
        "type: unknown event type 'x' (this meter reads dev.tollway.usage.v1)",
        "no 'event' field in the stream entry",
        "data.cost: expected str, got Decimal",
    ]
    assert dead[0][1][b"entry"].decode() == bad_id
    assert consumer.stats.dead_lettered == 3
    assert await pending(redis_client) == 0


async def test_the_stream_is_trimmed_only_of_acknowledged_entries(
    redis_client: aioredis.Redis, ledger: Ledger
) -> None:
    events = spread(20)
    ids = await append(redis_client, events)
    await MeterConsumer(redis_client, ledger, options("dead")).ensure_group()
    # A dead consumer holds entries 5..9; the live one must not trim them (nor what follows).
    await redis_client.xreadgroup("tollway-meter", "x", {USAGE_STREAM: ">"}, count=5)
    await redis_client.xreadgroup("tollway-meter", "dead", {USAGE_STREAM: ">"}, count=5)
    consumer = MeterConsumer(redis_client, ledger, options("x", claim_idle_ms=3_600_000))
    await drain(consumer)
    remaining = [entry_id.decode() for entry_id, _ in await redis_client.xrange(USAGE_STREAM)]
    assert remaining == ids[5:]
    assert await pending(redis_client) == 5


async def test_postgresql_down_the_meter_backs_off_and_loses_nothing(redis_client: aioredis.Redis) -> None:
    from pgserver import PostgresServer

    server = PostgresServer()  # its own cluster: this test stops it
    server.start()
    try:
        dsn = server.new_database()
        ledger = Ledger.open(dsn)
        ledger.migrate()
        events = spread(40)
        consumer = MeterConsumer(
            redis_client, ledger, options("a", backoff_initial_s=0.05, backoff_max_s=0.2)
        )
        await append(redis_client, events[:10])
        await drain(consumer)
        server.halt()
        stop = asyncio.Event()
        running = asyncio.create_task(consumer.run(stop))
        await append(redis_client, events[10:])
        for _ in range(100):
            if consumer.stats.ledger_errors >= 3:
                break
            await asyncio.sleep(0.05)
        assert consumer.stats.ledger_errors >= 3, "the meter should retry while PostgreSQL is down"
        assert consumer.stats.ingested == 10
        assert await pending(redis_client) > 0  # the events wait in the stream, unacknowledged
        await asyncio.to_thread(server.start)
        for _ in range(200):
            if consumer.stats.ingested == 40:
                break
            await asyncio.sleep(0.05)
        stop.set()
        await running
        assert (consumer.stats.ingested, consumer.stats.duplicates) == (40, 0)
        assert totals(ledger) == (40, sum(e.data.cost_nanos for e in events))
        assert await pending(redis_client) == 0
        ledger.close()
    finally:
        server.stop()


async def test_an_event_the_database_could_not_store_is_dead_lettered(
    redis_client: aioredis.Redis, ledger: Ledger
) -> None:
    # Valid JSON, but a lone surrogate is no UTF-8 text: neither database can store it.
    poisoned = make_event().to_json().replace('"team":"research"', '"team":"r\\ud800"')
    await redis_client.xadd(USAGE_STREAM, {USAGE_FIELD: poisoned})
    await append(redis_client, spread(3))
    consumer = MeterConsumer(redis_client, ledger, options("a"))
    await asyncio.wait_for(drain(consumer), timeout=20)
    assert totals(ledger)[0] == 3
    [(_, fields)] = await redis_client.xrange(USAGE_DEAD_LETTER_STREAM)
    assert fields[b"reason"].decode() == "data.team: not valid Unicode text (a lone surrogate)"


async def test_pending_entries_deleted_from_the_stream_do_not_hold_back_the_trim(
    redis_client: aioredis.Redis, ledger: Ledger
) -> None:
    ids = await append(redis_client, spread(6))
    await MeterConsumer(redis_client, ledger, options("m")).ensure_group()
    await redis_client.xreadgroup("tollway-meter", "m", {USAGE_STREAM: ">"}, count=6)
    await redis_client.xdel(USAGE_STREAM, *ids[:2])  # e.g. a producer's XADD MAXLEN
    restarted = MeterConsumer(redis_client, ledger, options("m", claim_idle_ms=3_600_000))
    await drain(restarted)
    assert (restarted.stats.ingested, restarted.stats.lost) == (4, 2)
    assert await pending(redis_client) == 0
    assert await redis_client.xlen(USAGE_STREAM) == 0


async def test_a_deleted_stream_and_group_are_made_again(
    redis_client: aioredis.Redis, ledger: Ledger
) -> None:
    consumer = MeterConsumer(redis_client, ledger, options("a"))
    stop = asyncio.Event()
    running = asyncio.create_task(consumer.run(stop))
    await append(redis_client, spread(3))
    for _ in range(100):
        if consumer.stats.ingested == 3:
            break
        await asyncio.sleep(0.05)
    await redis_client.delete(USAGE_STREAM)
    await asyncio.sleep(0.2)
    await append(redis_client, spread(2))
    for _ in range(100):
        if consumer.stats.ingested == 5:
            break
        await asyncio.sleep(0.05)
    stop.set()
    await running
    assert consumer.stats.ingested == 5


async def test_an_event_from_the_far_future_is_dead_lettered(
    redis_client: aioredis.Redis, ledger: Ledger
) -> None:
    far = (
        make_event()
        .to_json()
        .replace('"time":"2026-11-10T09:15:00.000000Z"', '"time":"9999-12-31T23:00:00Z"')
    )
    await redis_client.xadd(USAGE_STREAM, {USAGE_FIELD: far})
    await append(redis_client, spread(2))
    consumer = MeterConsumer(redis_client, ledger, options("a"))
    await asyncio.wait_for(drain(consumer), timeout=20)
    assert totals(ledger)[0] == 2
    [(_, fields)] = await redis_client.xrange(USAGE_DEAD_LETTER_STREAM)
    assert fields[b"reason"].decode().startswith("time: outside the years 2000")
