"""The in-memory quota store (`tollway dev` without `--redis`): the Lua scripts' semantics in Python.

One process, one event loop: each method runs to completion without awaiting, so it is as atomic
as a Lua script. Counters expire by the caller's clock (`now_ms`), as Redis keys expire by theirs.
Usage events go to `outbox` (`quota.outbox.Outbox`) in the same step as the counters; the meter
reads and acknowledges them through the admin port.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence

from tollway_sidecar.contract.keys import index_key, reservation_prefix
from tollway_sidecar.quota.outbox import OUTBOX_LIMIT, Outbox
from tollway_sidecar.quota.plan import Plan, Settlement
from tollway_sidecar.quota.store import (
    READ_SWEEP_LIMIT,
    SWEEP_LIMIT,
    Batch,
    Item,
    ReserveResult,
    record_items,
)

__all__ = ["OUTBOX_LIMIT", "MemoryStore"]

_RECORD_GRACE_MS = 86_400_000
# A reservation: what it holds in `reserved`, what its expiry adds, the event its expiry appends.
_Record = tuple[list[Item], list[Item], str | None]


class MemoryStore:
    name = "memory"

    def __init__(self) -> None:
        self._hashes: dict[str, dict[str, int]] = {}
        self._expiry: dict[str, int] = {}  # counter key -> when it is dropped (absent: never)
        self._records: dict[str, tuple[_Record, int]] = {}  # reservation key -> (record, dropped at)
        self._index: dict[str, dict[str, int]] = {}  # index key -> {rid: expiry}
        self._heaps: dict[str, list[tuple[int, str]]] = {}  # index key -> (expiry, rid), lazily pruned
        self._marks: dict[str, int] = {}  # applied batch marks -> dropped at
        self.outbox = Outbox()  # usage events' JSON, oldest first, until the meter acknowledges them

    # -- helpers (all by the caller's clock) -----------------------------------------------------

    def _exists(self, key: str, now_ms: int) -> bool:
        dropped_at = self._expiry.get(key)
        if dropped_at is not None and dropped_at <= now_ms:
            self._hashes.pop(key, None)
            self._expiry.pop(key, None)
        return key in self._hashes

    def _hincrby(self, key: str, field: str, amount: int, now_ms: int) -> None:
        self._exists(key, now_ms)
        fields = self._hashes.setdefault(key, {})
        fields[field] = fields.get(field, 0) + amount

    def _hget(self, key: str, field: str, now_ms: int) -> int:
        if not self._exists(key, now_ms):
            return 0
        return self._hashes[key].get(field, 0)

    def _record(self, key: str, now_ms: int) -> _Record | None:
        entry = self._records.get(key)
        if entry is None:
            return None
        if entry[1] <= now_ms:
            del self._records[key]
            return None
        return entry[0]

    def _sweep(self, index_key: str, prefix: str, now_ms: int, limit: int) -> None:
        heap = self._heaps.get(index_key)
        index = self._index.get(index_key)
        if not heap or index is None:
            return
        swept = 0
        while heap and swept < limit:
            expiry, rid = heap[0]
            if index.get(rid) != expiry:
                heapq.heappop(heap)  # settled, or re-scored: a stale entry
                continue
            if expiry > now_ms:
                break
            heapq.heappop(heap)
            swept += 1
            record = self._record(prefix + rid, now_ms)
            if record is not None:
                rsv, on_expiry, event = record
                for key, field, amount in rsv:
                    if amount != "0" and self._exists(key, now_ms):
                        self._hincrby(key, field, -int(amount), now_ms)
                for key, field, amount in on_expiry:
                    if amount != "0" and self._exists(key, now_ms):
                        self._hincrby(key, field, int(amount), now_ms)
                if event:  # the call charged at its estimate: its one event, as settle.lua's sweep
                    self.outbox.append(event)
                self._records.pop(prefix + rid, None)
            del index[rid]

    # -- the store ---------------------------------------------------------------------------------

    async def reserve(self, plan: Plan, expiry_event: str | None = None) -> ReserveResult:
        now = plan.now_ms
        self._sweep(plan.index_key, plan.reservation_prefix, now, SWEEP_LIMIT)
        used = tuple(self._hget(line.key, line.used_field, now) for line in plan.lines)
        admitted = all(
            line.limit < 0 or before + line.amount <= line.limit
            for line, before in zip(plan.lines, used, strict=True)
        )
        if not admitted:
            return ReserveResult(False, used)
        for line in plan.lines:
            self._hincrby(line.key, line.used_field, line.amount, now)
            if line.rsv_field:
                self._hincrby(line.key, line.rsv_field, line.amount, now)
            if line.ttl_ms > 0:
                self._expiry[line.key] = now + line.ttl_ms
        rsv, on_expiry = record_items(plan)
        dropped_at = now + plan.ttl_ms + _RECORD_GRACE_MS
        self._records[plan.reservation_key] = ((rsv, on_expiry, expiry_event), dropped_at)
        expiry = now + plan.ttl_ms
        self._index.setdefault(plan.index_key, {})[plan.rid] = expiry
        heapq.heappush(self._heaps.setdefault(plan.index_key, []), (expiry, plan.rid))
        return ReserveResult(True, used)

    async def settle(self, plan: Plan, settlement: Settlement, now_ms: int, event: str | None = None) -> bool:
        applied = False
        record = self._record(plan.reservation_key, now_ms)
        expiry = self._index.get(plan.index_key, {}).get(plan.rid)
        if record is not None and expiry is not None and expiry > now_ms:
            rsv = record[0]
            for key, field, amount in rsv:
                if amount != "0" and self._exists(key, now_ms):
                    self._hincrby(key, field, -int(amount), now_ms)
            for item in (*settlement.deltas, *settlement.tallies):
                if self._exists(item.key, now_ms):
                    self._hincrby(item.key, item.field, item.amount, now_ms)
            del self._records[plan.reservation_key]
            del self._index[plan.index_key][plan.rid]
            if event is not None:
                self.outbox.append(event)
            applied = True
        self._sweep(plan.index_key, plan.reservation_prefix, now_ms, SWEEP_LIMIT)
        return applied

    async def emit(self, event: str, namespace: str | None = None) -> None:
        self.outbox.append(event)

    async def apply(self, batch: Batch) -> bool:
        now = batch.now_ms
        dropped_at = self._marks.get(batch.mark_key)
        if dropped_at is not None and dropped_at > now:
            return False
        self._marks[batch.mark_key] = now + _RECORD_GRACE_MS
        for line in batch.lines:
            fresh = not self._exists(line.key, now)
            self._hincrby(line.key, line.field, line.amount, now)
            if line.ttl_ms > 0 and (fresh or line.key not in self._expiry):
                self._expiry[line.key] = now + line.ttl_ms
        self.outbox.extend(batch.events)
        return True

    async def read(self, namespace: str, keys: Sequence[str], now_ms: int) -> dict[str, dict[str, int]]:
        self._sweep(index_key(namespace), reservation_prefix(namespace), now_ms, READ_SWEEP_LIMIT)
        return {key: dict(self._hashes[key]) if self._exists(key, now_ms) else {} for key in keys}

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        return None
