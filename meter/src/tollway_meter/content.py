"""Captured content's own retention: delete what expired, in bounded batches, on the meter's clock.

Content rows carry their `expires_at` (the call's time plus its route's `retentionDays`). Deleting
them touches nothing else: usage rows and roll-ups stay byte for byte, closed periods included
(captured_content has no freeze trigger). A DELETE of at most `BATCH` rows per transaction rather
than daily partitions: one table for both dialects, short locks, and at a few KB a row a day's
content is small enough that partition management would cost more than it saves.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from tollway_meter.ledger import Ledger, LedgerUnavailableError

log = logging.getLogger("tollway.meter")

BATCH = 1_000
EVERY_S = 60.0

_DELETE = (
    "DELETE FROM captured_content WHERE event_id IN "
    "(SELECT event_id FROM captured_content WHERE expires_at <= %s ORDER BY expires_at LIMIT %s)"
)


def expire(ledger: Ledger, now: datetime, batch: int = BATCH) -> int:
    """Delete every content row expired at `now`, `batch` rows per transaction; how many went."""
    total = 0
    while True:
        with ledger.transaction() as cur:
            cur.execute(ledger.sql(_DELETE), (ledger.time(now), batch))
            deleted = int(cur.rowcount)
        total += deleted
        if deleted < batch:
            return total


@dataclass
class ContentState:
    """What the metrics read (written by the one expiry task)."""

    expired: int = 0
    errors: int = 0


def _utc_now() -> datetime:
    return datetime.now(UTC)


class ContentExpiry:
    """The periodic job; its own ledger connection. Runs in every meter mode (stream, cluster,
    outbox): it needs only the database. Safe with several replicas: a row deleted twice is not."""

    def __init__(
        self, ledger: Ledger, every_s: float = EVERY_S, now: Callable[[], datetime] = _utc_now
    ) -> None:
        self.ledger = ledger
        self.every_s = every_s
        self.now = now
        self.state = ContentState()

    async def expire_once(self) -> int:
        deleted = await asyncio.to_thread(expire, self.ledger, self.now())
        self.state.expired += deleted
        if deleted:
            log.info("meter: captured content: %d expired rows deleted", deleted)
        return deleted

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.expire_once()
            except LedgerUnavailableError as exc:
                self.state.errors += 1
                log.warning("meter: captured content expiry: %s; retrying", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self.every_s)
