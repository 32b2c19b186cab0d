"""Cost reports: the numbers equal sums over the events themselves, to the nano-dollar, on SQLite
and PostgreSQL; the period arithmetic across month and year boundaries; the renderers."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from ledger_events import make_event, spread

from tollway_meter.console.forecast import Limit
from tollway_meter.ledger import Ledger
from tollway_meter.report import Scope, build_report
from tollway_meter.report_period import parse_report_period
from tollway_meter.report_render import render
from tollway_sidecar.contract.usage_event import Attempt, UsageEvent, nanos_to_usd

NOW = datetime(2026, 12, 3, 10, 0, tzinfo=UTC)  # a Thursday
WEEK = datetime(2026, 11, 23, tzinfo=UTC)  # Monday of 2026-W48, the last complete week before NOW


def _when(day: int, hour: int = 9) -> datetime:
    return WEEK + timedelta(days=day, hours=hour)


def test_periods_last_week_last_month_and_named_ones() -> None:
    last = parse_report_period("last-week", NOW)
    assert (last.label, last.since, last.until) == ("2026-W48", WEEK, WEEK + timedelta(days=7))
    month = parse_report_period("last-month", NOW)
    assert (month.label, month.since) == ("2026-11", datetime(2026, 11, 1, tzinfo=UTC))
    assert month.until == datetime(2026, 12, 1, tzinfo=UTC)
    assert parse_report_period("2026-02", NOW).previous().label == "2026-01"
    assert parse_report_period("2026-01", NOW).previous().label == "2025-12"


def test_weeks_across_a_month_and_a_year_boundary() -> None:
    # 2026-W53 runs from Monday 28 December 2026 to Monday 4 January 2027.
    w53 = parse_report_period("2026-W53", NOW)
    assert (w53.since, w53.until) == (datetime(2026, 12, 28, tzinfo=UTC), datetime(2027, 1, 4, tzinfo=UTC))
    assert w53.next().label == "2027-W01"
    assert parse_report_period("2027-W01", NOW).previous().label == "2026-W53"
    # 2026-W49 spans November and December.
    w49 = parse_report_period("2026-W49", NOW)
    assert (w49.since.month, (w49.until - timedelta(microseconds=1)).month) == (11, 12)
    # The last week before a Monday morning in January is the last week of the year before.
    assert parse_report_period("last-week", datetime(2027, 1, 4, 0, 1, tzinfo=UTC)).label == "2026-W53"


@pytest.mark.parametrize("text", ["2025-W53", "2026-13", "last-year", "2026-W00", "26-11"])
def test_bad_periods_are_refused_by_name(text: str) -> None:
    with pytest.raises(ValueError, match="period"):
        parse_report_period(text, NOW)


def _nanos(events: list[UsageEvent]) -> int:
    return sum(e.data.cost_nanos for e in events if e.data.billable)


def test_the_report_equals_the_events_to_the_nano_dollar(ledger: Ledger) -> None:
    inside = [
        make_event(at=e.time, cost=e.data.cost, team=e.data.team, model=e.data.model, key_name=f"k{i % 4}")
        for i, e in enumerate(spread(40, at=_when(2)))
    ]
    failing = make_event(
        at=_when(3),
        cost="0.000000001",
        outcome="error",
        status=502,
        attempts=(Attempt("a", "openai", "m", 502), Attempt("b", "anthropic", "m", 502)),
    )
    cached = make_event(at=_when(4), cost="0", cache="HIT", saved="0.123456789")  # no price source
    other_ns = make_event(at=_when(1), cost="5", namespace="team-b")
    before = [make_event(at=_when(-3), cost="0.25", key_name="k0"), make_event(at=_when(-10), cost="0.5")]
    after = [make_event(at=_when(7, 0), cost="7")]
    # Hits the report leaves out: another namespace's, last period's.
    hits_outside = [
        make_event(at=_when(4), cost="0", cache="HIT", saved="3", namespace="team-b"),
        make_event(at=_when(-3), cost="0", cache="SEMANTIC_HIT", saved="0.5"),
    ]
    ledger.ingest([*inside, failing, cached, other_ns, *before, *after, *hits_outside])

    period = parse_report_period("last-week", NOW)
    report = build_report(ledger, period, Scope(namespaces=frozenset({"team-a"})), NOW)
    ours = [*inside, failing, cached]
    assert report.cost_nanos == _nanos(ours)
    assert report.requests == len(ours)
    assert report.previous_cost_nanos == _nanos(before[:1])
    assert report.change_nanos == _nanos(ours) - _nanos(before[:1])
    assert report.cache_hits == 1 and report.cache_saved_nanos == 123_456_789
    # Unpriced: the successes without a price source (make_event sets none), less the cache hit.
    assert report.unpriced == len(inside)
    by_team: dict[str, int] = {}
    for e in ours:
        by_team[e.data.team] = by_team.get(e.data.team, 0) + e.data.cost_nanos
    assert {s.name: s.cost_nanos for s in report.top["team"]} == by_team
    assert sum(line.cost_nanos for line in report.lines) == report.cost_nanos
    assert report.expensive[0].cost_nanos == max(e.data.cost_nanos for e in ours)
    assert len(report.top["key"]) <= 10 and len(report.expensive) == 10
    health = {p.provider: (p.requests, p.errors, p.fallbacks) for p in report.providers}
    assert health["anthropic"] == (1, 1, 1)
    assert health["openai"] == (len(inside) + 1, 0, 0)
    assert report.p95_latency_ms == 50
    assert report.p95_ttft_ms is None
    assert sum(nanos for _day, nanos in report.daily) == report.cost_nanos

    # A team scope and a key scope narrow the same sums.
    research = build_report(ledger, period, Scope(teams=frozenset({"research"})), NOW)
    assert research.cost_nanos == by_team["research"] + other_ns.data.cost_nanos  # both namespaces
    k1 = build_report(ledger, period, Scope(keys=frozenset({"team-a/k1", "nobody"})), NOW)
    assert k1.cost_nanos == _nanos([e for e in inside if e.data.key_name == "k1"])


def test_percentiles_are_nearest_rank(ledger: Ledger) -> None:
    events = [make_event(at=_when(1), latency_ms=ms, ttft_ms=ms // 2) for ms in range(1, 21)]
    ledger.ingest(events)
    report = build_report(ledger, parse_report_period("last-week", NOW), Scope(), NOW)
    assert report.p95_latency_ms == 19  # the 19th of 20 values (ceil(0.95 * 20) = 19)
    assert report.p95_ttft_ms == 9


def test_an_anomaly_is_more_than_twice_the_average_of_the_periods_before(ledger: Ledger) -> None:
    history = [
        make_event(at=_when(-7 * n), cost="1", key_name=name) for n in (1, 2, 3) for name in ("a", "b")
    ]
    now_a = make_event(at=_when(1), cost="2.000000001", key_name="a")  # just over twice $1
    now_b = make_event(at=_when(1), cost="2", key_name="b")  # exactly twice: not an anomaly
    new = make_event(at=_when(1), cost="9", key_name="new")  # no history: no baseline
    ledger.ingest([*history, now_a, now_b, new])
    report = build_report(ledger, parse_report_period("last-week", NOW), Scope(), NOW)
    keys = [(a.name, a.baseline_nanos) for a in report.anomalies if a.dimension == "key"]
    assert keys == [("a", 10**9)]


def test_budgets_are_forecast_for_their_current_period(ledger: Ledger) -> None:
    ledger.ingest([make_event(at=NOW - timedelta(days=1), cost="2")])
    limits = {"team-a/monthly": Limit("team-a/monthly", "team-a", 10 * 10**9, "Monthly")}
    report = build_report(ledger, parse_report_period("last-week", NOW), Scope(), NOW, limits)
    (f,) = report.forecasts
    assert f.spent_nanos == 2 * 10**9
    assert f.forecast_nanos == 2 * 10**9 * 31 * 24 // (2 * 24 + 10)  # December: 31 days, 58 h elapsed


def test_the_renderers_agree_with_the_report(ledger: Ledger) -> None:
    events = spread(12, at=_when(2))
    ledger.ingest(events)
    report = build_report(ledger, parse_report_period("last-week", NOW), Scope(), NOW)
    total = nanos_to_usd(_nanos(events))
    body = json.loads(render(report, "json"))
    assert Decimal(body["total_usd"]) == total and body["period"] == "2026-W48"
    rows = list(csv.DictReader(io.StringIO(render(report, "csv"))))
    assert sum(Decimal(r["cost_usd"]) for r in rows if r["kind"] == "line") == total
    assert [Decimal(r["cost_usd"]) for r in rows if r["kind"] == "total"] == [total]
    text = render(report, "text")
    assert f"Total {format(total, 'f')} USD over 12 requests" in text
    html = render(report, "html")
    assert "<svg" in html and f"{format(total, 'f')} USD" in html
    with pytest.raises(ValueError, match="format"):
        render(report, "pdf")
