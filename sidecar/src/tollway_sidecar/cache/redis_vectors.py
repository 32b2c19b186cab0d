"""The Redis vector store: one hash per semantic partition, entry id → expiry + float32 vector.

`twc:{<partition>}:v` holds the vectors and `twc:{<partition>}:o` their insertion order (a sorted set
by time), one hash tag so that "add, and drop the oldest beyond the bound" is one script in one
Cluster slot. Both keys expire with the longest-lived vector in them (`PX`, only ever extended); a
vector's own expiry is checked on read. A search reads the whole hash (`HGETALL`) and scans it here:
Redis 7 has no vector index (Redis Stack's `FT.SEARCH` would do the scan server-side).

It shares the response cache's client (`RedisCacheStore`): the same timeout, cooldown and
`CacheUnavailable` on failure.
"""

from __future__ import annotations

import contextlib
from typing import Final

from redis.exceptions import OutOfMemoryError

from tollway_sidecar.cache.redis_store import RedisCacheStore
from tollway_sidecar.cache.vectors import DEFAULT_MAX_PER_PARTITION, Match, Vector, pack, scan, unpack

__all__ = ["RedisVectorStore"]

_ADD: Final = """
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
local over = redis.call('ZCARD', KEYS[2]) - tonumber(ARGV[4])
if over > 0 then
  local old = redis.call('ZRANGE', KEYS[2], 0, over - 1)
  redis.call('ZREMRANGEBYRANK', KEYS[2], 0, over - 1)
  redis.call('HDEL', KEYS[1], unpack(old))
end
local ttl = tonumber(ARGV[5])
for _, key in ipairs(KEYS) do
  if redis.call('PTTL', key) < ttl then redis.call('PEXPIRE', key, ttl) end
end
return 1
"""


class RedisVectorStore:
    name = "redis"

    def __init__(self, store: RedisCacheStore, *, max_per_partition: int = DEFAULT_MAX_PER_PARTITION) -> None:
        self._store = store
        self.max_per_partition = max_per_partition
        self._add = store.redis.register_script(_ADD)

    def vectors_key(self, partition: str) -> str:
        return f"{self._store.prefix}{{{partition}}}:v"

    def order_key(self, partition: str) -> str:
        return f"{self._store.prefix}{{{partition}}}:o"

    async def add(self, partition: str, entry_id: str, vector: Vector, ttl_ms: int, now_ms: int) -> None:
        keys = [self.vectors_key(partition), self.order_key(partition)]
        args: list[bytes | str | int] = [
            entry_id,
            pack(vector, now_ms + ttl_ms),
            now_ms,
            self.max_per_partition,
            ttl_ms,
        ]
        with contextlib.suppress(OutOfMemoryError):  # noeviction and full: matched exactly only
            await self._store.call("storing a vector", lambda: self._add(keys=keys, args=args))

    async def nearest(self, partition: str, query: Vector, now_ms: int) -> Match | None:
        key = self.vectors_key(partition)
        stored: dict[bytes, bytes] = await self._store.call(
            "reading vectors",
            lambda: self._store.redis.hgetall(key),  # type: ignore[arg-type,return-value]
        )
        candidates = []
        for field, value in stored.items():
            decoded = unpack(value)
            if decoded is not None:  # a value that does not decode is skipped; the bound drops it
                candidates.append((field.decode("ascii", "replace"), decoded[0], decoded[1]))
        return await scan(query, candidates, now_ms)

    async def close(self) -> None:
        """The client is the cache store's; it closes it."""
