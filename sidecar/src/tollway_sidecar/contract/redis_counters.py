"""The operator's reader of the quota counters in Redis: the sidecar store's own read script.

Only `redis` (with `hiredis`) beyond the base install, both in the operator's extra. Like the
sidecar's store, the client never retries and never waits longer than `timeout_s`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from tollway_sidecar.contract.counters import StoreUnavailable, read_reply, read_request, read_script
from tollway_sidecar.contract.usage_event import USAGE_STREAM_MAXLEN

__all__ = ["RedisCounters", "bounded_client"]


def bounded_client(
    url: str,
    *,
    timeout_s: float,
    max_connections: int,
    password: str | None = None,
    decode_responses: bool = True,
) -> aioredis.Redis:
    """A client that never retries and never waits longer than `timeout_s` (connect and pool waits
    included): a quota store that hangs must fail the call, not hold it past Envoy's timeout.
    `decode_responses=False` for bytes (the cache decodes its own values)."""
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=timeout_s,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        retry=Retry(NoBackoff(), 0),
        health_check_interval=0,
        decode_responses=decode_responses,
        **({"password": password} if password else {}),
    )
    return aioredis.Redis.from_pool(pool)  # owns the pool: aclose() closes it


class RedisCounters:
    def __init__(
        self,
        url: str,
        *,
        timeout_s: float = 1.0,
        password: str | None = None,
        max_connections: int = 4,
        usage_stream_maxlen: int = USAGE_STREAM_MAXLEN,
    ) -> None:
        self.url = url
        self.usage_stream_maxlen = usage_stream_maxlen  # a read's sweep appends expired calls' events
        self.timeout_s = timeout_s
        self._redis = bounded_client(
            url, timeout_s=timeout_s, max_connections=max_connections, password=password
        )
        self._read = self._redis.register_script(read_script())

    def _where(self) -> str:
        return self.url.rsplit("@", 1)[-1]  # never the password

    async def read(self, namespace: str, keys: Sequence[str], now_ms: int) -> dict[str, dict[str, int]]:
        all_keys, args = read_request(namespace, keys, now_ms, self.usage_stream_maxlen)
        try:
            async with asyncio.timeout(self.timeout_s):
                reply = await self._read(keys=all_keys, args=args)
        except (RedisError, OSError, TimeoutError) as exc:
            reason = "timed out" if isinstance(exc, TimeoutError) else f"{type(exc).__name__}: {exc}"
            raise StoreUnavailable(f"Redis at {self._where()} read: {reason}") from exc
        return read_reply(keys, reply)

    async def close(self) -> None:
        await self._redis.aclose()
