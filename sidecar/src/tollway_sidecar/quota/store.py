"""The interface both quota stores implement (`memory.MemoryStore`, `redis_store.RedisStore`).

Every operation takes the caller's clock (`now_ms`), never the store's: fixed windows and
reservation expiry then behave the same in both stores, and tests drive period rollover by passing
another time instead of sleeping. Each operation is one atomic step (one Lua script in Redis).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Final, Protocol

from tollway_sidecar.contract.counters import READ_SWEEP_LIMIT, CounterReader, StoreUnavailable
from tollway_sidecar.quota.plan import Plan, Settlement

__all__ = [
    "READ_SWEEP_LIMIT",
    "SWEEP_LIMIT",
    "Batch",
    "BatchLine",
    "Item",
    "QuotaStore",
    "ReserveResult",
    "StoreUnavailable",
    "record_items",
    "record_of",
]

SWEEP_LIMIT: Final = 32  # expired reservations cleared per reserve/settle (reads: READ_SWEEP_LIMIT)


@dataclass(frozen=True, slots=True)
class ReserveResult:
    admitted: bool
    used: tuple[int, ...]  # each line's `used` before this call


@dataclass(frozen=True, slots=True)
class BatchLine:
    key: str
    field: str
    amount: int
    ttl_ms: int  # 0: never expires; applied only to a counter without an expiry


@dataclass(frozen=True, slots=True)
class Batch:
    """Counts kept locally while the store was unreachable, to add once it answers again."""

    namespace: str
    batch_id: str
    now_ms: int
    lines: tuple[BatchLine, ...]
    events: tuple[str, ...] = ()  # usage events' JSON of the calls counted, appended with the counts

    @property
    def mark_key(self) -> str:
        return f"tw:{{{self.namespace}}}:rec:{self.batch_id}"


Item = list[str]  # [counter key, field, amount as a decimal string]


def record_items(plan: Plan) -> tuple[list[Item], list[Item]]:
    """What a reservation's settle or expiry takes out of `reserved`, and what its expiry adds."""
    rsv = [[line.key, line.rsv_field, str(line.amount)] for line in plan.lines if line.rsv_field]
    expiry = [[item.key, item.field, str(item.amount)] for item in plan.on_expiry]
    return rsv, expiry


def record_of(plan: Plan, expiry_event: str | None = None) -> str:
    """The stored reservation: its items as a JSON array, then, when it has one, a newline and the
    usage event its expiry appends (JSON never holds a raw newline, so the split is unambiguous,
    and the event is not escaped into the array: it costs a concatenation, not an encoding)."""
    record = json.dumps(record_items(plan), separators=(",", ":"))
    return f"{record}\n{expiry_event}" if expiry_event else record


class QuotaStore(CounterReader, Protocol):
    """Also a `CounterReader` (its `read`), which is all the operator needs of a store."""

    name: str

    async def reserve(self, plan: Plan, expiry_event: str | None = None) -> ReserveResult:
        """Reserve every line of `plan` if all checked lines have room; nothing otherwise.
        `expiry_event` (the call's usage event charged at its estimate) is kept with the
        reservation and appended to the outbox if the reservation expires unsettled, by whichever
        operation's sweep expires it; a settle in time discards it."""
        ...

    async def settle(self, plan: Plan, settlement: Settlement, now_ms: int, event: str | None = None) -> bool:
        """Replace the reservation with the settlement; False (and no change) when it is not open.
        `event` (a usage event's JSON) is appended to the outbox in the same step, only when the
        settlement is applied: a settle retried after a lost reply adds no second event."""
        ...

    async def emit(self, event: str, namespace: str | None = None) -> None:
        """Append a usage event that settles nothing (a call refused by a limit or budget), to
        `namespace`'s usage stream."""
        ...

    async def apply(self, batch: Batch) -> bool:
        """Add a batch of counts once; False when this batch was applied before."""
        ...

    async def ping(self) -> None: ...

    async def close(self) -> None: ...
