"""PostgreSQL only: monthly partitions, retention by dropping one, concurrent writers."""

from __future__ import annotations

import threading
from datetime import UTC, datetime

from ledger_events import make_event, spread
from pgserver import PostgresServer

from tollway_meter.ledger import IngestResult, Ledger
from tollway_meter.queries import usage

ALL_TIME = (datetime(2000, 1, 1, tzinfo=UTC), datetime(2100, 1, 1, tzinfo=UTC))


def test_events_are_partitioned_by_month_and_retention_drops_one(postgres: PostgresServer) -> None:
    ledger = Ledger.open(postgres.new_database())
    ledger.migrate()
    october = spread(5, at=datetime(2026, 10, 20, 8, tzinfo=UTC))
    november = spread(5)
    ledger.ingest([*october, *november])
    with ledger.transaction() as cur:
        cur.execute(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = 'usage_events'::regclass ORDER BY 1"
        )
        assert [r[0] for r in cur.fetchall()] == ["usage_events_2026_10", "usage_events_2026_11"]
    totals = usage(ledger, ["team"], *ALL_TIME)
    with ledger.transaction() as cur:
        cur.execute("DROP TABLE usage_events_2026_10")
        cur.execute("SELECT count(*) FROM usage_events")
        assert cur.fetchone() == (5,)
    # Roll-ups outlive the detail.
    assert usage(ledger, ["team"], *ALL_TIME) == totals
    # The id gate still remembers October's ids: a replay does not count them again.
    assert ledger.ingest(october) == IngestResult(inserted=0, duplicates=5, adjustments=0)
    ledger.close()


def test_concurrent_writers_never_double_count(postgres: PostgresServer) -> None:
    dsn = postgres.new_database()
    setup = Ledger.open(dsn)
    setup.migrate()
    events = spread(300)
    results: list[IngestResult] = []
    lock = threading.Lock()

    def writer(offset: int) -> None:
        ledger = Ledger.open(dsn)
        # Overlapping batches in different orders: every event is offered by both writers.
        for start in range(0, 300, 50):
            batch = events[(start + offset) % 300 : (start + offset) % 300 + 50]
            result = ledger.ingest(batch[::-1] if offset else batch)
            with lock:
                results.append(result)
        ledger.close()

    threads = [threading.Thread(target=writer, args=(o,)) for o in (0, 150)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(r.inserted for r in results) == 300
    assert sum(r.duplicates for r in results) == 300
    [row] = usage(setup, [], *ALL_TIME)
    assert (row.requests, row.cost_nanos) == (300, sum(e.data.cost_nanos for e in events))
    with setup.transaction() as cur:
        cur.execute("SELECT count(*) FROM usage_events")
        assert cur.fetchone() == (300,)
    setup.ingest([make_event()])
    setup.close()


def test_a_new_event_for_a_dropped_month_is_still_stored(postgres: PostgresServer) -> None:
    ledger = Ledger.open(postgres.new_database())
    ledger.migrate()
    ledger.ingest(spread(3, at=datetime(2026, 10, 20, 8, tzinfo=UTC)))
    ledger.close_period("2026-10")
    with ledger.transaction() as cur:
        cur.execute("DROP TABLE usage_events_2026_10")  # retention, by the same or another process
    late = make_event(at=datetime(2026, 10, 31, 23, tzinfo=UTC), cost="1")
    assert ledger.ingest([late]) == IngestResult(inserted=1, duplicates=0, adjustments=1)
    [row] = usage(ledger, [], datetime(2026, 11, 1, tzinfo=UTC), datetime(2026, 12, 1, tzinfo=UTC))
    assert row.cost_nanos == 10**9
    ledger.close()


def test_two_meters_migrating_at_once_apply_each_migration_once(postgres: PostgresServer) -> None:
    dsn = postgres.new_database()
    versions: list[int] = []
    errors: list[BaseException] = []

    def migrate() -> None:
        ledger = Ledger.open(dsn)
        try:
            versions.append(ledger.migrate())
        except BaseException as exc:
            errors.append(exc)
        finally:
            ledger.close()

    threads = [threading.Thread(target=migrate) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    ledger = Ledger.open(dsn)
    assert versions == [ledger.schema_version()] * 3
    with ledger.transaction() as cur:
        cur.execute("SELECT count(*) FROM schema_version")
        assert cur.fetchone() == (len(ledger.migrations()),)
    ledger.close()


def test_closing_waits_for_the_batches_in_flight(postgres: PostgresServer) -> None:
    dsn = postgres.new_database()
    batch, closer = Ledger.open(dsn), Ledger.open(dsn)
    batch.migrate()
    with batch.transaction() as cur:
        # A batch that has read November as open: the close must not commit under it.
        batch.lock_shared(cur)
        closing = threading.Thread(target=closer.close_period, args=("2026-11",))
        closing.start()
        closing.join(0.5)
        assert closing.is_alive(), "the close should wait for the batch's transaction"
        cur.execute("SELECT count(*) FROM periods")
        assert cur.fetchone() == (0,)
    closing.join(10)
    assert not closing.is_alive()
    assert batch.closed_periods() == frozenset({"2026-11"})
    batch.close()
    closer.close()
