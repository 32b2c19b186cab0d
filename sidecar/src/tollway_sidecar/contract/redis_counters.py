"""The operator's reader of the quota counters in Redis, and the one Redis client factory.

`bounded_client` is how every component (sidecar, operator, meter) connects: one Redis for
`redis://`, `rediss://` and `unix://` URLs, redis-py's Redis Cluster client for
`redis+cluster://host:port[,host:port...]` (`rediss+cluster://` for TLS; the hosts are seeds, the
client learns the rest from CLUSTER SLOTS). Only `redis` (with `hiredis`) beyond the base install,
both in the operator's extra. Like the sidecar's store, the client never retries and never waits
longer than `timeout_s`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any
from urllib.parse import unquote, urlsplit

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from tollway_sidecar.contract.counters import (
    StoreUnavailable,
    read_reply,
    read_request,
    read_script,
    usage_stream_for,
)
from tollway_sidecar.contract.usage_event import USAGE_STREAM_MAXLEN

__all__ = ["CLUSTER_SCHEMES", "RedisClient", "RedisCounters", "bounded_client", "is_cluster"]

CLUSTER_SCHEMES = ("redis+cluster://", "rediss+cluster://")

RedisClient = aioredis.Redis | RedisCluster


def is_cluster(url: str) -> bool:
    """Whether `url` names a Redis Cluster (then each namespace has its own usage stream)."""
    return url.startswith(CLUSTER_SCHEMES)


class BoundedCluster(RedisCluster):
    """redis-py's cluster client with at most `max_in_flight` commands at a time, each waiting at
    most `wait_s` for its turn: its own per-node pool raises at once when full instead of waiting."""

    def __init__(self, *, max_in_flight: int, wait_s: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._turns = asyncio.Semaphore(max_in_flight)
        self._wait_s = wait_s
        self._loading = asyncio.Lock()
        self._loaded: set[str] = set()

    def register_script(self, script: Any) -> AsyncScript:  # type: ignore[override]  # async: its own kind
        return _ClusterScript(self, script)

    async def load_once(self, script: AsyncScript) -> None:
        # Many EVALSHAs meeting NOSCRIPT at once (a fresh cluster) break redis-py's cluster
        # connections: each script is loaded on every primary once, before its first call.
        if script.sha in self._loaded:
            return
        async with self._loading:
            if script.sha not in self._loaded:
                await self.script_load(script.script)
                self._loaded.add(str(script.sha))

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        async with asyncio.timeout(self._wait_s):
            await self._turns.acquire()
        try:
            return await super().execute_command(*args, **kwargs)
        except (AttributeError, TypeError, RuntimeError) as exc:
            if not _closed_under_a_write(exc):
                raise
            raise RedisConnectionError(f"connection closed during a write: {exc}") from exc
        finally:
            self._turns.release()


# A write on a connection closed under it (a dead primary's connections are dropped while other
# calls write on them) escapes redis-py 8.1 as what the transport raises: AttributeError/TypeError
# ('NoneType' has no 'writelines') on asyncio's, RuntimeError ("the handler is closed") on uvloop's.
_TRANSPORT = ("asyncio/streams.py", "asyncio/selector_events.py", "asyncio/transports.py")


def _closed_under_a_write(exc: BaseException) -> bool:
    """Whether `exc` came out of the transport beneath redis-py's connection (a torn connection:
    a store failure), not from our code or redis-py's command logic (a bug, raised as it is)."""
    files = []
    frame = exc.__traceback__
    while frame is not None:
        files.append(frame.tb_frame.f_code.co_filename.replace("\\", "/"))
        frame = frame.tb_next
    while files and (
        files[-1].endswith(_TRANSPORT) or files[-1].startswith("uvloop/") or "/uvloop/" in files[-1]
    ):
        files.pop()
    return bool(files) and files[-1].endswith("redis/asyncio/connection.py")


class _ClusterScript(AsyncScript):
    async def __call__(self, keys: Any = None, args: Any = None, client: Any = None) -> Any:
        assert isinstance(self.registered_client, BoundedCluster)
        await self.registered_client.load_once(self)
        return await super().__call__(keys, args, client)


def _cluster_client(
    url: str, *, timeout_s: float, max_connections: int, password: str | None, decode_responses: bool
) -> BoundedCluster:
    parts = urlsplit(url)
    seeds = parts.netloc.rsplit("@", 1)[-1]
    auth: dict[str, Any] = {}
    if "@" in parts.netloc:
        user, _, secret = parts.netloc.rsplit("@", 1)[0].rpartition(":")
        auth = {"username": unquote(user) or None, "password": unquote(secret) or None}
    if password:
        auth["password"] = password
    nodes = []
    for seed in seeds.split(","):
        host, _, port = seed.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"a Redis Cluster URL lists host:port seeds, got {seed!r}")
        nodes.append(ClusterNode(host.strip("[]"), int(port)))
    return BoundedCluster(
        max_in_flight=max_connections,
        wait_s=timeout_s,
        startup_nodes=nodes,
        ssl=url.startswith("rediss+"),
        max_connections=max_connections,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        retry=Retry(NoBackoff(), 0),
        decode_responses=decode_responses,
        **auth,
    )


def bounded_client(
    url: str,
    *,
    timeout_s: float,
    max_connections: int,
    password: str | None = None,
    decode_responses: bool = True,
) -> RedisClient:
    """A client that never retries and never waits longer than `timeout_s` (connect and pool waits
    included): a quota store that hangs must fail the call, not hold it past Envoy's timeout.
    `decode_responses=False` for bytes (the cache decodes its own values). A `redis+cluster://`
    URL gives a cluster client: a command that meets a failed primary fails like a single Redis's,
    and the next one first learns the cluster's slots again (a promoted replica included)."""
    if is_cluster(url):
        return _cluster_client(
            url,
            timeout_s=timeout_s,
            max_connections=max_connections,
            password=password,
            decode_responses=decode_responses,
        )
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
        self._cluster = is_cluster(url)

    def _where(self) -> str:
        return self.url.rsplit("@", 1)[-1]  # never the password

    async def read(self, namespace: str, keys: Sequence[str], now_ms: int) -> dict[str, dict[str, int]]:
        stream = usage_stream_for(namespace, sharded=self._cluster)
        all_keys, args = read_request(namespace, keys, now_ms, self.usage_stream_maxlen, stream)
        try:
            async with asyncio.timeout(self.timeout_s):
                reply = await self._read(keys=all_keys, args=args)
        except (RedisError, OSError, TimeoutError) as exc:
            reason = "timed out" if isinstance(exc, TimeoutError) else f"{type(exc).__name__}: {exc}"
            raise StoreUnavailable(f"Redis at {self._where()} read: {reason}") from exc
        return read_reply(keys, reply)

    async def close(self) -> None:
        await self._redis.aclose()
