"""Read side of the ledger: spend, requests and tokens grouped by dimensions over a time range,
the most expensive requests, one request by id. Sums are integer nano-USD, shown as Decimal.

Grouping only by roll-up dimensions reads `usage_hourly` (which outlives the detail); grouping by
session, end user or `property:<name>` reads the events themselves.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from tollway_meter.ledger import Ledger
from tollway_meter.rows import ROLLUP_MEASURES
from tollway_sidecar.contract.usage_event import PROPERTY_NAME, UsageEvent, nanos_to_usd

# Public dimension name → the column it reads (roll-up dimensions first).
ROLLUP_COLUMNS = {
    "namespace": "namespace",
    "key": "key_name",
    "team": "team",
    "user": "user_id",
    "route": "route",
    "model": "model",
    "backend": "backend",
    "provider": "provider",
}
DETAIL_COLUMNS = {"session": "session_id", "end_user": "end_user"}
GRANULARITIES = ("hour", "day", "month")
DIMENSIONS = (*ROLLUP_COLUMNS, *DETAIL_COLUMNS, "property:<name>")


@dataclass(frozen=True)
class UsageRow:
    bucket: str | None
    keys: dict[str, str]
    requests: int
    billable_requests: int
    cost_nanos: int
    input_tokens: int
    output_tokens: int
    cached_read_tokens: int
    cache_write_tokens: int
    reasoning_tokens: int
    cache_hits: int
    saved_nanos: int

    @property
    def cost(self) -> Decimal:
        return nanos_to_usd(self.cost_nanos)


def _dimension(ledger: Ledger, name: str) -> tuple[str, tuple[object, ...], bool]:
    """(SQL expression, its parameters, whether it needs the detail table) for a dimension."""
    if name in ROLLUP_COLUMNS:
        return ROLLUP_COLUMNS[name], (), False
    if name in DETAIL_COLUMNS:
        return DETAIL_COLUMNS[name], (), True
    if name.startswith("property:"):
        prop = name.removeprefix("property:")
        if not PROPERTY_NAME.fullmatch(prop):
            raise ValueError(f"by: {name!r} is not a valid property name")
        if ledger.dialect == "postgresql":
            return "coalesce(event->'data'->'properties'->>%s, '')", (prop,), True
        return "coalesce(json_extract(event, %s), '')", (f'$.data.properties."{prop}"',), True
    raise ValueError(f"by: unknown dimension {name!r} (expected one of {', '.join(DIMENSIONS)})")


def _bucket(ledger: Ledger, granularity: str) -> str:
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity: expected one of {', '.join(GRANULARITIES)}, got {granularity!r}")
    if ledger.dialect == "postgresql":
        pattern = {"hour": 'YYYY-MM-DD"T"HH24":00Z"', "day": "YYYY-MM-DD", "month": "YYYY-MM"}[granularity]
        return f"to_char(hour AT TIME ZONE 'UTC', '{pattern}')"
    length = {"hour": 13, "day": 10, "month": 7}[granularity]
    return f"substr(hour, 1, {length})" + (" || ':00Z'" if granularity == "hour" else "")


def usage(
    ledger: Ledger,
    by: Sequence[str],
    since: datetime,
    until: datetime,
    granularity: str | None = None,
    namespaces: Collection[str] | None = None,
) -> list[UsageRow]:
    """Totals per group over [since, until); adjustments count in the period they were booked in.
    `namespaces`, when given, limits the rows read to those namespaces (none: no rows)."""
    expressions: list[str] = []
    params: list[object] = []
    detail = False
    for name in by:
        expression, extra, needs_detail = _dimension(ledger, name)
        expressions.append(expression)
        params.extend(extra)
        detail = detail or needs_detail
    if granularity is not None:
        expressions.insert(0, _bucket(ledger, granularity))
    table = "usage_events" if detail else "usage_hourly"
    select = [f"{e} AS g{i}" for i, e in enumerate(expressions)]
    sums = [f"coalesce(sum({m}), 0)" for m in ROLLUP_MEASURES]
    group = f" GROUP BY {', '.join(f'g{i}' for i in range(len(expressions)))}" if expressions else ""
    order = (
        f" ORDER BY sum(cost_nanos) DESC, {', '.join(f'g{i}' for i in range(len(expressions)))}"
        if expressions
        else ""
    )
    scope, scope_params = "", []
    if namespaces is not None:
        values = sorted(namespaces)
        scope = f" AND namespace IN ({', '.join(['%s'] * len(values))})" if values else " AND 1 = 0"
        scope_params = list(values)
    sql = (
        f"SELECT {', '.join([*select, *sums])} FROM {table} WHERE hour >= %s AND hour < %s{scope}"
        f"{group}{order}"
    )
    with ledger.transaction(readonly=True) as cur:
        cur.execute(ledger.sql(sql), (*params, ledger.time(since), ledger.time(until), *scope_params))
        rows = cur.fetchall()
    result = []
    for row in rows:
        values = list(row)
        bucket = str(values.pop(0)) if granularity is not None else None
        keys = {name: str(values.pop(0)) for name in by}
        result.append(UsageRow(bucket, keys, *(int(v) for v in values)))
    if granularity is not None:
        result.sort(key=lambda r: (r.bucket or "", -r.cost_nanos))
    return result


@dataclass(frozen=True)
class Expensive:
    id: str
    time: datetime | str
    namespace: str
    key_name: str
    team: str
    model: str
    cost_nanos: int


def top_requests(ledger: Ledger, n: int, since: datetime, until: datetime) -> list[Expensive]:
    """The N most expensive requests booked in [since, until)."""
    sql = (
        "SELECT id, event_time, namespace, key_name, team, model, cost_nanos FROM usage_events "
        "WHERE hour >= %s AND hour < %s ORDER BY cost_nanos DESC, id LIMIT %s"
    )
    with ledger.transaction(readonly=True) as cur:
        cur.execute(ledger.sql(sql), (ledger.time(since), ledger.time(until), n))
        return [Expensive(str(r[0]), r[1], r[2], r[3], r[4], r[5], int(r[6])) for r in cur.fetchall()]


@dataclass(frozen=True)
class Booked:
    event: UsageEvent
    booked_period: str
    adjustment: bool


def get_request(ledger: Ledger, event_id: str) -> Booked | None:
    """One request by its event id, as the event was received, with where it was booked."""
    try:
        canonical = str(uuid.UUID(event_id))  # the form both databases store and compare
    except ValueError:
        raise ValueError(f"id: not a UUID: {event_id!r}") from None
    sql = "SELECT event, booked_period, adjustment FROM usage_events WHERE id = %s"
    with ledger.transaction(readonly=True) as cur:
        cur.execute(ledger.sql(sql), (canonical,))
        row: Any = cur.fetchone()
    if row is None:
        return None
    body = row[0] if isinstance(row[0], dict) else json.loads(row[0])
    return Booked(UsageEvent.from_dict(body), str(row[1]), bool(row[2]))
