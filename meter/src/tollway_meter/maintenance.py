"""The meter's housekeeping beside the consumer: lag, period state, automatic close and retention.

Its own ledger connection (the consumer's is busy with batches) and a clock that tests drive.
Everything here is safe with several replicas at once: a close that another replica made first is
`PeriodClosedError`, taken as done; retention decides and drops under the period lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from tollway_meter import lag
from tollway_meter.ledger import Ledger, LedgerUnavailableError, PeriodClosedError
from tollway_meter.retention import Retained, retain
from tollway_meter.rows import next_period, period_start
from tollway_sidecar.contract.usage_event import USAGE_STREAM

log = logging.getLogger("tollway.meter")


def _utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class MaintenanceOptions:
    stream: str = USAGE_STREAM
    group: str = "tollway-meter"
    close_after: timedelta | None = None  # None: periods are closed only by `tollway meter close`
    retain_months: int | None = None  # None: event detail is kept for ever
    lag_every_s: float = 5.0  # also the period state
    ledger_every_s: float = 60.0  # close and retention
    # Unacknowledged entries a close looks through; a longer backlog is "not caught up".
    scan_limit: int = 10_000


@dataclass
class MaintenanceState:
    """What the metrics read (written by the one maintenance task)."""

    lag: lag.Lag = field(default_factory=lambda: lag.Lag(0, 0, None))
    periods: dict[str, bool] = field(default_factory=dict)  # period → closed
    auto_closed: int = 0
    months_retired: int = 0
    errors: int = 0


class Maintenance:
    def __init__(
        self,
        client: aioredis.Redis,
        ledger: Ledger,
        options: MaintenanceOptions | None = None,
        now: Callable[[], datetime] = _utc_now,
    ) -> None:
        self.redis = client
        self.ledger = ledger
        self.options = options or MaintenanceOptions()
        self.now = now
        self.state = MaintenanceState()

    async def refresh_lag(self) -> lag.Lag:
        self.state.lag = await lag.measure(self.redis, self.options.stream, self.options.group)
        return self.state.lag

    async def refresh_periods(self) -> dict[str, bool]:
        closed = await asyncio.to_thread(self.ledger.closed_periods)
        booked = await asyncio.to_thread(self.ledger.booked_periods)
        self.state.periods = {p: p in closed for p in sorted(booked | closed)}
        return self.state.periods

    async def close_due(self) -> list[str]:
        """Close each open month that ended `close_after` ago, oldest first, once no entry still
        waiting in the stream carries an event from it (or earlier). Returns the months closed."""
        after = self.options.close_after
        if after is None:
            return []
        now = self.now()
        closed = await asyncio.to_thread(self.ledger.closed_periods)
        booked = await asyncio.to_thread(self.ledger.booked_periods)
        due = sorted(p for p in booked - closed if period_start(next_period(p)) + after <= now)
        done: list[str] = []
        for period in due:
            end = period_start(next_period(period))
            o = self.options
            if await lag.holds_events_before(self.redis, o.stream, o.group, end, o.scan_limit):
                log.info("meter: not closing %s yet: the stream still holds its events", period)
                break  # a later month waits for this one: its check would see the same entries
            try:
                await asyncio.to_thread(self.ledger.close_period, period)
            except PeriodClosedError:
                continue  # another replica closed it first
            log.info("meter: closed period %s (ended %s ago)", period, now - end)
            self.state.auto_closed += 1
            done.append(period)
        return done

    async def retain(self) -> list[Retained]:
        months = self.options.retain_months
        if months is None:
            return []
        retained = await asyncio.to_thread(retain, self.ledger, self.now(), months)
        for item in retained:
            if item.dropped:
                self.state.months_retired += 1
                log.info("meter: retention: %s: %s", item.period, item.reason)
        return retained

    async def run(self, stop: asyncio.Event) -> None:
        """Lag and period state every `lag_every_s`; close and retention every `ledger_every_s`."""
        next_ledger = 0.0
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            try:
                await self.refresh_lag()
                if loop.time() >= next_ledger:
                    await self.close_due()
                    await self.retain()
                    next_ledger = loop.time() + self.options.ledger_every_s
                await self.refresh_periods()
            except (LedgerUnavailableError, RedisError, OSError) as exc:
                self.state.errors += 1
                log.warning("meter maintenance: %s; retrying", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self.options.lag_every_s)
