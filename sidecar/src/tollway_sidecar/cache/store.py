"""The interface both cache stores implement (`memory.MemoryCacheStore`, `redis_store.RedisCacheStore`).

Every operation takes the caller's clock (`now_ms`), as the quota stores do: expiry then behaves the
same in both stores, and tests drive it instead of sleeping. A lease marks a fill in flight (one
caller went upstream for a key); `put` with the lease's token stores the entry and ends the lease in
one step, so a waiter never sees the lease gone before the entry is there.

A store that cannot be reached raises `CacheUnavailable`, which `ResponseCache` turns into a bypass:
the cache never fails a call. A stored value that does not decode is a miss, and is deleted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from tollway_sidecar.cache.entry import CacheEntry

__all__ = ["CacheStore", "CacheUnavailable", "Polled"]


class CacheUnavailable(Exception):
    """The cache store could not be reached or did not answer in time."""


@dataclass(frozen=True, slots=True)
class Polled:
    """What a waiter sees of a key: its entry if stored, and whether a fill is still in flight."""

    entry: CacheEntry | None
    leased: bool


class CacheStore(Protocol):
    name: str

    async def get(self, key: str, now_ms: int) -> CacheEntry | None:
        """The live entry for `key`, or None (absent, expired, evicted, corrupt — corrupt is deleted)."""
        ...

    async def put(
        self, key: str, entry: CacheEntry, ttl_ms: int, now_ms: int, *, lease_token: str | None = None
    ) -> bool:
        """Store `entry` until `now_ms + ttl_ms` and end the lease `lease_token` if it still holds it.
        False when the store would not keep it (over the store's own per-entry bound, out of memory)."""
        ...

    async def delete(self, key: str) -> None: ...

    async def try_lease(self, key: str, token: str, ttl_ms: int, now_ms: int) -> bool:
        """Take the fill lease of `key` for `ttl_ms` unless someone holds it. True also when the store
        can keep no lease (Redis out of memory under `noeviction`): the caller then fills uncoalesced."""
        ...

    async def release(self, key: str, token: str) -> None:
        """End the lease if `token` still holds it (a fill that failed: waiters go upstream at once)."""
        ...

    async def poll(self, key: str, now_ms: int) -> Polled:
        """The entry and the lease of `key`, read together."""
        ...

    async def ping(self) -> None: ...

    async def close(self) -> None: ...
