"""The stream consumer: usage events from a Redis Stream consumer group into the ledger.

Per batch: read (first this consumer's own pending entries, then stale ones claimed from dead
consumers, then new ones), dead-letter what does not parse, ingest the rest in one database
transaction, and only after the commit XACK them. A crash anywhere before the XACK leaves the
entries pending; whoever reads them next ingests them again, and the ledger ignores the
duplicates. The stream is trimmed only below the oldest entry not yet acknowledged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from tollway_meter import batch
from tollway_meter.ledger import Ledger, LedgerUnavailableError
from tollway_sidecar.contract.usage_event import USAGE_DEAD_LETTER_STREAM, USAGE_FIELD, USAGE_STREAM

log = logging.getLogger("tollway.meter")

Entry = tuple[str, dict[str, str]]


def default_consumer_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


@dataclass(frozen=True)
class ConsumerOptions:
    stream: str = USAGE_STREAM
    dead_letter: str = USAGE_DEAD_LETTER_STREAM
    group: str = "tollway-meter"
    consumer: str = field(default_factory=default_consumer_name)
    batch: int = 500
    block_ms: int = 1000
    # An entry pending this long belongs to a consumer presumed dead: another one claims it.
    claim_idle_ms: int = 60_000
    trim: bool = True
    backoff_initial_s: float = 0.2
    backoff_max_s: float = 30.0


@dataclass
class MeterStats:
    """Counters since start (the meter's metrics)."""

    batches: int = 0
    ingested: int = 0
    duplicates: int = 0
    adjustments: int = 0
    dead_lettered: int = 0
    claimed: int = 0
    ledger_errors: int = 0
    lost: int = 0


@dataclass(frozen=True)
class StepResult:
    read: int
    inserted: int
    duplicates: int
    dead_lettered: int


class MeterConsumer:
    def __init__(
        self, client: aioredis.Redis, ledger: Ledger, options: ConsumerOptions | None = None
    ) -> None:
        self.redis = client
        self.ledger = ledger
        self.options = options or ConsumerOptions()
        self.stats = MeterStats()
        self._own_pending_done = False
        # The ledger is one connection: consumers of several streams sharing it take turns.
        self.ledger_lock = asyncio.Lock()

    async def ensure_group(self) -> None:
        try:
            await self.redis.xgroup_create(self.options.stream, self.options.group, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def _read(self) -> list[Entry]:
        o = self.options
        while not self._own_pending_done:
            # After a restart (or a failed batch) this consumer's own pending entries come first.
            own = await self.redis.xreadgroup(o.group, o.consumer, {o.stream: "0"}, count=o.batch)
            entries, gone = _entries(own)
            if gone:
                # Deleted from the stream (XDEL, or an XADD MAXLEN by someone else) while pending:
                # nothing left to ingest, and left pending they would hold back the trim forever.
                await self.redis.xack(o.stream, o.group, *gone)
                self.stats.lost += len(gone)
                log.error(
                    "%d pending entries were deleted from %s before they were ingested", len(gone), o.stream
                )
            if entries:
                return entries
            if not gone:
                self._own_pending_done = True
        claimed = await self.redis.xautoclaim(
            o.stream, o.group, o.consumer, o.claim_idle_ms, "0-0", count=o.batch
        )
        stale = [(_text(i), _fields(f)) for i, f in claimed[1] if f is not None]
        if stale:
            self.stats.claimed += len(stale)
            log.info("claimed %d stale entries from other consumers", len(stale))
            return stale
        fresh = await self.redis.xreadgroup(
            o.group, o.consumer, {o.stream: ">"}, count=o.batch, block=o.block_ms
        )
        return _entries(fresh)[0]

    async def step(self) -> StepResult:
        """One batch. Raises LedgerUnavailableError with the entries left pending (retried next step)."""
        entries = await self._read()
        if not entries:
            return StepResult(0, 0, 0, 0)
        events, rejected = batch.parse_entries(
            ((entry_id, fields.get(USAGE_FIELD)) for entry_id, fields in entries),
            missing=f"no {USAGE_FIELD!r} field in the stream entry",
        )
        try:
            async with self.ledger_lock:
                result = await asyncio.to_thread(batch.ingest, self.ledger, events, rejected)
        except LedgerUnavailableError:
            self.stats.ledger_errors += 1
            self._own_pending_done = False
            raise
        o = self.options
        if rejected:
            async with self.redis.pipeline(transaction=False) as pipe:
                for entry_id, raw, reason in rejected:
                    pipe.xadd(
                        o.dead_letter, {"event": raw, "reason": reason, "entry": entry_id, "stream": o.stream}
                    )
                await pipe.execute()
            for entry_id, _, reason in rejected:
                log.warning("dead-lettered stream entry %s: %s", entry_id, reason)
        # Only now, after the ledger committed and bad entries are kept elsewhere.
        await self.redis.xack(o.stream, o.group, *(entry_id for entry_id, _ in entries))
        self.stats.batches += 1
        self.stats.ingested += result.inserted
        self.stats.duplicates += result.duplicates
        self.stats.adjustments += result.adjustments
        self.stats.dead_lettered += len(rejected)
        if o.trim:
            await self.trim()
        return StepResult(len(entries), result.inserted, result.duplicates, len(rejected))

    async def trim(self) -> int:
        """XTRIM MINID to the oldest entry not yet acknowledged (pending or never delivered)."""
        o = self.options
        # last-delivered-id first, pending second: an entry delivered in between has a larger id
        # than the bound read first, so it is never trimmed unacknowledged.
        groups = await self.redis.xinfo_groups(o.stream)
        group = next((g for g in groups if _text(g["name"]) == o.group), None)
        if group is None:
            return 0
        bound = _next_id(_text(group["last-delivered-id"]))
        pending: Any = await self.redis.xpending(o.stream, o.group)
        if pending["pending"]:
            bound = min(bound, _text(pending["min"]), key=_id_key)
        if len(groups) > 1:
            return 0  # another group reads this stream too: its progress is not ours to judge
        return int(await self.redis.xtrim(o.stream, minid=bound, approximate=False))

    async def run(self, stop: asyncio.Event) -> None:
        await self.ensure_group()
        delay = self.options.backoff_initial_s
        while not stop.is_set():
            try:
                await self.step()
                delay = self.options.backoff_initial_s
            except ResponseError as exc:
                if "NOGROUP" not in str(exc) and "no longer exists" not in str(exc):
                    raise
                # The stream or the group was deleted under us: make them again and carry on.
                log.warning("meter: %s; creating the consumer group again", exc)
                await self.ensure_group()
                self._own_pending_done = False
            except (LedgerUnavailableError, RedisConnectionError, RedisTimeoutError, OSError) as exc:
                # The failed step may have left entries pending to us (read, or committed but not
                # acknowledged, before Redis went away): they come first on the next step.
                self._own_pending_done = False
                log.warning("meter: %s; retrying in %.1f s (events wait in the stream)", exc, delay)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=delay)
                delay = min(delay * 2, self.options.backoff_max_s)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _fields(raw: dict[Any, Any]) -> dict[str, str]:
    return {_text(k): _text(v) for k, v in raw.items()}


def _entries(reply: Any) -> tuple[list[Entry], list[str]]:
    """XREADGROUP's reply — a list of [stream, entries] (RESP2) or a map stream → entries (RESP3) —
    as (entries, ids of pending entries whose payload was deleted from the stream)."""
    if not reply:
        return [], []
    pairs = reply.items() if isinstance(reply, dict) else reply
    out: list[Entry] = []
    gone: list[str] = []
    for _stream, items in pairs:
        for entry_id, fields in items:
            if fields:
                out.append((_text(entry_id), _fields(fields)))
            else:
                gone.append(_text(entry_id))
    return out, gone


def _id_key(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def _next_id(entry_id: str) -> str:
    ms, seq = _id_key(entry_id)
    return f"{ms}-{seq + 1}"
