"""A cost report: one period's spend in one scope (namespaces, teams, keys), read from the ledger.

Every amount is integer nano-USD, shown as Decimal. The period is by booking hour, like the roll-ups
and `tollway usage` (an adjustment counts where it was booked). The comparison is with the period
before (`ReportPeriod.previous`); an anomaly is a key or model spending more than twice its baseline,
the average over the BASELINE_PERIODS periods before (a period without spend counts as zero; one with
no spend in any of them has no baseline and is not flagged). Percentiles are nearest-rank.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from tollway_meter.console.filters import TimeRange
from tollway_meter.console.forecast import PERIODS, Forecast, Limit, forecast
from tollway_meter.console.reads import budget_spend
from tollway_meter.ledger import Ledger
from tollway_meter.report_period import ReportPeriod
from tollway_sidecar.contract.periods import period_bounds

TOP = 10
BASELINE_PERIODS = 3
ANOMALY_FACTOR = 2
# Public name → roll-up column, for the top lists and the CSV lines.
TOP_DIMENSIONS = {
    "key": "key_name",
    "model": "model",
    "provider": "provider",
    "route": "route",
    "team": "team",
}
LINE_COLUMNS = ("namespace", "key_name", "team", "route", "model", "provider")


@dataclass(frozen=True)
class Scope:
    """What a report covers; an empty set: no limit on that dimension. A key is `name` (in any
    namespace) or `namespace/name`."""

    namespaces: frozenset[str] = frozenset()
    teams: frozenset[str] = frozenset()
    keys: frozenset[str] = frozenset()

    def sql(self) -> tuple[str, list[object]]:
        clauses, params = ["1 = 1"], list[object]()
        for column, values in (("namespace", self.namespaces), ("team", self.teams)):
            if values:
                clauses.append(f"{column} IN ({', '.join(['%s'] * len(values))})")
                params.extend(sorted(values))
        if self.keys:
            names = sorted(k for k in self.keys if "/" not in k)
            qualified = sorted(k for k in self.keys if "/" in k)
            either = [f"key_name IN ({', '.join(['%s'] * len(names))})"] if names else []
            params.extend(names)
            for key in qualified:
                either.append("(namespace = %s AND key_name = %s)")
                params.extend(key.split("/", 1))
            clauses.append(f"({' OR '.join(either)})")
        return " AND ".join(clauses), params


@dataclass(frozen=True)
class Spend:
    name: str
    requests: int
    cost_nanos: int


@dataclass(frozen=True)
class Line:
    keys: dict[str, str]
    requests: int
    cost_nanos: int
    input_tokens: int
    output_tokens: int


@dataclass(frozen=True)
class Request:
    id: str
    time: str
    namespace: str
    key_name: str
    model: str
    provider: str
    cost_nanos: int


@dataclass(frozen=True)
class ProviderErrors:
    provider: str
    requests: int
    errors: int
    fallbacks: int


@dataclass(frozen=True)
class Anomaly:
    dimension: str  # "key" or "model"
    name: str
    cost_nanos: int
    baseline_nanos: int  # the average of the previous periods, rounded down


@dataclass(frozen=True)
class CostReport:
    period: ReportPeriod
    scope: Scope
    requests: int
    cost_nanos: int
    previous_cost_nanos: int
    input_tokens: int
    output_tokens: int
    top: dict[str, list[Spend]]
    lines: list[Line]
    expensive: list[Request]
    cache_hits: int
    cache_saved_nanos: int
    providers: list[ProviderErrors]
    p95_latency_ms: int | None
    p95_ttft_ms: int | None
    anomalies: list[Anomaly]
    unpriced: int
    forecasts: list[Forecast] = field(default_factory=list)
    daily: list[tuple[str, int]] = field(default_factory=list)  # (YYYY-MM-DD, nanos) for the chart

    @property
    def change_nanos(self) -> int:
        return self.cost_nanos - self.previous_cost_nanos


def _json(ledger: Ledger, name: str) -> str:
    if ledger.dialect == "postgresql":
        return f"(event->'data'->>'{name}')"
    return f"json_extract(event, '$.data.{name}')"


class _Reader:
    def __init__(self, ledger: Ledger, cur: Any, scope: Scope) -> None:
        self.ledger, self.cur = ledger, cur
        self.where, self.params = scope.sql()

    def rows(self, sql: str, window: ReportPeriod, *extra: object) -> list[Any]:
        span = (self.ledger.time(window.since), self.ledger.time(window.until))
        text = sql.replace("{where}", f"hour >= %s AND hour < %s AND {self.where}")
        self.cur.execute(self.ledger.sql(text), (*span, *self.params, *extra))
        return list(self.cur.fetchall())

    def grouped(self, column: str, window: ReportPeriod, limit: int | None) -> list[Spend]:
        sql = (
            f"SELECT {column}, coalesce(sum(requests), 0), coalesce(sum(cost_nanos), 0) FROM usage_hourly "
            f"WHERE {{where}} GROUP BY {column} ORDER BY sum(cost_nanos) DESC, {column}"
        )
        found = self.rows(sql + (" LIMIT %s" if limit else ""), window, *([limit] if limit else []))
        return [Spend(str(r[0]), int(r[1]), int(r[2])) for r in found]

    def percentile(self, expression: str, window: ReportPeriod, percent: int = 95) -> int | None:
        """Nearest rank: the smallest value with at least `percent`% of the values at or below it."""
        condition = f"{expression} IS NOT NULL AND {{where}}"
        count = int(self.rows(f"SELECT count(*) FROM usage_events WHERE {condition}", window)[0][0])
        if count == 0:
            return None
        offset = -(-count * percent // 100) - 1  # ceil(n * percent / 100) - 1, in integers
        found = self.rows(
            f"SELECT {expression} FROM usage_events WHERE {condition} "
            f"ORDER BY {expression} LIMIT 1 OFFSET %s",
            window,
            offset,
        )
        return int(found[0][0])


def build_report(
    ledger: Ledger,
    period: ReportPeriod,
    scope: Scope,
    now: datetime,
    limits: Mapping[str, Limit] | None = None,
) -> CostReport:
    """The report, read in one snapshot (its totals and its lines agree to the nano-dollar)."""
    with ledger.transaction(readonly=True) as cur:
        reader = _Reader(ledger, cur, scope)
        measures = "coalesce(sum(requests), 0), coalesce(sum(cost_nanos), 0), "
        measures += "coalesce(sum(input_tokens), 0), coalesce(sum(output_tokens), 0)"
        total = reader.rows(f"SELECT {measures} FROM usage_hourly WHERE {{where}}", period)[0]
        previous = reader.rows(f"SELECT {measures} FROM usage_hourly WHERE {{where}}", period.previous())[0]
        top = {name: reader.grouped(column, period, TOP) for name, column in TOP_DIMENSIONS.items()}
        group = ", ".join(LINE_COLUMNS)
        lines = [
            Line(dict(zip(LINE_COLUMNS, map(str, r[:6]), strict=True)), *(int(v) for v in r[6:]))
            for r in reader.rows(
                f"SELECT {group}, {measures} FROM usage_hourly WHERE {{where}} GROUP BY {group} "
                f"ORDER BY sum(cost_nanos) DESC, {group}",
                period,
            )
        ]
        if sum(line.cost_nanos for line in lines) != int(total[1]):
            raise RuntimeError(f"report {period.label}: lines do not sum to the total")
        expensive = [
            Request(str(r[0]), str(r[1]), r[2], r[3], r[4], r[5], int(r[6]))
            for r in reader.rows(
                "SELECT id, event_time, namespace, key_name, model, provider, cost_nanos FROM usage_events "
                "WHERE {where} ORDER BY cost_nanos DESC, id LIMIT %s",
                period,
                TOP,
            )
        ]
        # The roll-ups' sums, the ones the console's overview shows: the two cannot disagree.
        cache = reader.rows(
            "SELECT coalesce(sum(cache_hits), 0), coalesce(sum(saved_nanos), 0) FROM usage_hourly "
            "WHERE {where}",
            period,
        )[0]
        attempts = (
            "jsonb_array_length(event->'data'->'attempts')"
            if ledger.dialect == "postgresql"
            else "json_array_length(event, '$.data.attempts')"
        )
        providers = [
            ProviderErrors(str(r[0]), int(r[1]), int(r[2]), int(r[3]))
            for r in reader.rows(
                "SELECT provider, count(*), sum(CASE WHEN outcome = 'error' THEN 1 ELSE 0 END), "
                f"sum(CASE WHEN {attempts} > 1 THEN 1 ELSE 0 END) FROM usage_events WHERE {{where}} "
                "GROUP BY provider ORDER BY count(*) DESC, provider",
                period,
            )
        ]
        ttft = f"CAST({_json(ledger, 'ttft_ms')} AS bigint)"
        # A cache hit calls no provider, so it has no price to lack.
        unpriced = reader.rows(
            "SELECT count(*) FROM usage_events WHERE outcome = 'ok' "
            f"AND coalesce({_json(ledger, 'price_source')}, '') = '' "
            f"AND coalesce({_json(ledger, 'cache')}, '') NOT IN ('HIT', 'SEMANTIC_HIT') AND {{where}}",
            period,
        )[0][0]
        anomalies = _anomalies(reader, period)
        day = (
            "to_char(hour AT TIME ZONE 'UTC', 'YYYY-MM-DD')"
            if ledger.dialect == "postgresql"
            else "substr(hour, 1, 10)"
        )
        daily = [
            (str(r[0]), int(r[1]))
            for r in reader.rows(
                f"SELECT {day}, coalesce(sum(cost_nanos), 0) FROM usage_hourly WHERE {{where}} "
                f"GROUP BY {day} ORDER BY {day}",
                period,
            )
        ]
        p95_latency = reader.percentile("latency_ms", period)
        p95_ttft = reader.percentile(ttft, period)
    return CostReport(
        period=period,
        scope=scope,
        requests=int(total[0]),
        cost_nanos=int(total[1]),
        previous_cost_nanos=int(previous[1]),
        input_tokens=int(total[2]),
        output_tokens=int(total[3]),
        top=top,
        lines=lines,
        expensive=expensive,
        cache_hits=int(cache[0]),
        cache_saved_nanos=int(cache[1]),
        providers=providers,
        p95_latency_ms=p95_latency,
        p95_ttft_ms=p95_ttft,
        anomalies=anomalies,
        unpriced=int(unpriced),
        forecasts=_forecasts(ledger, scope, limits or {}, now),
        daily=daily,
    )


def _anomalies(reader: _Reader, period: ReportPeriod) -> list[Anomaly]:
    found: list[Anomaly] = []
    earlier = [period.previous()]
    while len(earlier) < BASELINE_PERIODS:
        earlier.append(earlier[-1].previous())
    for dimension, column in (("key", "key_name"), ("model", "model")):
        before: dict[str, int] = {}
        for window in earlier:
            for spend in reader.grouped(column, window, None):
                before[spend.name] = before.get(spend.name, 0) + spend.cost_nanos
        for spend in reader.grouped(column, period, None):
            history = before.get(spend.name, 0)
            # spend > FACTOR * history / N, compared in integers.
            if history > 0 and spend.cost_nanos * BASELINE_PERIODS > ANOMALY_FACTOR * history:
                found.append(Anomaly(dimension, spend.name, spend.cost_nanos, history // BASELINE_PERIODS))
    return found


def _forecasts(ledger: Ledger, scope: Scope, limits: Mapping[str, Limit], now: datetime) -> list[Forecast]:
    """Each budget of the scope's namespaces against its current period (as the console's overview)."""
    chosen = [
        limit for limit in limits.values() if not scope.namespaces or limit.namespace in scope.namespaces
    ]
    spent: dict[str, dict[str, int]] = {}
    for kind in PERIODS:
        if any(limit.period == kind for limit in chosen):
            start, _end = period_bounds(kind, now)
            # A budget's whole spend, not the report's teams or keys: its limit applies to all of it.
            rows = budget_spend(ledger, TimeRange(start, now), scope.namespaces or None)
            spent[kind] = {row.budget: row.cost_nanos for row in rows}
    return [
        forecast(limit, spent[limit.period].get(limit.id, 0), now)
        for limit in sorted(chosen, key=lambda limit: limit.id)
    ]
