"""One batch's way into the ledger, on SQLite and on PostgreSQL (whose rows go in by a binary COPY,
written while they are built): every column as stored, and a batch that mixes duplicates, months
and a closed period."""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, datetime
from typing import Any

from ledger_events import NOV, make_event, spread

from tollway_meter.ledger import Ledger
from tollway_meter.rows import ROLLUP_MEASURES, event_row, period_of
from tollway_sidecar.contract.usage_event import (
    MAX_COST_USD,
    MAX_COUNT,
    Attempt,
    Tokens,
    UsageEvent,
)


def stored_rows(ledger: Ledger) -> dict[str, tuple[Any, ...]]:
    with ledger.transaction(readonly=True) as cur:
        cur.execute(
            "SELECT id, event_time, booked_period, adjustment, hour, namespace, key_name, team, user_id, "
            "route, model, backend, provider, requests, billable_requests, cost_nanos, input_tokens, "
            "output_tokens, cached_read_tokens, cache_write_tokens, reasoning_tokens, cache_hits, "
            "saved_nanos, session_id, end_user, status, outcome, latency_ms, request_id, trace_id, event "
            "FROM usage_events"
        )
        return {str(row[0]): tuple(row) for row in cur.fetchall()}


def as_json(value: Any) -> Any:
    """PostgreSQL gives jsonb back parsed, SQLite gives the text."""
    return json.loads(value) if isinstance(value, str) else value


def test_every_column_is_stored_as_the_event_says(ledger: Ledger) -> None:
    odd = make_event(
        team="équipe-ü",  # non-ASCII text in a roll-up dimension
        end_user='quote" back\\slash tab\t newline\n',
        session_id="s-💸",
        properties={"feature": "naïve ☃", "env": "prod"},
        attempts=(Attempt("primary", "openai", "gpt-4o", 503), Attempt("spare", "azure", "gpt-4o", 200)),
        tokens=Tokens(input=MAX_COUNT, output=MAX_COUNT - 1, cached_read=3, cache_write=4, reasoning=5),
        cost=f"{MAX_COST_USD}.000000000",
        latency_ms=MAX_COUNT,
        ttft_ms=None,
        status=201,
        request_id="req-1",
        trace_id="4bf92f3577b34da6a3ce929d0e0e4736",
    )
    plain = make_event(at=NOV.replace(hour=23, minute=59, second=59, microsecond=999999))
    hit = make_event(cost="0", cache="SEMANTIC_HIT", saved=f"{MAX_COST_USD - 1}.999999999")
    ledger.ingest([odd, plain, hit])
    stored = stored_rows(ledger)
    assert set(stored) == {str(odd.id), str(plain.id), str(hit.id)}
    for event in (odd, plain, hit):
        expected = ledger.event_values(event_row(event, frozenset()))
        got = stored[str(event.id)]
        assert got[:-1] == expected[:-1]
        assert as_json(got[-1]) == json.loads(event.to_json())
        assert UsageEvent.from_dict(as_json(got[-1])) == event
    row = stored[str(odd.id)]
    assert row[13:23] == (1, 1, MAX_COST_USD * 10**9, MAX_COUNT, MAX_COUNT - 1, 3, 4, 5, 0, 0)
    assert stored[str(hit.id)][13:23] == (1, 1, 0, 100, 20, 10, 0, 0, 1, MAX_COST_USD * 10**9 - 1)


def test_a_batch_of_duplicates_months_and_a_closed_period(ledger: Ledger) -> None:
    ledger.close_period("2026-10")
    first = spread(30)
    assert ledger.ingest(first).inserted == 30

    october = [make_event(at=datetime(2026, 10, 31, 23, 59, tzinfo=UTC), cost=f"0.00{i}") for i in range(4)]
    december = [make_event(at=datetime(2026, 12, 1, 0, 0, i, tzinfo=UTC), cost=f"0.0{i}") for i in range(5)]
    november = spread(6)
    fresh = [*october, *november, *december]
    # Old ids from the ledger, each new one, and a few new ones twice within the batch itself.
    batch = [*first[::3], *fresh, fresh[0], december[-1], *first[:2]]
    result = ledger.ingest(batch)
    assert (result.inserted, result.duplicates, result.adjustments) == (15, len(batch) - 15, 4)
    again = ledger.ingest(batch)
    assert (again.inserted, again.duplicates, again.adjustments) == (0, len(batch), 0)

    stored = stored_rows(ledger)
    assert set(stored) == {str(e.id) for e in [*first, *fresh]}
    # The late October events are booked as adjustments in the first open period, at its first hour.
    for event in october:
        row = stored[str(event.id)]
        assert (row[2], bool(row[3])) == ("2026-11", True)
    # Each period's roll-ups hold exactly the sums of the events booked there, each event once.
    expected: dict[str, Counter[str]] = {}
    for event in [*first, *fresh]:
        booked = "2026-11" if period_of(event.time) == "2026-10" else period_of(event.time)
        row = event_row(event, frozenset({"2026-10"}))
        totals = expected.setdefault(booked, Counter())
        totals.update(dict(zip(ROLLUP_MEASURES, row.measures, strict=True)))
    with ledger.transaction(readonly=True) as cur:
        sums = ", ".join(f"sum({m})" for m in ROLLUP_MEASURES)
        cur.execute(f"SELECT period, {sums} FROM usage_hourly GROUP BY period ORDER BY period")
        found = {str(r[0]): dict(zip(ROLLUP_MEASURES, map(int, r[1:]), strict=True)) for r in cur.fetchall()}
    assert found == {period: dict(totals) for period, totals in expected.items()}
    assert set(found) == {"2026-11", "2026-12"}
