"""The in-memory cache store of `tollway dev`: a byte-bounded LRU with expiry by the caller's clock.

An entry's size is its stored form's length plus its key's: what Redis would hold, a stable proxy for
the Python objects (which take a few times more). When a put would pass `max_bytes`, the least
recently used entries go first; an entry over `max_entry_bytes` is refused.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Final

from tollway_sidecar.cache.entry import CacheEntry
from tollway_sidecar.cache.store import Polled

__all__ = ["DEFAULT_MAX_BYTES", "MemoryCacheStore"]

DEFAULT_MAX_BYTES: Final = 64 * 1024 * 1024
_LEASE_SWEEP_AT: Final = 4096  # leases held before expired ones are cleared (a fill never ended)


@dataclass(frozen=True, slots=True)
class _Item:
    entry: CacheEntry
    size: int
    expires_ms: int


class MemoryCacheStore:
    name = "memory"

    def __init__(self, *, max_bytes: int = DEFAULT_MAX_BYTES, max_entry_bytes: int | None = None) -> None:
        self.max_bytes = max_bytes
        self.max_entry_bytes = max_entry_bytes if max_entry_bytes is not None else max_bytes // 8
        self._items: OrderedDict[str, _Item] = OrderedDict()
        self._leases: dict[str, tuple[str, int]] = {}  # key → (token, expires_ms)
        self.bytes = 0  # the sizes of the entries held

    def __len__(self) -> int:
        return len(self._items)

    async def get(self, key: str, now_ms: int) -> CacheEntry | None:
        item = self._items.get(key)
        if item is None:
            return None
        if now_ms >= item.expires_ms:
            self._drop(key)
            return None
        self._items.move_to_end(key)
        return item.entry

    async def put(
        self, key: str, entry: CacheEntry, ttl_ms: int, now_ms: int, *, lease_token: str | None = None
    ) -> bool:
        if lease_token is not None:
            await self.release(key, lease_token)
        size = len(entry.encoded) + len(key)
        if size > self.max_entry_bytes or ttl_ms <= 0:
            return False
        self._drop(key)
        while self._items and self.bytes + size > self.max_bytes:
            self._drop(next(iter(self._items)))
        self._items[key] = _Item(entry, size, now_ms + ttl_ms)
        self.bytes += size
        return True

    async def delete(self, key: str) -> None:
        self._drop(key)

    def _drop(self, key: str) -> None:
        item = self._items.pop(key, None)
        if item is not None:
            self.bytes -= item.size

    async def try_lease(self, key: str, token: str, ttl_ms: int, now_ms: int) -> bool:
        held = self._leases.get(key)
        if held is not None and now_ms < held[1]:
            return False
        if len(self._leases) >= _LEASE_SWEEP_AT:
            self._leases = {k: v for k, v in self._leases.items() if now_ms < v[1]}
        self._leases[key] = (token, now_ms + ttl_ms)
        return True

    async def release(self, key: str, token: str) -> None:
        held = self._leases.get(key)
        if held is not None and held[0] == token:
            del self._leases[key]

    async def poll(self, key: str, now_ms: int) -> Polled:
        held = self._leases.get(key)
        leased = held is not None and now_ms < held[1]
        if held is not None and not leased:
            del self._leases[key]
        return Polled(await self.get(key, now_ms), leased)

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        self._items.clear()
        self._leases.clear()
        self.bytes = 0
