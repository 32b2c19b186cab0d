"""The shared ledger suite: every test runs on SQLite and on PostgreSQL."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from ledger_events import NOV, make_event, spread

from tollway_meter import migrations
from tollway_meter.invoice import build_invoice, invoice_csv, invoice_json
from tollway_meter.ledger import Ledger, PeriodClosedError
from tollway_meter.queries import get_request, top_requests, usage
from tollway_sidecar.contract.usage_event import parse_usd, usd_to_nanos

ALL_TIME = (datetime(2000, 1, 1, tzinfo=UTC), datetime(2100, 1, 1, tzinfo=UTC))


def rollups(ledger: Ledger, period: str | None = None) -> list[tuple[Any, ...]]:
    where = " WHERE period = %s" if period else ""
    with ledger.transaction() as cur:
        cur.execute(
            ledger.sql(f"SELECT * FROM usage_hourly{where} ORDER BY 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11"),
            (period,) if period else (),
        )
        return [tuple(row) for row in cur.fetchall()]


def total_nanos(ledger: Ledger) -> int:
    return sum(row.cost_nanos for row in usage(ledger, [], *ALL_TIME))


def test_migrations_apply_once_in_order(ledger: Ledger) -> None:
    assert ledger.schema_version() == len(ledger.migrations())
    assert ledger.migrate() == len(ledger.migrations())  # a second run applies nothing
    with ledger.transaction() as cur:
        cur.execute("SELECT version FROM schema_version")
        assert [row[0] for row in cur.fetchall()] == [m.version for m in ledger.migrations()]
    broken = (migrations.Migration(2, "gap", ()),)
    with pytest.raises(RuntimeError, match="out of order"):
        migrations.pending(broken, 0)


def test_reingesting_changes_nothing(ledger: Ledger) -> None:
    events = spread(40)
    first = ledger.ingest(events)
    assert (first.inserted, first.duplicates) == (40, 0)
    before = rollups(ledger)
    again = ledger.ingest(events)
    assert (again.inserted, again.duplicates) == (0, 40)
    # Half old, half new, and a duplicate within the batch itself.
    more = spread(10)
    mixed = ledger.ingest([*events[:10], *more, more[0]])
    assert (mixed.inserted, mixed.duplicates) == (10, 11)
    assert rollups(ledger) != before
    assert total_nanos(ledger) == sum(usd_to_nanos(parse_usd(e.data.cost)) for e in [*events, *more])


def test_totals_are_exact_to_the_nano_dollar(ledger: Ledger) -> None:
    events = [make_event(cost="0.000000001") for _ in range(7)] + [make_event(cost="12345.678901234")]
    ledger.ingest(events)
    [row] = usage(ledger, [], *ALL_TIME)
    assert row.cost == Decimal("12345.678901241")
    assert (row.requests, row.input_tokens, row.output_tokens, row.cached_read_tokens) == (8, 800, 160, 80)


def test_a_denied_call_is_a_request_but_costs_nothing(ledger: Ledger) -> None:
    ledger.ingest([make_event(outcome="denied", status=429, cost="0", billable=False), make_event(cost="1")])
    [row] = usage(ledger, [], *ALL_TIME)
    assert (row.requests, row.billable_requests, row.cost) == (2, 1, Decimal("1.000000000"))


def test_group_by_dimensions_and_granularity(ledger: Ledger) -> None:
    events = spread(30)
    ledger.ingest(events)
    by_team = usage(ledger, ["team", "model"], *ALL_TIME)
    expected: dict[tuple[str, str], int] = {}
    for e in events:
        key = (e.data.team, e.data.model)
        expected[key] = expected.get(key, 0) + e.data.cost_nanos
    assert {(r.keys["team"], r.keys["model"]): r.cost_nanos for r in by_team} == expected
    assert by_team == sorted(by_team, key=lambda r: -r.cost_nanos)
    daily = usage(ledger, ["team"], *ALL_TIME, granularity="day")
    assert {r.bucket for r in daily} == {"2026-11-10"}
    hourly = usage(ledger, [], *ALL_TIME, granularity="hour")
    assert [r.bucket for r in hourly] == [f"2026-11-10T{h:02d}:00Z" for h in range(9, 14)]
    monthly = usage(ledger, ["provider"], *ALL_TIME, granularity="month")
    assert [(r.bucket, r.keys["provider"], r.requests) for r in monthly] == [("2026-11", "openai", 30)]
    # Detail dimensions: a property and the session.
    by_feature = usage(ledger, ["property:feature", "session"], *ALL_TIME)
    assert sum(r.requests for r in by_feature) == 30
    assert {r.keys["property:feature"] for r in by_feature} == {"f0", "f1", "f2", "f3"}
    # The time range is [since, until).
    window = usage(ledger, [], datetime(2026, 11, 10, 10, tzinfo=UTC), datetime(2026, 11, 10, 12, tzinfo=UTC))
    assert window[0].requests == sum(1 for e in events if e.time.hour in (10, 11))
    with pytest.raises(ValueError, match="unknown dimension 'colour'"):
        usage(ledger, ["colour"], *ALL_TIME)


def test_top_requests_and_one_by_id(ledger: Ledger) -> None:
    events = spread(12)
    ledger.ingest(events)
    top = top_requests(ledger, 3, *ALL_TIME)
    costs = sorted((e.data.cost_nanos for e in events), reverse=True)
    assert [t.cost_nanos for t in top] == costs[:3]
    found = get_request(ledger, top[0].id)
    assert found is not None
    assert found.event == next(e for e in events if str(e.id) == top[0].id)
    assert (found.booked_period, found.adjustment) == ("2026-11", False)
    assert get_request(ledger, "0192f2a0-0000-7000-8000-000000000000") is None


def test_a_closed_period_is_frozen_by_the_database(ledger: Ledger) -> None:
    ledger.ingest(spread(20))
    ledger.close_period("2026-11")
    frozen = rollups(ledger, "2026-11")
    invoice_before = invoice_csv(build_invoice(ledger, "2026-11", ["team"]))
    late = make_event(at=datetime(2026, 11, 30, 23, 59, 59, tzinfo=UTC), cost="2.5")
    result = ledger.ingest([late])
    assert (result.inserted, result.adjustments) == (1, 1)
    assert rollups(ledger, "2026-11") == frozen
    assert invoice_csv(build_invoice(ledger, "2026-11", ["team"])) == invoice_before
    december = usage(ledger, [], datetime(2026, 12, 1, tzinfo=UTC), datetime(2027, 1, 1, tzinfo=UTC))
    assert december[0].cost == Decimal("2.500000000")
    booked = get_request(ledger, str(late.id))
    assert booked is not None
    assert (booked.booked_period, booked.adjustment, booked.event.time) == ("2026-12", True, late.time)
    # The database itself refuses changes, whatever the code does.
    for statement in (
        "UPDATE usage_hourly SET cost_nanos = cost_nanos + 1 WHERE period = '2026-11'",
        "DELETE FROM usage_hourly WHERE period = '2026-11'",
        "UPDATE usage_events SET cost_nanos = 0 WHERE booked_period = '2026-11'",
        "DELETE FROM periods WHERE period = '2026-11'",
    ):
        with pytest.raises(PeriodClosedError, match="closed"), ledger.transaction() as cur:
            cur.execute(statement)
    with pytest.raises(PeriodClosedError), ledger.transaction() as cur:
        cur.execute(
            "INSERT INTO usage_hourly VALUES ('2026-11-02T00:00:00.000000Z', '2026-11', "
            "%s, 'n', 'k', 't', 'u', 'r', 'm', 'b', 'p', 1, 1, 1, 0, 0, 0, 0, 0, 0, 0)".replace(
                "%s", "false" if ledger.dialect == "postgresql" else "0"
            )
        )
    assert rollups(ledger, "2026-11") == frozen
    with pytest.raises(PeriodClosedError, match="already closed"):
        ledger.close_period("2026-11")


def test_a_late_event_skips_every_closed_period(ledger: Ledger) -> None:
    ledger.close_period("2026-10")
    ledger.close_period("2026-11")
    ledger.ingest([make_event(at=datetime(2026, 10, 3, tzinfo=UTC), cost="1")])
    [row] = usage(ledger, [], datetime(2026, 12, 1, tzinfo=UTC), datetime(2027, 1, 1, tzinfo=UTC))
    assert row.cost == Decimal("1.000000000")
    assert rollups(ledger, "2026-10") == rollups(ledger, "2026-11") == []


def test_invoice_lines_sum_exactly_to_the_total(ledger: Ledger) -> None:
    ledger.ingest(spread(50))
    ledger.close_period("2026-11")
    ledger.ingest([make_event(cost="0.333333333", at=NOV.replace(day=20))])  # an adjustment in December
    invoice = build_invoice(ledger, "2026-11", ["team", "model"])
    rows = list(csv.DictReader(io.StringIO(invoice_csv(invoice))))
    lines = [r for r in rows if r["kind"] == "line"]
    [total] = [r for r in rows if r["kind"] == "total"]
    assert len(lines) == 6
    assert sum(Decimal(r["cost_usd"]) for r in lines) == Decimal(total["cost_usd"])
    assert Decimal(total["cost_usd"]) == Decimal(invoice.total_nanos) / 10**9
    assert sum(int(r["requests"]) for r in lines) == int(total["requests"]) == 50
    body = json.loads(invoice_json(build_invoice(ledger, "2026-12", ["team"])))
    assert body["closed"] is False
    assert [(line["team"], line["adjustment"], line["cost_usd"]) for line in body["lines"]] == [
        ("research", True, "0.333333333")
    ]
    assert body["total_usd"] == "0.333333333"
    with pytest.raises(ValueError, match="an invoice groups by"):
        build_invoice(ledger, "2026-11", ["session"])
