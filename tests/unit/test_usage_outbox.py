"""The in-memory store's outbox: sequence numbers, the bound, acks; its admin endpoints; and the
meter's outbox source reading it into a real SQLite ledger over a real HTTP port."""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from tollway_meter.ledger import Ledger, LedgerUnavailableError, SqliteLedger
from tollway_meter.outbox_source import OutboxConsumer, OutboxOptions
from tollway_sidecar.admin import create_admin_app
from tollway_sidecar.config.models import GatewayConfig
from tollway_sidecar.contract.usage_event import Tokens, UsageData, UsageEvent, uuid7
from tollway_sidecar.contract.usage_outbox import OutboxAck, OutboxPage, OutboxWireError
from tollway_sidecar.quota.gate import QuotaGate
from tollway_sidecar.quota.memory import MemoryStore
from tollway_sidecar.quota.outbox import Outbox, OutboxAckError
from tollway_sidecar.quota.redis_store import RedisStore
from tollway_sidecar.runtime import CompiledConfig, Runtime


def make_event(cost: str = "0.000123456") -> UsageEvent:
    """A valid v1 event, built through the contract."""
    data = UsageData(
        namespace="default",
        key_name="demo",
        route="chat",
        model="gpt-4o-mini",
        status=200,
        outcome="ok",
        cost=cost,
        billable=True,
        tokens=Tokens(input=100, output=20),
    )
    return UsageEvent(
        id=uuid7(), source="sidecar-0", time=datetime.now(UTC), subject="default/demo", data=data
    )


def test_entries_are_numbered_from_one_and_read_after_a_sequence_number() -> None:
    outbox = Outbox(limit=10)
    outbox.extend(["a", "b", "c"])
    outbox.append("d")
    assert [(e.seq, e.event) for e in outbox.pending()] == [(1, "a"), (2, "b"), (3, "c"), (4, "d")]
    assert [e.seq for e in outbox.pending(after=2)] == [3, 4]
    assert [e.seq for e in outbox.pending(after=1, limit=2)] == [2, 3]
    assert outbox.pending(after=4) == []
    assert list(outbox) == ["a", "b", "c", "d"] and len(outbox) == 4


def test_an_ack_drops_only_what_it_covers_and_reading_goes_on_after_it() -> None:
    outbox = Outbox(limit=10)
    outbox.extend(["a", "b", "c"])
    assert outbox.ack(2) == 2
    assert list(outbox) == ["c"] and outbox.first == 3
    assert [e.seq for e in outbox.pending(after=0)] == [3]  # a restarted meter reads from the first kept
    assert outbox.ack(2) == 0  # acknowledged twice: nothing more goes
    outbox.append("d")
    assert [(e.seq, e.event) for e in outbox.pending(after=3)] == [(4, "d")]
    with pytest.raises(OutboxAckError, match="upto: 9 was never handed out"):
        outbox.ack(9)
    assert list(outbox) == ["c", "d"]


def test_a_full_outbox_drops_the_oldest_counts_and_logs(caplog: pytest.LogCaptureFixture) -> None:
    outbox = Outbox(limit=3)
    with caplog.at_level(logging.WARNING, logger="tollway.quota.outbox"):
        outbox.extend(["a", "b", "c", "d", "e"])
    assert list(outbox) == ["c", "d", "e"]
    assert outbox.dropped == 2 and outbox.first == 3
    assert [e.seq for e in outbox.pending()] == [3, 4, 5]
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1, warnings  # the first drop, not every one
    assert "usage outbox full" in warnings[0] and "tollway meter run --outbox" in warnings[0]


def test_the_store_numbers_its_settles_and_emits_in_one_outbox() -> None:
    store = MemoryStore()
    assert isinstance(store.outbox, Outbox)
    asyncio.run(store.emit('{"n": 1}'))
    assert [(e.seq, e.event) for e in store.outbox.pending()] == [(1, '{"n": 1}')]


def test_the_wire_shapes_round_trip_and_name_the_bad_field() -> None:
    outbox = Outbox()
    outbox.extend(["x", "y"])
    page = outbox.page(after=1)
    assert OutboxPage.from_json(page.to_json()) == page
    assert OutboxAck.from_json(OutboxAck("o", 7).to_json()) == OutboxAck("o", 7)
    with pytest.raises(OutboxWireError, match="upto: expected an integer >= 0, got True"):
        OutboxAck.from_json('{"outbox": "o", "upto": true}')
    with pytest.raises(OutboxWireError, match="outbox: expected the outbox id"):
        OutboxAck.from_json('{"upto": 3}')
    with pytest.raises(OutboxWireError, match=r"entries\[0\].event: expected a string"):
        OutboxPage.from_json('{"outbox": "o", "entries": [{"seq": 1}], "first": 1, "next": 2, "dropped": 0}')


def _runtime(quota: QuotaGate | None = None) -> Runtime:
    config = CompiledConfig.build(GatewayConfig().with_checksum())
    return Runtime(config, max_request_bytes=1 << 20, quota=quota)


@pytest.fixture
async def admin() -> AsyncIterator[tuple[str, MemoryStore]]:
    """The sidecar's admin app on a real loopback port, over the in-memory store."""
    runtime = _runtime()
    store = runtime.quota.store
    assert isinstance(store, MemoryStore)
    runner = web.AppRunner(create_admin_app(runtime))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}", store
    finally:
        await runner.cleanup()


async def test_the_admin_port_serves_the_outbox_and_drops_only_acked_entries(
    admin: tuple[str, MemoryStore],
) -> None:
    url, store = admin
    store.outbox.extend(["e1", "e2", "e3"])
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{url}/usage/outbox", params={"after": "1", "limit": "1"}) as response:
            assert response.status == 200
            page = OutboxPage.from_json(await response.read())
        assert [(e.seq, e.event) for e in page.entries] == [(2, "e2")]
        assert (page.outbox, page.first, page.next, page.dropped) == (store.outbox.id, 1, 4, 0)

        ack = {"outbox": page.outbox, "upto": 2}
        async with http.post(f"{url}/usage/outbox/ack", json=ack) as response:
            assert response.status == 200
            assert await response.json() == {"acked": 2, "pending": 1, "first": 3}
        assert list(store.outbox) == ["e3"]

        stale = {"outbox": "another-sidecar", "upto": 3}
        async with http.post(f"{url}/usage/outbox/ack", json=stale) as response:
            assert response.status == 409
            assert "is not this sidecar's outbox" in (await response.json())["error"]
        async with http.post(f"{url}/usage/outbox/ack", json={"outbox": page.outbox, "upto": 9}) as response:
            assert response.status == 409
        assert list(store.outbox) == ["e3"]  # refused acks drop nothing

        async with http.get(f"{url}/usage/outbox", params={"after": "-1"}) as response:
            assert response.status == 400
            assert (await response.json())["error"] == "after: expected an integer >= 0, got '-1'"
        async with http.post(f"{url}/usage/outbox/ack", data=b"[") as response:
            assert response.status == 400
            assert (await response.json())["error"].startswith("ack: not JSON")


async def test_with_the_redis_store_the_outbox_answers_409_naming_the_stream() -> None:
    runtime = _runtime(QuotaGate(RedisStore("redis://127.0.0.1:1")))  # never connected
    server = web.AppRunner(create_admin_app(runtime))
    await server.setup()
    site = web.TCPSite(server, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        async with aiohttp.ClientSession() as http:
            for method, path in (("GET", "/usage/outbox"), ("POST", "/usage/outbox/ack")):
                async with http.request(method, f"http://127.0.0.1:{port}{path}", json={}) as response:
                    assert response.status == 409
                    body = await response.json()
                    assert "Redis stream tollway:usage" in body["error"] and body["store"] == "redis"
    finally:
        await server.cleanup()


def _options(url: str, tmp_path: Path, batch: int = 500) -> OutboxOptions:
    return OutboxOptions(url=url, dead_letter=tmp_path / "dead.jsonl", batch=batch, poll_ms=20)


async def test_the_meter_ingests_the_outbox_exactly_then_acks_and_dead_letters_bad_entries(
    admin: tuple[str, MemoryStore], tmp_path: Path
) -> None:
    url, store = admin
    events = [make_event(cost=f"0.00000{i}123") for i in range(1, 6)]
    store.outbox.extend(e.to_json() for e in events[:3])
    store.outbox.append('{"not": "an event"}')
    store.outbox.extend(e.to_json() for e in events[3:])
    ledger = Ledger.open(f"sqlite:///{tmp_path / 'ledger.db'}")
    ledger.migrate()
    async with aiohttp.ClientSession() as http:
        meter = OutboxConsumer(http, ledger, _options(url, tmp_path, batch=4))
        first = await meter.step()
        assert (first.read, first.inserted, first.dead_lettered) == (4, 3, 1)
        assert [e.seq for e in store.outbox.pending()] == [5, 6]  # acked after the commit
        second = await meter.step()
        assert (second.read, second.inserted) == (2, 2)
        assert len(store.outbox) == 0
        assert (await meter.step()).read == 0
    assert _totals(tmp_path) == (5, sum(e.data.cost_nanos for e in events))
    (dead,) = [json.loads(line) for line in (tmp_path / "dead.jsonl").read_text().splitlines()]
    assert (dead["entry"], dead["event"]) == ("4", '{"not": "an event"}')
    assert dead["outbox"] == store.outbox.id and dead["reason"]
    assert meter.stats.ingested == 5 and meter.stats.dead_lettered == 1 and meter.stats.batches == 2
    ledger.close()


async def test_a_meter_that_died_after_its_commit_before_its_ack_loses_nothing_and_counts_nothing_twice(
    admin: tuple[str, MemoryStore], tmp_path: Path
) -> None:
    url, store = admin
    events = [make_event() for _ in range(3)]
    store.outbox.extend(e.to_json() for e in events)
    ledger = Ledger.open(f"sqlite:///{tmp_path / 'ledger.db'}")
    ledger.migrate()
    # What a meter killed between its COMMIT and its ack leaves: the rows in, the outbox untouched.
    assert ledger.ingest(events).inserted == 3
    async with aiohttp.ClientSession() as http:
        again = OutboxConsumer(http, ledger, _options(url, tmp_path))  # the restarted meter
        step = await again.step()
        assert (step.read, step.inserted, step.duplicates) == (3, 0, 3)
        assert len(store.outbox) == 0
    assert _totals(tmp_path) == (3, sum(e.data.cost_nanos for e in events))
    ledger.close()


async def test_a_sidecar_restart_is_read_from_its_first_entry_and_overflow_counts_as_lost(
    tmp_path: Path,
) -> None:
    ledger = Ledger.open(f"sqlite:///{tmp_path / 'ledger.db'}")
    ledger.migrate()
    async with aiohttp.ClientSession() as http:
        old_store = MemoryStore()
        meter = None
        for store in (old_store, MemoryStore()):  # the second: the sidecar after a restart
            store.outbox.limit = 2
            store.outbox.extend(e.to_json() for e in (make_event(), make_event(), make_event()))
            runtime = _runtime(QuotaGate(store))
            runner = web.AppRunner(create_admin_app(runtime))
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
            try:
                if meter is None:
                    meter = OutboxConsumer(http, ledger, _options("", tmp_path))
                meter.options = _options(f"http://127.0.0.1:{port}", tmp_path)
                step = await meter.step()
                assert (step.read, step.inserted) == (2, 2)  # seqs 2 and 3 of a fresh outbox
                assert len(store.outbox) == 0
            finally:
                await runner.cleanup()
        assert meter is not None and meter.stats.lost == 2  # one dropped by each full outbox
    assert _totals(tmp_path)[0] == 4
    ledger.close()


def _totals(tmp_path: Path) -> tuple[int, int]:
    with sqlite3.connect(tmp_path / "ledger.db") as db:
        count, cost = db.execute("SELECT count(*), coalesce(sum(cost_nanos), 0) FROM usage_events").fetchone()
    return int(count), int(cost)


async def test_a_ledger_that_cannot_write_leaves_the_page_in_the_outbox_for_the_next_step(
    admin: tuple[str, MemoryStore], tmp_path: Path
) -> None:
    url, store = admin
    store.outbox.extend(make_event().to_json() for _ in range(2))
    ledger = Ledger.open(f"sqlite:///{tmp_path / 'ledger.db'}")
    ledger.migrate()
    assert isinstance(ledger, SqliteLedger)
    ledger.conn.execute("PRAGMA busy_timeout=50")  # not 30 s: the test waits on it
    blocker = sqlite3.connect(tmp_path / "ledger.db", isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # another writer holds the database
    async with aiohttp.ClientSession() as http:
        meter = OutboxConsumer(http, ledger, _options(url, tmp_path))
        with pytest.raises(LedgerUnavailableError):
            await meter.step()
        assert len(store.outbox) == 2 and meter.stats.ledger_errors == 1
        blocker.execute("ROLLBACK")
        step = await meter.step()
        assert (step.read, step.inserted) == (2, 2)
        assert len(store.outbox) == 0
    blocker.close()
    ledger.close()
