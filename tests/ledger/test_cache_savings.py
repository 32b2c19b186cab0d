"""Cache hits and savings as roll-up measures (migration 6), on SQLite and PostgreSQL: the sums equal
the events' `saved`, a duplicate adds nothing, and a ledger migrated from version 5 with hits
already in it (in an open and in a closed month) is backfilled from its events."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from ledger_events import NOV, make_event

from tollway_meter import migrations
from tollway_meter.ledger import Ledger, PeriodClosedError
from tollway_meter.queries import usage
from tollway_meter.rows import ROLLUP_MEASURES, event_row, period_of, rollup_deltas
from tollway_sidecar.contract.usage_event import UsageEvent

ALL_TIME = (datetime(2000, 1, 1, tzinfo=UTC), datetime(2100, 1, 1, tzinfo=UTC))
OCT = NOV.replace(month=10)
NEW_COLUMNS = ("cache_hits", "saved_nanos")


def hits_and_misses(at: datetime = NOV) -> list[UsageEvent]:
    """Hits with savings that catch a float or a dropped digit, a hit that states no saving, misses."""
    return [
        make_event(at=at, cost="0", cache="HIT", saved="0.000000001", model="gpt-4o-mini"),
        make_event(at=at.replace(minute=1), cost="0", cache="SEMANTIC_HIT", saved="12.3", model="claude"),
        make_event(at=at.replace(minute=2), cost="0", cache="HIT", saved="999999.999999999", team="ops"),
        make_event(at=at.replace(minute=3), cost="0", cache="HIT", model="claude"),  # no `saved`
        make_event(at=at.replace(minute=4), cost="0.25", cache="MISS"),
        make_event(at=at.replace(hour=11), cost="0.5"),  # a route without a cache
    ]


def expected(events: list[UsageEvent], **match: str) -> tuple[int, int]:
    chosen = [e for e in events if all(getattr(e.data, k) == v for k, v in match.items())]
    return sum(e.data.cache in ("HIT", "SEMANTIC_HIT") for e in chosen), sum(
        e.data.saved_nanos for e in chosen
    )


def totals(ledger: Ledger, by: list[str] | None = None) -> dict[str, tuple[int, int]]:
    return {
        "/".join(r.keys.values()): (r.cache_hits, r.saved_nanos) for r in usage(ledger, by or [], *ALL_TIME)
    }


def test_hits_and_savings_equal_the_events_and_a_duplicate_adds_nothing(ledger: Ledger) -> None:
    events = hits_and_misses()
    ledger.ingest(events)
    assert totals(ledger) == {"": expected(events)}
    assert totals(ledger)[""] == (4, 1_000_012_300_000_000)  # 0.000000001 + 12.3 + 999999.999999999
    assert totals(ledger, ["model"]) == {m: expected(events, model=m) for m in {e.data.model for e in events}}
    assert totals(ledger, ["team"])["ops"] == (1, 999_999_999_999_999)
    # Read from the detail rows (a detail dimension) the sums are the same.
    assert totals(ledger, ["session"]) == {"s-1": expected(events)}
    again = ledger.ingest([events[0], events[1], make_event(cache="HIT", cost="0", saved="1")])
    assert (again.inserted, again.duplicates) == (1, 2)
    assert totals(ledger)[""] == (5, 1_000_013_300_000_000)


def rows_of(ledger: Ledger, table: str, columns: tuple[str, ...], order: str) -> list[tuple[Any, ...]]:
    with ledger.transaction(readonly=True) as cur:
        cur.execute(f"SELECT {', '.join(columns)} FROM {table} ORDER BY {order}")
        return [tuple(row) for row in cur.fetchall()]


def ingest_at_version_5(ledger: Ledger, events: list[UsageEvent]) -> None:
    """What a meter at schema version 5 wrote: the same rows without the two cache columns."""
    from tollway_meter import ledger as module

    ledger.prepare({period_of(e.time) for e in events})
    rows = [event_row(e, frozenset()) for e in events]
    columns = [c for c in module._EVENT_COLUMNS if c not in NEW_COLUMNS]
    hourly = ["hour", "period", "adjustment", *module.ROLLUP_DIMENSIONS, *ROLLUP_MEASURES[:-2]]
    insert_event, insert_hourly = (
        ledger.sql(f"INSERT INTO {table} ({', '.join(names)}) VALUES ({', '.join(['%s'] * len(names))})")
        for table, names in (("usage_events", columns), ("usage_hourly", hourly))
    )
    with ledger.transaction() as cur:
        if ledger.dialect == "postgresql":
            for e in events:
                cur.execute("INSERT INTO event_ids (id, event_time) VALUES (%s, %s)", (e.id, e.time))
        for row in rows:
            values = dict(zip(module._EVENT_COLUMNS, ledger.event_values(row), strict=True))
            cur.execute(
                insert_event,
                tuple(values[c] for c in columns),
            )
        for d in rollup_deltas(rows):
            cur.execute(
                insert_hourly,
                (ledger.time(d.hour), d.period, ledger.flag(d.adjustment), *d.dims, *d.measures[:-2]),
            )


@pytest.fixture
def at_version_5(ledger_dsn: str, monkeypatch: pytest.MonkeyPatch) -> Ledger:
    opened = Ledger.open(ledger_dsn)
    every = opened.migrations()
    assert every[migrations.CACHE_SAVINGS - 1].version == migrations.CACHE_SAVINGS == 6
    monkeypatch.setattr(opened, "migrations", lambda: every[:5])
    assert opened.migrate() == 5
    monkeypatch.setattr(opened, "migrations", lambda: every)
    return opened


def test_migrating_from_version_5_backfills_the_hits_open_and_closed_months(at_version_5: Ledger) -> None:
    ledger = at_version_5
    october, november = hits_and_misses(OCT), hits_and_misses(NOV)
    ingest_at_version_5(ledger, [*october, *november])
    ledger.close_period("2026-10")
    old = ("hour", "period", "namespace", "model", "team", "requests", "billable_requests", "cost_nanos")
    before = rows_of(ledger, "usage_hourly", old, "1, 2, 3, 4, 5")
    try:
        assert ledger.migrate() == len(ledger.migrations())
        assert ledger.schema_version() == 6
        october_range = (OCT.replace(day=1, hour=0, minute=0), NOV.replace(day=1, hour=0, minute=0))
        [closed] = usage(ledger, [], *october_range)
        assert (closed.cache_hits, closed.saved_nanos) == expected(october)
        assert totals(ledger) == {"": expected([*october, *november])}
        assert totals(ledger, ["model"]) == {
            m: expected([*october, *november], model=m) for m in {e.data.model for e in november}
        }
        # The detail rows carry them too, and nothing an invoice was built from moved.
        assert totals(ledger, ["session"]) == {"s-1": expected([*october, *november])}
        assert rows_of(ledger, "usage_hourly", old, "1, 2, 3, 4, 5") == before
        # The closed month is frozen again, both tables.
        for statement in (
            "UPDATE usage_hourly SET saved_nanos = 0 WHERE period = '2026-10'",
            "UPDATE usage_events SET cache_hits = 0 WHERE booked_period = '2026-10'",
        ):
            with pytest.raises(PeriodClosedError), ledger.transaction() as cur:
                cur.execute(statement)
        # A late hit for the closed month is an adjustment in the open one, counted there.
        late = make_event(at=OCT.replace(day=20), cost="0", cache="HIT", saved="0.5")
        ledger.ingest([late])
        assert totals(ledger)[""] == expected([*october, *november, late])
        assert usage(ledger, [], *october_range)[0].saved_nanos == expected(october)[1]
    finally:
        ledger.close()
