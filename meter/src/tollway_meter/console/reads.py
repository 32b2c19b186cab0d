"""The console's reads of the detail rows: the filtered request list (keyset pages), errors and
fallbacks per provider, spend per budget name, sessions, and one session's calls.

Sums are integer nano-USD of billable calls (the ledger's `cost_nanos`). Each reader takes the
namespaces its user may see (`None`: all) and reads no row of any other. Each reader takes the
dialect's SQL for the parts that read the event JSON (properties, TTFT, session path, attempts).
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from tollway_meter.console.access import in_clause
from tollway_meter.console.filters import Cursor, RequestFilter, SessionCursor, SessionFilter, TimeRange
from tollway_meter.ledger import Ledger
from tollway_meter.queries import Booked
from tollway_sidecar.contract.usage_event import UsageEvent

MAX_SESSION_CALLS = 5000
MAX_PROPERTY_NAMES = 50


def _json_text(ledger: Ledger, *path: str) -> str:
    """SQL reading a text field of the event JSON at data.<path>."""
    if ledger.dialect == "postgresql":
        return "event->'data'" + "".join(f"->'{p}'" for p in path[:-1]) + f"->>'{path[-1]}'"
    return "json_extract(event, '$.data." + ".".join(path) + "')"


def as_time(value: object) -> datetime:
    """A row's time: PostgreSQL gives a datetime, SQLite the fixed-width UTC text it stored."""
    if isinstance(value, datetime):
        return value.astimezone(UTC)
    return datetime.fromisoformat(str(value)).astimezone(UTC)


Allowed = frozenset[str] | None


def _range_sql(ledger: Ledger, window: TimeRange, allowed: Allowed) -> tuple[str, list[object]]:
    scope, params = in_clause("namespace", allowed)
    return (
        f"event_time >= %s AND event_time < %s AND {scope}",
        [ledger.time(window.since), ledger.time(window.until), *params],
    )


def namespaces(ledger: Ledger) -> list[str]:
    """Every namespace with calls in the ledger's roll-ups: the ones access is decided for."""
    with ledger.transaction(readonly=True) as cur:
        cur.execute(ledger.sql("SELECT DISTINCT namespace FROM usage_hourly ORDER BY namespace"), ())
        return [str(r[0]) for r in cur.fetchall()]


def get_request(ledger: Ledger, event_id: str, allowed: Allowed) -> Booked | None:
    """One request by id, only in an allowed namespace: one query either way, so a row the user
    may not see answers exactly like a missing one."""
    try:
        canonical = str(uuid.UUID(event_id))
    except ValueError:
        raise ValueError(f"id: not a UUID: {event_id!r}") from None
    scope, params = in_clause("namespace", allowed)
    sql = f"SELECT event, booked_period, adjustment FROM usage_events WHERE id = %s AND {scope}"
    with ledger.transaction(readonly=True) as cur:
        cur.execute(ledger.sql(sql), (canonical, *params))
        row: Any = cur.fetchone()
    if row is None:
        return None
    body = row[0] if isinstance(row[0], dict) else json.loads(row[0])
    return Booked(UsageEvent.from_dict(body), str(row[1]), bool(row[2]))


@dataclass(frozen=True)
class Captured:
    """A request's captured content (already redacted by the gateway) and when it expires."""

    prompt: str
    completion: str
    expires_at: datetime


def captured_content(ledger: Ledger, event_id: str, namespace: str, now: datetime) -> Captured | None:
    """The captured content of a request in `namespace`, None when there is none or it has expired
    (the expiry job deletes it within a minute; this hides it in the meantime)."""
    sql = (
        "SELECT prompt, completion, expires_at FROM captured_content "
        "WHERE event_id = %s AND namespace = %s AND expires_at > %s"
    )
    with ledger.transaction(readonly=True) as cur:
        cur.execute(ledger.sql(sql), (ledger.uuid(event_id), namespace, ledger.time(now)))
        row: Any = cur.fetchone()
    return None if row is None else Captured(str(row[0]), str(row[1]), as_time(row[2]))


@dataclass(frozen=True)
class RequestRow:
    id: str
    time: datetime
    namespace: str
    key_name: str
    team: str
    user: str
    model: str
    provider: str
    status: int
    outcome: str
    input_tokens: int
    output_tokens: int
    cost_nanos: int
    latency_ms: int
    ttft_ms: int | None
    session_id: str


@dataclass(frozen=True)
class RequestPage:
    rows: list[RequestRow]
    next: Cursor | None  # None: this is the last page


def list_requests(ledger: Ledger, chosen: RequestFilter, allowed: Allowed = None) -> RequestPage:
    """One page, newest first, ordered by (event_time, id): a cursor never skips or repeats a row."""
    where, params = _range_sql(ledger, chosen.range, allowed)
    clauses = [where]
    for column, value in chosen.columns().items():
        clauses.append(f"{column} = %s")
        params.append(value)
    if chosen.prop_name:
        if ledger.dialect == "postgresql":
            # Containment uses the GIN index on the properties object.
            clauses.append("event->'data'->'properties' @> %s::jsonb")
            params.append(json.dumps({chosen.prop_name: chosen.prop_value}))
        else:
            clauses.append("json_extract(event, %s) = %s")
            params.extend([f'$.data.properties."{chosen.prop_name}"', chosen.prop_value])
    if chosen.after is not None:
        cast = "::uuid" if ledger.dialect == "postgresql" else ""
        clauses.append(f"(event_time, id) < (%s, %s{cast})")
        params.extend([ledger.time(chosen.after.time), chosen.after.id])
    sql = (
        "SELECT id, event_time, namespace, key_name, team, user_id, model, provider, status, outcome, "
        f"input_tokens, output_tokens, cost_nanos, latency_ms, {_json_text(ledger, 'ttft_ms')}, session_id "
        f"FROM usage_events WHERE {' AND '.join(clauses)} ORDER BY event_time DESC, id DESC LIMIT %s"
    )
    params.append(chosen.limit + 1)  # one more than shown: whether a next page exists
    with ledger.transaction(readonly=True) as cur:
        cur.execute(ledger.sql(sql), tuple(params))
        found = cur.fetchall()
    rows = [_request_row(r) for r in found[: chosen.limit]]
    more = len(found) > chosen.limit
    return RequestPage(rows, Cursor(rows[-1].time, rows[-1].id) if more and rows else None)


def _request_row(r: Any) -> RequestRow:
    return RequestRow(
        id=str(r[0]),
        time=as_time(r[1]),
        namespace=r[2],
        key_name=r[3],
        team=r[4],
        user=r[5],
        model=r[6],
        provider=r[7],
        status=int(r[8]),
        outcome=r[9],
        input_tokens=int(r[10]),
        output_tokens=int(r[11]),
        cost_nanos=int(r[12]),
        latency_ms=int(r[13]),
        ttft_ms=None if r[14] is None else int(r[14]),
        session_id=r[15],
    )


@dataclass(frozen=True)
class ProviderHealth:
    provider: str
    requests: int
    errors: int  # outcome "error": the call failed after every attempt
    fallbacks: int  # calls answered after more than one attempt


def provider_health(ledger: Ledger, window: TimeRange, allowed: Allowed = None) -> list[ProviderHealth]:
    """Per final provider. Reads each event's attempts: a scan of the range, not an index."""
    where, params = _range_sql(ledger, window, allowed)
    attempts = (
        "jsonb_array_length(event->'data'->'attempts')"
        if ledger.dialect == "postgresql"
        else "json_array_length(event, '$.data.attempts')"
    )
    sql = (
        "SELECT provider, count(*), sum(CASE WHEN outcome = 'error' THEN 1 ELSE 0 END), "
        f"sum(CASE WHEN {attempts} > 1 THEN 1 ELSE 0 END) FROM usage_events WHERE {where} "
        "GROUP BY provider ORDER BY count(*) DESC, provider"
    )
    with ledger.transaction(readonly=True) as cur:
        cur.execute(ledger.sql(sql), tuple(params))
        return [ProviderHealth(str(r[0]), int(r[1]), int(r[2]), int(r[3])) for r in cur.fetchall()]


@dataclass(frozen=True)
class BudgetSpend:
    budget: str
    requests: int
    cost_nanos: int


def budget_spend(ledger: Ledger, window: TimeRange, allowed: Allowed = None) -> list[BudgetSpend]:
    """Spend charged to each budget an event names. A call charged to two budgets counts in both."""
    where, params = _range_sql(ledger, window, allowed)
    if ledger.dialect == "postgresql":
        source = (
            "usage_events CROSS JOIN LATERAL jsonb_array_elements_text(event->'data'->'budgets') AS b(name)"
        )
        name = "b.name"
    else:
        source = "usage_events, json_each(usage_events.event, '$.data.budgets') AS b"
        name = "b.value"
    sql = (
        f"SELECT {name}, count(*), coalesce(sum(cost_nanos), 0) FROM {source} WHERE {where} "
        f"GROUP BY {name} ORDER BY sum(cost_nanos) DESC, {name}"
    )
    with ledger.transaction(readonly=True) as cur:
        cur.execute(ledger.sql(sql), tuple(params))
        return [BudgetSpend(str(r[0]), int(r[1]), int(r[2])) for r in cur.fetchall()]


@dataclass(frozen=True)
class SessionTotal:
    session_id: str
    calls: int
    cost_nanos: int
    first: datetime
    last: datetime


@dataclass(frozen=True)
class SessionPage:
    rows: list[SessionTotal]
    next: SessionCursor | None  # None: this is the last page


def sessions(ledger: Ledger, chosen: SessionFilter, allowed: Allowed = None) -> SessionPage:
    """One page of the range's sessions, most recently active first, ordered by (last call's time,
    session id): a cursor never skips or repeats a session. Each page groups the range's calls."""
    where, params = _range_sql(ledger, chosen.range, allowed)
    having = ""
    if chosen.after is not None:
        last = ledger.time(chosen.after.last)
        having = " HAVING max(event_time) < %s OR (max(event_time) = %s AND session_id < %s)"
        params.extend([last, last, chosen.after.session_id])
    sql = (
        "SELECT session_id, count(*), coalesce(sum(cost_nanos), 0), min(event_time), max(event_time) "
        f"FROM usage_events WHERE session_id <> '' AND {where} "
        f"GROUP BY session_id{having} ORDER BY max(event_time) DESC, session_id DESC LIMIT %s"
    )
    params.append(chosen.limit + 1)  # one more than shown: whether a next page exists
    with ledger.transaction(readonly=True) as cur:
        cur.execute(ledger.sql(sql), tuple(params))
        found = cur.fetchall()
    rows = [
        SessionTotal(str(r[0]), int(r[1]), int(r[2]), as_time(r[3]), as_time(r[4]))
        for r in found[: chosen.limit]
    ]
    more = len(found) > chosen.limit
    return SessionPage(rows, SessionCursor(rows[-1].last, rows[-1].session_id) if more and rows else None)


@dataclass(frozen=True)
class SessionCall:
    id: str
    time: datetime
    path: str
    name: str
    model: str
    status: int
    cost_nanos: int
    latency_ms: int


def session_calls(ledger: Ledger, session_id: str, allowed: Allowed = None) -> list[SessionCall]:
    """Every call of one session in the allowed namespaces (at most MAX_SESSION_CALLS), in time order."""
    scope, scope_params = in_clause("namespace", allowed)
    sql = (
        f"SELECT id, event_time, {_json_text(ledger, 'session_path')}, "
        f"{_json_text(ledger, 'session_name')}, model, status, cost_nanos, latency_ms "
        f"FROM usage_events WHERE session_id = %s AND {scope} ORDER BY event_time, id LIMIT %s"
    )
    with ledger.transaction(readonly=True) as cur:
        cur.execute(ledger.sql(sql), (session_id, *scope_params, MAX_SESSION_CALLS))
        return [
            SessionCall(
                str(r[0]), as_time(r[1]), r[2] or "", r[3] or "", r[4], int(r[5]), int(r[6]), int(r[7])
            )
            for r in cur.fetchall()
        ]


def property_names(ledger: Ledger, window: TimeRange, allowed: Allowed = None) -> list[str]:
    """The property names the range's events carry (for the properties page's picker)."""
    where, params = _range_sql(ledger, window, allowed)
    if ledger.dialect == "postgresql":
        sql = (
            "SELECT DISTINCT jsonb_object_keys(event->'data'->'properties') AS name "
            f"FROM usage_events WHERE {where} ORDER BY name LIMIT %s"
        )
    else:
        sql = (
            "SELECT DISTINCT p.key FROM usage_events, "
            "json_each(usage_events.event, '$.data.properties') AS p "
            f"WHERE {where} ORDER BY p.key LIMIT %s"
        )
    with ledger.transaction(readonly=True) as cur:
        cur.execute(ledger.sql(sql), (*params, MAX_PROPERTY_NAMES))
        return [str(r[0]) for r in cur.fetchall()]
