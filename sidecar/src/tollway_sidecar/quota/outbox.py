"""The in-memory store's outbox: usage events kept in the sidecar's process until a meter has
committed them (`tollway dev` without Redis; the Redis store's outbox is its stream).

Each event gets the next sequence number when the store appends it, in the same synchronous step
that changes the counters, so counters and events cannot disagree. A meter reads `pending(after)`
through the admin port and `ack(upto)`s once its ledger has committed; until then the entries stay,
so a meter that dies mid-batch reads them again. The outbox is bounded: full, it drops the oldest
unacknowledged event, counts it in `dropped` and logs, since a `tollway dev` left running without a
meter must not grow without limit.
"""

from __future__ import annotations

import itertools
import logging
import uuid
from collections import deque
from collections.abc import Iterable, Iterator

from tollway_sidecar.contract.usage_outbox import OUTBOX_PAGE_MAX, OutboxEntry, OutboxPage

__all__ = ["OUTBOX_LIMIT", "Outbox", "OutboxAckError"]

log = logging.getLogger("tollway.quota.outbox")

OUTBOX_LIMIT = 10_000  # events (~1 KB each) kept unacknowledged at most
_LOG_EVERY = 1_000  # an overflow is logged at its first drop and every this many after


class OutboxAckError(ValueError):
    pass


class Outbox:
    def __init__(self, limit: int = OUTBOX_LIMIT) -> None:
        if limit < 1:
            raise ValueError(f"outbox limit: expected >= 1, got {limit}")
        self.limit = limit
        # Names this process's outbox: sequence numbers start again when the sidecar restarts.
        self.id = uuid.uuid4().hex
        self.dropped = 0
        # (seq, event) tuples: the append is on the settle's path, and a tuple is the cheapest record.
        self._entries: deque[tuple[int, str]] = deque()
        self._next = 1

    def append(self, event: str) -> None:
        if len(self._entries) >= self.limit:
            self._entries.popleft()
            self.dropped += 1
            if self.dropped % _LOG_EVERY == 1 or _LOG_EVERY == 1:
                log.warning(
                    "usage outbox full (%d events unacknowledged): dropped the oldest; %d dropped "
                    "since start. Is the meter running (tollway meter run --outbox)?",
                    self.limit,
                    self.dropped,
                )
        self._entries.append((self._next, event))
        self._next += 1

    def extend(self, events: Iterable[str]) -> None:
        for event in events:
            self.append(event)

    def __iter__(self) -> Iterator[str]:
        return (event for _seq, event in self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def first(self) -> int:
        """The oldest sequence number kept (the next one when empty)."""
        return self._entries[0][0] if self._entries else self._next

    def pending(self, after: int = 0, limit: int = 500) -> list[OutboxEntry]:
        """Entries with a sequence number above `after`, oldest first, at most `limit`."""
        # Sequence numbers are contiguous from `first`, so the position is arithmetic.
        start = max(0, after + 1 - self.first)
        window = itertools.islice(self._entries, start, start + max(0, limit))
        return [OutboxEntry(seq, event) for seq, event in window]

    def page(self, after: int = 0, limit: int = 500) -> OutboxPage:
        entries = self.pending(after, min(limit, OUTBOX_PAGE_MAX))
        return OutboxPage(self.id, tuple(entries), self.first, self._next, self.dropped)

    def ack(self, upto: int) -> int:
        """Drop every entry up to `upto` (committed by the meter); how many were dropped."""
        if upto >= self._next:
            raise OutboxAckError(
                f"upto: {upto} was never handed out (the last sequence number is {self._next - 1})"
            )
        acked = 0
        while self._entries and self._entries[0][0] <= upto:
            self._entries.popleft()
            acked += 1
        return acked
