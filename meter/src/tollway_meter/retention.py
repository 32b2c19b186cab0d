"""Retention: drop the event detail of old, closed months; the roll-ups (and invoices) outlive it.

A month's detail goes only when the month is older than the kept window AND every row in it is
booked in a closed period older than that window (a late event stored under its own month but
booked as an adjustment into a period still kept holds the month back). PostgreSQL drops the
month's partition (`DROP TABLE`, never a mass DELETE); the `event_ids` gate keeps its ids, so a
replay still counts nothing. SQLite (one local file, no partitions) moves the rows' ids to
`retired_events` and then deletes the rows, which its freeze allows only for retired ids.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from tollway_meter.ledger import Ledger
from tollway_meter.rows import next_period, parse_period, period_of, period_start


@dataclass(frozen=True)
class Retained:
    period: str  # the month of the events' own time
    dropped: bool
    reason: str


def first_kept(now: datetime, keep_months: int) -> str:
    """The oldest month kept: the current month and `keep_months` before it."""
    if keep_months < 0:
        raise ValueError(f"keep-months: must be 0 or more, got {keep_months}")
    year, month = parse_period(period_of(now))
    index = year * 12 + (month - 1) - keep_months
    return f"{index // 12:04d}-{index % 12 + 1:02d}"


def retain(ledger: Ledger, now: datetime, keep_months: int) -> list[Retained]:
    cutoff = first_kept(now, keep_months)
    if ledger.dialect == "postgresql":
        return _drop_partitions(ledger, cutoff)
    return _delete_sqlite(ledger, cutoff)


def _droppable(booked: set[str], closed: frozenset[str], cutoff: str) -> str:
    """Why the month must stay ("" when it may go)."""
    held = sorted(p for p in booked if p not in closed or p >= cutoff)
    return f"holds events booked in {', '.join(held)} (open or kept)" if held else ""


def _drop_partitions(ledger: Ledger, cutoff: str) -> list[Retained]:
    with ledger.transaction(readonly=True) as cur:
        cur.execute(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = 'usage_events'::regclass ORDER BY 1"
        )
        names = [str(row[0]) for row in cur.fetchall()]
    out = []
    for name in names:
        period = name.removeprefix("usage_events_").replace("_", "-")
        parse_period(period)  # only our own partitions: the name is an identifier we then interpolate
        if period >= cutoff:
            continue
        with ledger.transaction() as cur:
            # The period lock a close takes: no period closes (or batch writes) while this decides.
            ledger.lock_exclusive(cur)
            closed = ledger.closed_in(cur)
            cur.execute(f"SELECT DISTINCT booked_period FROM {name}")
            reason = _droppable({str(r[0]) for r in cur.fetchall()}, closed, cutoff)
            if not reason:
                # The month's content goes with its detail (SQLite's foreign key cascades the same).
                start, end = period_start(period), period_start(next_period(period))
                cur.execute(
                    "DELETE FROM captured_content WHERE event_time >= %s AND event_time < %s", (start, end)
                )
                cur.execute(f"DROP TABLE {name}")
        out.append(Retained(period, not reason, reason or f"dropped partition {name}"))
    return out


def _delete_sqlite(ledger: Ledger, cutoff: str) -> list[Retained]:
    start = ledger.time(period_start(cutoff))
    out = []
    with ledger.transaction() as cur:
        closed = ledger.closed_in(cur)
        cur.execute(
            "SELECT substr(event_time, 1, 7), booked_period FROM usage_events WHERE event_time < ? "
            "GROUP BY 1, 2",
            (start,),
        )
        months: dict[str, set[str]] = {}
        for month, booked in cur.fetchall():
            months.setdefault(str(month), set()).add(str(booked))
        for period, booked in sorted(months.items()):
            reason = _droppable(booked, closed, cutoff)
            if not reason:
                window = (ledger.time(period_start(period)), ledger.time(period_start(next_period(period))))
                where = "WHERE event_time >= ? AND event_time < ?"
                cur.execute(
                    f"INSERT INTO retired_events SELECT id, event_time FROM usage_events {where}", window
                )
                cur.execute(f"DELETE FROM usage_events {where}", window)
            out.append(Retained(period, not reason, reason or f"deleted {cur.rowcount} detail rows"))
    return out
