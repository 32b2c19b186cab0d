"""The Redis cache store: entries and fill leases under their own key prefix, expiring by `PX`.

Keys are `<prefix>{<cache key>}:e` (the entry) and `<prefix>{<cache key>}:l` (the lease): the hash
tag puts both in one Redis Cluster slot, so the put that stores an entry and ends its lease is one
script on one node. A stored value is `<expires_ms>:<entry>`; the expiry by the caller's clock is
checked on read, as the memory store does, and `PX` (the same TTL by Redis' clock) frees the memory.

Under `maxmemory` an evicted entry is simply a miss (with an `allkeys-*` or `volatile-*` policy;
every key here has a TTL). With `noeviction` a put that does not fit is not stored and is no error.
A value that does not decode is a miss and is deleted. Anything else that goes wrong reaching Redis
is `CacheUnavailable`; after one, calls fail at once for `cooldown_s` instead of each waiting out
the timeout, as the quota store does. The client never retries.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Final, TypeVar

from redis.exceptions import OutOfMemoryError, RedisError

from tollway_sidecar.cache.entry import CacheEntry, CorruptEntry, decode_entry
from tollway_sidecar.cache.store import CacheUnavailable, Polled
from tollway_sidecar.contract.redis_counters import RedisClient, bounded_client

__all__ = ["DEFAULT_PREFIX", "RedisCacheStore"]

log = logging.getLogger("tollway.cache.redis")
T = TypeVar("T")

DEFAULT_PREFIX: Final = "twc:"
DEFAULT_MAX_ENTRY_BYTES: Final = 8 * 1024 * 1024  # the store's own ceiling, whatever a route allows

# Store the entry and end the fill lease if this filler still holds it, in one step.
_PUT: Final = """
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
if ARGV[3] ~= '' and redis.call('GET', KEYS[2]) == ARGV[3] then redis.call('DEL', KEYS[2]) end
return 1
"""
_RELEASE: Final = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class RedisCacheStore:
    name = "redis"

    def __init__(
        self,
        url: str,
        *,
        prefix: str = DEFAULT_PREFIX,
        timeout_s: float = 0.5,
        cooldown_s: float = 0.5,
        max_connections: int = 32,
        max_entry_bytes: int = DEFAULT_MAX_ENTRY_BYTES,
        password: str | None = None,
    ) -> None:
        self.url = url
        self.prefix = prefix
        self.timeout_s = timeout_s
        self.cooldown_s = cooldown_s
        self.max_entry_bytes = max_entry_bytes
        # Bytes, not text (unlike the quota client): a corrupt value must decode as a miss here, not
        # fail inside the client's reply parser.
        self._redis = bounded_client(
            url,
            timeout_s=timeout_s,
            max_connections=max_connections,
            password=password,
            decode_responses=False,
        )
        self._put = self._redis.register_script(_PUT)
        self._release = self._redis.register_script(_RELEASE)
        self._down_until = 0.0

    def entry_key(self, key: str) -> str:
        return f"{self.prefix}{{{key}}}:e"

    def lease_key(self, key: str) -> str:
        return f"{self.prefix}{{{key}}}:l"

    @property
    def redis(self) -> RedisClient:
        """The client, shared with the semantic cache's vector store (`redis_vectors`)."""
        return self._redis

    async def call(self, what: str, make: Callable[[], Awaitable[T]]) -> T:
        """One bounded call on the client: `CacheUnavailable` on failure, as the store's own."""
        return await self._call(what, make)

    def _where(self) -> str:
        return self.url.rsplit("@", 1)[-1]  # never the password

    async def _call(self, what: str, make: Callable[[], Awaitable[T]]) -> T:
        if time.monotonic() < self._down_until:
            raise CacheUnavailable(f"Redis at {self._where()} failed moments ago; not retrying yet")
        try:
            async with asyncio.timeout(self.timeout_s):
                return await make()
        except OutOfMemoryError:
            raise  # Redis answers; it only refuses writes (maxmemory with noeviction)
        except (RedisError, OSError, TimeoutError) as exc:
            self._down_until = time.monotonic() + self.cooldown_s
            reason = "timed out" if isinstance(exc, TimeoutError) else f"{type(exc).__name__}: {exc}"
            raise CacheUnavailable(f"Redis at {self._where()} {what}: {reason}") from exc

    async def _decoded(self, key: str, value: bytes | str | None, now_ms: int) -> CacheEntry | None:
        if value is None:
            return None
        if isinstance(value, str):  # never: the client does not decode replies
            value = value.encode()
        expires, sep, data = value.partition(b":")
        try:
            if not sep or not expires.isdigit():
                raise CorruptEntry("no expiry")
            if now_ms >= int(expires):
                return None
            return decode_entry(data)
        except CorruptEntry as exc:
            log.warning("cache entry %s is corrupt (%s); deleted", key[:16], exc)
            await self.delete(key)
            return None

    async def get(self, key: str, now_ms: int) -> CacheEntry | None:
        value = await self._call("get", lambda: self._redis.get(self.entry_key(key)))
        return await self._decoded(key, value, now_ms)

    async def put(
        self, key: str, entry: CacheEntry, ttl_ms: int, now_ms: int, *, lease_token: str | None = None
    ) -> bool:
        if len(entry.encoded) > self.max_entry_bytes or ttl_ms <= 0:
            if lease_token is not None:
                await self.release(key, lease_token)
            return False
        value = b"%d:%s" % (now_ms + ttl_ms, entry.encoded)
        keys = [self.entry_key(key), self.lease_key(key)]
        try:
            await self._call("put", lambda: self._put(keys=keys, args=[value, ttl_ms, lease_token or ""]))
        except OutOfMemoryError as exc:
            log.warning("cache entry not stored: %s", exc)
            if lease_token is not None:
                # A script that writes is refused as a whole under OOM; DEL is still allowed.
                await self._call("release", lambda: self._redis.delete(self.lease_key(key)))
            return False
        return True

    async def delete(self, key: str) -> None:
        await self._call("delete", lambda: self._redis.delete(self.entry_key(key)))

    async def try_lease(self, key: str, token: str, ttl_ms: int, now_ms: int) -> bool:
        try:
            taken = await self._call(
                "lease", lambda: self._redis.set(self.lease_key(key), token, nx=True, px=max(1, ttl_ms))
            )
        except OutOfMemoryError:  # OOM: no lease can be taken, so this call goes upstream uncoalesced
            return True
        return bool(taken)

    async def release(self, key: str, token: str) -> None:
        try:
            await self._call("release", lambda: self._release(keys=[self.lease_key(key)], args=[token]))
        except OutOfMemoryError:  # OOM refuses the script; DEL is still allowed
            await self._call("release", lambda: self._redis.delete(self.lease_key(key)))

    async def poll(self, key: str, now_ms: int) -> Polled:
        entry, lease = await self._call(
            "poll", lambda: self._redis.mget([self.entry_key(key), self.lease_key(key)])
        )
        return Polled(await self._decoded(key, entry, now_ms), lease is not None)

    async def ping(self) -> None:
        await self._call("ping", self._redis.ping)

    async def close(self) -> None:
        await self._redis.aclose()
