"""Pure mapping from usage events to ledger rows: the detail row and the hourly roll-up deltas.

No database here, so the arithmetic that must be exact (nano-USD sums, period booking) is tested
without one.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from tollway_sidecar.contract.usage_event import UsageEvent

# The roll-up's dimensions, in its primary key's order. Grouping by anything else (session,
# property:<name>, end user) reads the detail rows instead.
ROLLUP_DIMENSIONS = ("namespace", "key_name", "team", "user_id", "route", "model", "backend", "provider")
ROLLUP_MEASURES = (
    "requests",
    "billable_requests",
    "cost_nanos",
    "input_tokens",
    "output_tokens",
    "cached_read_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
    "cache_hits",  # calls the response cache answered (HIT, SEMANTIC_HIT)
    "saved_nanos",  # what those hits saved: the exact nano-USD of the calls that filled the entries
)


def period_of(moment: datetime) -> str:
    """The calendar month (UTC) a moment falls in, as 'YYYY-MM'."""
    utc = moment.astimezone(UTC)
    return f"{utc.year:04d}-{utc.month:02d}"


def period_start(period: str) -> datetime:
    year, month = parse_period(period)
    return datetime(year, month, 1, tzinfo=UTC)


def next_period(period: str) -> str:
    year, month = parse_period(period)
    return f"{year + month // 12:04d}-{month % 12 + 1:02d}"


def parse_period(period: str) -> tuple[int, int]:
    """'YYYY-MM' → (year, month); a clear error otherwise."""
    try:
        year_text, month_text = period.split("-")
        year, month = int(year_text), int(month_text)
    except ValueError:
        raise ValueError(f"period: expected YYYY-MM, got {period!r}") from None
    if len(year_text) != 4 or len(month_text) != 2 or not 1 <= month <= 12:
        raise ValueError(f"period: expected YYYY-MM, got {period!r}")
    return year, month


def booking_period(event_period: str, closed: frozenset[str]) -> str:
    """The first open period at or after the event's own: where a late event is booked."""
    period = event_period
    while period in closed:
        period = next_period(period)
    return period


@dataclass(frozen=True)
class EventRow:
    """One usage_events row: the columns the queries filter and group on, and the event's JSON."""

    id: str
    event_time: datetime
    booked_period: str
    adjustment: bool
    hour: datetime
    dims: tuple[str, ...]
    measures: tuple[int, ...]
    session_id: str
    end_user: str
    status: int
    outcome: str
    latency_ms: int
    request_id: str
    trace_id: str
    event_json: str


def event_row(event: UsageEvent, closed: frozenset[str]) -> EventRow:
    own = period_of(event.time)
    booked = booking_period(own, closed)
    adjustment = booked != own
    # An adjustment is booked at the first hour of the open period; its own time stays in event_time.
    hour = (
        period_start(booked)
        if adjustment
        else event.time.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    )
    data = event.data
    tokens = data.tokens
    return EventRow(
        id=str(event.id),
        event_time=event.time.astimezone(UTC),
        booked_period=booked,
        adjustment=adjustment,
        hour=hour,
        dims=(
            data.namespace,
            data.key_name,
            data.team,
            data.user,
            data.route,
            data.model,
            data.backend,
            data.provider,
        ),
        measures=(
            1,
            1 if data.billable else 0,
            data.cost_nanos if data.billable else 0,
            tokens.input,
            tokens.output,
            tokens.cached_read,
            tokens.cache_write,
            tokens.reasoning,
            1 if data.is_cache_hit else 0,
            data.saved_nanos,
        ),
        session_id=data.session_id,
        end_user=data.end_user,
        status=data.status,
        outcome=data.outcome,
        latency_ms=data.latency_ms,
        request_id=data.request_id,
        trace_id=data.trace_id,
        event_json=event.to_json(content=False),  # captured content has its own table and retention
    )


@dataclass(frozen=True)
class ContentRow:
    """One captured_content row: a capturing route's prompt and completion, and when they expire."""

    event_id: str
    namespace: str
    event_time: datetime
    expires_at: datetime
    prompt: str
    completion: str


def content_row(event: UsageEvent) -> ContentRow | None:
    """The event's content row, or None when its route did not capture. It expires counted from the
    call's time, not the ingest's, so a replay or a late batch keeps it no longer."""
    content = event.data.content
    if content is None:
        return None
    at = event.time.astimezone(UTC)
    return ContentRow(
        event_id=str(event.id),
        namespace=event.data.namespace,
        event_time=at,
        expires_at=at + timedelta(days=content.retention_days),
        prompt=content.prompt,
        completion=content.completion,
    )


@dataclass(frozen=True)
class RollupDelta:
    hour: datetime
    period: str
    adjustment: bool
    dims: tuple[str, ...]
    measures: tuple[int, ...]

    @property
    def key(self) -> tuple[datetime, bool, tuple[str, ...]]:
        return (self.hour, self.adjustment, self.dims)


def rollup_deltas(rows: Iterable[EventRow]) -> list[RollupDelta]:
    """Sum rows per roll-up key, sorted by key so concurrent writers lock rows in one order."""
    sums: dict[tuple[datetime, bool, tuple[str, ...]], tuple[str, list[int]]] = {}
    for row in rows:
        key = (row.hour, row.adjustment, row.dims)
        _, totals = sums.setdefault(key, (row.booked_period, [0] * len(ROLLUP_MEASURES)))
        for i, value in enumerate(row.measures):
            totals[i] += value
    return [
        RollupDelta(hour=key[0], period=period, adjustment=key[1], dims=key[2], measures=tuple(totals))
        for key, (period, totals) in sorted(sums.items())
    ]


def sum_measures(rows: Sequence[tuple[int, ...]]) -> tuple[int, ...]:
    return tuple(sum(column) for column in zip(*rows, strict=True)) if rows else (0,) * len(ROLLUP_MEASURES)
