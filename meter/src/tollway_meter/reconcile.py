"""Reconcile: the ledger's spend for a month against the settled spend in the Redis counters.

Per VirtualKey (its monthly tally), per budget (its counter, for a per-user budget the total over
users) and per per-user copy: drift = settled - ledger - in stream, where settled is the counter's
`usd` minus `usd_r` (used minus still reserved: the calls in flight have no event yet) and "in
stream" the events still waiting in the usage stream, not yet in the ledger. Zero when healthy.

The ledger side reads the detail rows by the event's own `time` (not the booked period), because a
counter is keyed by the month the call was admitted in and the event's time is that moment.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Literal

import redis.asyncio as aioredis

from tollway_meter.ledger import Ledger
from tollway_meter.rows import next_period, period_of, period_start
from tollway_meter.stream_scan import scan
from tollway_sidecar.contract.counters import CounterReader
from tollway_sidecar.contract.usage_event import USAGE_STREAM, UsageEvent

Kind = Literal["key", "budget", "user"]
Status = Literal["ok", "drift", "no counter", "not compared"]
# (kind, name): name is `namespace/key`, `namespace/budget`, or `namespace/budget` plus the end user
Target = tuple[Kind, str]


@dataclass
class Spend:
    """Nano-USD of billable events per target (keys, budgets, per-user copies)."""

    by: dict[Target, int] = field(default_factory=lambda: defaultdict(int))

    def add(self, namespace: str, key_name: str, budgets: Iterable[str], end_user: str, nanos: int) -> None:
        self.by["key", f"{namespace}/{key_name}"] += nanos
        for budget in budgets:
            self.by["budget", budget] += nanos
            self.by["user", user_target(budget, end_user)] += nanos


def user_target(budget: str, end_user: str) -> str:
    return f"{budget} {end_user or '-'}"


@dataclass(frozen=True)
class Counter:
    """Where a target's counter lives; `key` None when there is nothing to compare against."""

    target: Target
    namespace: str
    key: str | None
    note: str = ""


@dataclass(frozen=True)
class Row:
    target: Target
    ledger: int
    in_stream: int
    settled: int | None
    in_flight: int | None
    status: Status
    note: str = ""

    @property
    def drift(self) -> int:
        return 0 if self.settled is None else self.settled - self.ledger - self.in_stream


async def stream_backlog(client: aioredis.Redis, period: str, stream: str = USAGE_STREAM) -> list[UsageEvent]:
    """The period's events still in the stream (the meter trims only what it acknowledged)."""
    found: list[UsageEvent] = []
    async for chunk in scan(client, stream):
        found += [e for e in chunk if e is not None and period_of(e.time) == period]
    return found


def ledger_spend(ledger: Ledger, period: str, backlog: Sequence[UsageEvent]) -> tuple[Spend, Spend]:
    """(ledger, in stream): the period's spend in the ledger, and the backlog's not yet in it. One
    snapshot, read after the stream, so an event ingested meanwhile counts in exactly one of them."""
    start, end = period_start(period), period_start(next_period(period))
    budgets_sql = (
        "SELECT b.value, end_user, sum(cost_nanos) FROM usage_events, "
        "json_each(json_extract(event, '$.data.budgets')) AS b "
        if ledger.dialect == "sqlite"
        else "SELECT b, end_user, sum(cost_nanos) FROM usage_events, "
        "jsonb_array_elements_text(event -> 'data' -> 'budgets') AS b "
    )
    where = ledger.sql("WHERE event_time >= %s AND event_time < %s ")
    window = (ledger.time(start), ledger.time(end))
    in_ledger, in_stream = Spend(), Spend()
    with ledger.transaction(readonly=True) as cur:
        cur.execute(
            "SELECT namespace, key_name, sum(cost_nanos) FROM usage_events " + where + "GROUP BY 1, 2",
            window,
        )
        for namespace, key_name, nanos in cur.fetchall():
            in_ledger.by["key", f"{namespace}/{key_name}"] += int(nanos)
        cur.execute(budgets_sql + where + "GROUP BY 1, 2", window)
        for budget, end_user, nanos in cur.fetchall():
            in_ledger.by["budget", str(budget)] += int(nanos)
            in_ledger.by["user", user_target(str(budget), str(end_user))] += int(nanos)
        known = ledger.known_ids(cur, [str(event.id) for event in backlog])
    seen: set[str] = set()
    for event in backlog:
        event_id = str(event.id)
        if event_id in known or event_id in seen:
            continue
        seen.add(event_id)
        data = event.data
        nanos = data.cost_nanos if data.billable else 0
        in_stream.add(data.namespace, data.key_name, data.budgets, data.end_user, nanos)
    return in_ledger, in_stream


async def compare(
    counters: Sequence[Counter], reader: CounterReader, in_ledger: Spend, in_stream: Spend, now: datetime
) -> list[Row]:
    by_namespace: dict[str, list[str]] = defaultdict(list)
    for counter in counters:
        if counter.key is not None:
            by_namespace[counter.namespace].append(counter.key)
    read: dict[str, dict[str, int]] = {}
    now_ms = int(now.timestamp() * 1000)
    for namespace, keys in by_namespace.items():
        read.update(await reader.read(namespace, sorted(set(keys)), now_ms))
    rows = []
    for counter in sorted(counters, key=lambda c: c.target):
        ledger, stream = in_ledger.by.get(counter.target, 0), in_stream.by.get(counter.target, 0)
        fields = read.get(counter.key, {}) if counter.key is not None else {}
        if counter.key is None:
            rows.append(Row(counter.target, ledger, stream, None, None, "not compared", counter.note))
        elif not fields:
            # Expired with its period (or never written): nothing to compare, which is not drift.
            rows.append(Row(counter.target, ledger, stream, None, None, "no counter", counter.note))
        else:
            used, reserved = fields.get("usd", 0), fields.get("usd_r", 0)
            row = Row(counter.target, ledger, stream, used - reserved, reserved, "ok", counter.note)
            rows.append(row if row.drift == 0 else replace(row, status="drift"))
    return rows
