"""Lookups with request coalescing: concurrent identical misses make one upstream call.

Two levels. In one process, the first lookup of a key is its leader and the others await its
future, so however many wait, one of them talks to the store. Across processes (gateway replicas
on one Redis), the leader takes the store's fill lease; a leader that finds the lease held by
another replica polls the store (5 ms, doubling to 50 ms) until the entry is there or the lease is
gone. Waiting is bounded by `wait_s` (the route's timeout): a waiter whose fill fails, or that
waited long enough, goes upstream itself, and may still store what it gets. A leader that led to
nothing (it was cancelled, or it only reads and no fill was in flight) hands the lead on: one of
its waiters takes it.

The wiring must end every `Fill` it is given, with `complete(entry)` or `abandon()` (in a
`finally`): until then, this process's waiters for the key wait, up to their bound.

The store being unreachable is never an error: the lookup says BYPASS with `unavailable` set, and
the call goes upstream as if the cache were off.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Final

from tollway_sidecar.cache.embed import Embedder
from tollway_sidecar.cache.entry import CacheEntry
from tollway_sidecar.cache.request_policy import CacheDecision, CacheOutcome
from tollway_sidecar.cache.store import CacheStore, CacheUnavailable
from tollway_sidecar.cache.vectors import MemoryVectorStore, VectorStore

__all__ = ["Coalescer", "Fill", "Lookup", "wall_ms"]

log = logging.getLogger("tollway.cache")

_FIRST_POLL_S: Final = 0.005
_MAX_POLL_S: Final = 0.05


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


class _Lead(Enum):
    AGAIN = "again"  # what a leader that led to nothing tells its waiters: one of you lead


_Outcome = CacheEntry | None | _Lead  # what a leader's waiters learn: the entry, none, or lead again


@dataclass(eq=False)
class Fill:
    """A call's duty to store its answer under `key` (it holds the fill lease when `token` is set)."""

    key: str
    ttl_ms: int
    token: str | None
    _store: CacheStore
    _clock: Callable[[], int]
    _waiters: asyncio.Future[_Outcome] | None = None  # this process's, when it leads them
    _ended: Callable[[], None] = lambda: None
    done: bool = field(default=False, init=False)

    def _end(self, entry: CacheEntry | None) -> None:
        self.done = True
        _wake(self._waiters, entry)
        self._ended()

    async def complete(self, entry: CacheEntry) -> bool:
        """Store the answer and wake the waiters with it; False when it was not stored."""
        if self.done:
            return False
        self._end(entry)  # this process's waiters take the entry even if the store fails
        try:
            return await self._store.put(self.key, entry, self.ttl_ms, self._clock(), lease_token=self.token)
        except CacheUnavailable as exc:
            log.warning("cache entry not stored: %s", exc)
            return False

    async def abandon(self) -> None:
        """No answer to store (an error, a cut stream, an unstorable answer): release the waiters."""
        if self.done:
            return
        self._end(None)
        if self.token is not None:
            try:
                await self._store.release(self.key, self.token)
            except CacheUnavailable as exc:
                log.warning("cache lease not released (it expires by itself): %s", exc)


@dataclass(frozen=True, slots=True)
class Lookup:
    """What the cache did for a call: `entry` to serve on a hit; `fill` to end on a miss."""

    outcome: CacheOutcome
    entry: CacheEntry | None = None
    fill: Fill | None = None
    waited: bool = False  # the call waited for another call's fill
    unavailable: bool = False  # the store failed: bypassed (the wiring counts it)


def _wake(future: asyncio.Future[_Outcome] | None, outcome: _Outcome) -> None:
    if future is not None and not future.done():
        future.set_result(outcome)


class Coalescer:
    def __init__(
        self, store: CacheStore, *, clock: Callable[[], int] = wall_ms, vectors: VectorStore | None = None
    ) -> None:
        self.store = store
        self.clock = clock
        self._leaders: dict[str, asyncio.Future[_Outcome]] = {}
        # Semantic matching's embeddings of stored entries (beside `store`), and its embeddings client.
        self.vectors: VectorStore = vectors if vectors is not None else MemoryVectorStore()
        self.embedder = Embedder()

    async def close(self) -> None:
        await self.embedder.close()
        await self.vectors.close()
        await self.store.close()

    def _fill(
        self,
        key: str,
        decision: CacheDecision,
        token: str | None = None,
        future: asyncio.Future[_Outcome] | None = None,
    ) -> Fill:
        def ended() -> None:
            if future is not None and self._leaders.get(key) is future:
                del self._leaders[key]

        return Fill(key, decision.ttl_s * 1000, token, self.store, self.clock, future, ended)

    async def lookup(
        self, key: str, decision: CacheDecision, *, wait_s: float, lease_s: float | None = None
    ) -> Lookup:
        """Serve `key` from the cache, wait up to `wait_s` for a fill in flight, or hand the call a
        `Fill`. A fill's lease lasts `lease_s` (default `wait_s`): about as long as the filler's
        upstream call may take, after which another caller may fill the key too."""
        if not decision.active:
            return Lookup("BYPASS")
        lease_ms = max(1, int((wait_s if lease_s is None else lease_s) * 1000))
        try:
            if not decision.read:  # refresh: no read, but waiters for the key may take its answer
                token = secrets.token_hex(8)
                leased = await self.store.try_lease(key, token, lease_ms, self.clock())
                return Lookup("REFRESH", fill=self._fill(key, decision, token if leased else None))
            return await self._read(key, decision, wait_s, lease_ms)
        except CacheUnavailable as exc:
            log.warning("cache bypassed: %s", exc)
            return Lookup("BYPASS", unavailable=True)

    def _fresh(self, entry: CacheEntry | None, decision: CacheDecision) -> CacheEntry | None:
        if entry is None or decision.max_age_s is None:
            return entry
        return entry if self.clock() - entry.created_ms <= decision.max_age_s * 1000 else None

    def _after_wait(self, key: str, decision: CacheDecision, entry: CacheEntry | None) -> Lookup:
        if (fresh := self._fresh(entry, decision)) is not None:
            return Lookup(decision.outcome("exact"), fresh, waited=True)
        fill = self._fill(key, decision) if decision.write else None
        return Lookup(decision.outcome(None), fill=fill, waited=True)

    async def _read(self, key: str, decision: CacheDecision, wait_s: float, lease_ms: int) -> Lookup:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s
        while (leader := self._leaders.get(key)) is not None:
            try:
                outcome = await asyncio.wait_for(asyncio.shield(leader), max(0.0, deadline - loop.time()))
            except TimeoutError:
                return self._after_wait(key, decision, None)
            if not isinstance(outcome, _Lead):
                return self._after_wait(key, decision, outcome)
        return await self._lead(key, decision, deadline, lease_ms)

    async def _lead(self, key: str, decision: CacheDecision, deadline: float, lease_ms: int) -> Lookup:
        future: asyncio.Future[_Outcome] = asyncio.get_running_loop().create_future()
        self._leaders[key] = future
        handed_over = False
        try:
            entry = self._fresh(await self.store.get(key, self.clock()), decision)
            if entry is not None:
                _wake(future, entry)
                return Lookup(decision.outcome("exact"), entry)
            if decision.write:
                token = secrets.token_hex(8)
                if await self.store.try_lease(key, token, lease_ms, self.clock()):
                    handed_over = True  # the Fill wakes this process's waiters and ends the lead
                    fill = self._fill(key, decision, token, future)
                    return Lookup(decision.outcome(None), fill=fill)
            entry, in_flight = await self._wait_remote(key, deadline)
            if not in_flight:  # nothing to wait for: this caller only reads, or the fill just ended
                _wake(future, entry if entry is not None else _Lead.AGAIN)
                lookup = self._after_wait(key, decision, entry)
                return Lookup(lookup.outcome, lookup.entry, lookup.fill)  # it did not wait
            _wake(future, entry)
            return self._after_wait(key, decision, entry)
        finally:
            if not handed_over:
                _wake(future, _Lead.AGAIN)  # an error or a cancellation: a waiter takes the lead
                if self._leaders.get(key) is future:
                    del self._leaders[key]

    async def _wait_remote(self, key: str, deadline: float) -> tuple[CacheEntry | None, bool]:
        """Poll until the entry is stored, the lease is gone (the fill failed) or `deadline`; the
        entry, and whether a fill was in flight when the wait began."""
        loop = asyncio.get_running_loop()
        pause = _FIRST_POLL_S
        in_flight: bool | None = None
        while True:
            polled = await self.store.poll(key, self.clock())
            if in_flight is None:
                in_flight = polled.leased
            if polled.entry is not None or not polled.leased:
                return polled.entry, in_flight
            left = deadline - loop.time()
            if left <= 0:
                return None, in_flight
            await asyncio.sleep(min(pause, left))
            pause = min(pause * 2, _MAX_POLL_S)
