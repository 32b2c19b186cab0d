"""The pure part of the ledger: periods, booking of late events, roll-up sums (no database)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from ledger_events import make_event

from tollway_meter.rows import booking_period, event_row, next_period, parse_period, period_of, rollup_deltas


def test_periods_are_utc_calendar_months() -> None:
    assert period_of(datetime(2026, 11, 30, 23, 59, 59, tzinfo=UTC)) == "2026-11"
    # 01:30 on December 1st in UTC+2 is still November in UTC.
    assert period_of(datetime(2026, 12, 1, 1, 30, tzinfo=timezone(timedelta(hours=2)))) == "2026-11"
    assert next_period("2026-12") == "2027-01"
    assert next_period("2026-01") == "2026-02"
    for bad in ("2026-13", "2026-1", "26-11", "2026/11", "november"):
        with pytest.raises(ValueError, match="period: expected YYYY-MM"):
            parse_period(bad)


def test_a_late_event_is_booked_in_the_first_open_period() -> None:
    assert booking_period("2026-11", frozenset()) == "2026-11"
    assert booking_period("2026-11", frozenset({"2026-11", "2026-12"})) == "2027-01"
    late = event_row(make_event(at=datetime(2026, 11, 30, 23, 59, tzinfo=UTC)), frozenset({"2026-11"}))
    assert (late.booked_period, late.adjustment, late.hour) == (
        "2026-12",
        True,
        datetime(2026, 12, 1, tzinfo=UTC),
    )
    assert late.event_time == datetime(2026, 11, 30, 23, 59, tzinfo=UTC)


def test_rollups_sum_per_hour_and_dimensions_in_key_order() -> None:
    at = datetime(2026, 11, 10, 9, 5, tzinfo=UTC)
    rows = [
        event_row(make_event(at=at, cost="0.1"), frozenset()),
        event_row(make_event(at=at.replace(minute=55), cost="0.2"), frozenset()),
        event_row(make_event(at=at.replace(hour=8), cost="0.4", team="sales"), frozenset()),
        event_row(make_event(at=at, cost="0", outcome="denied", status=403, billable=False), frozenset()),
    ]
    deltas = rollup_deltas(rows)
    assert [(d.hour.hour, d.dims[2], d.measures[:3]) for d in deltas] == [
        (8, "sales", (1, 1, 400_000_000)),
        (9, "research", (3, 2, 300_000_000)),
    ]
    assert [d.key for d in deltas] == sorted(d.key for d in deltas)
