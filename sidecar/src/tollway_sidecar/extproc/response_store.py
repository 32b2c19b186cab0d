"""Which backend stored a Responses API answer, so later calls naming its id reach that backend.

OpenAI (and Azure) keep a response created with `store` not false for 30 days; `GET`/`DELETE
/v1/responses/{id}` and `previous_response_id` only work on the backend that created it. The
router records `id → (key, route, backend)` once such an answer arrives and reads it back for those
calls. Scope is the key: a record read by any other key is treated as unknown (404).

Two stores behind one interface: Redis (the quota store's server, its own client) under
`tw:resp:{<namespace>}:<id>` with a 30-day TTL — the hash tag keeps one namespace's records on one
Redis Cluster slot — or this process's memory (bounded, oldest forgotten first) when the gateway
has no Redis. Any failure reaching Redis is `ResponseStoreUnavailable`.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import OrderedDict
from collections.abc import Awaitable, Coroutine
from dataclasses import dataclass
from typing import Any, Final, Protocol, TypeVar

from redis.exceptions import RedisError

from tollway_sidecar.contract.redis_counters import bounded_client

__all__ = [
    "TTL_S",
    "MemoryResponseStore",
    "RedisResponseStore",
    "ResponseStore",
    "ResponseStoreUnavailable",
    "StoredResponse",
]

T = TypeVar("T")

TTL_S: Final = 30 * 24 * 3600  # OpenAI keeps a stored response 30 days
MEMORY_LIMIT: Final = 100_000  # records one process keeps without Redis (~200 bytes each)
PREFIX: Final = "tw:resp:"


class ResponseStoreUnavailable(Exception):
    """The store could not be read or written (Redis down, timed out)."""


@dataclass(frozen=True, slots=True)
class StoredResponse:
    """Who created a stored response and where it lives."""

    key: str  # the virtual key's id, namespace/name
    route: str  # the route id
    backend: str  # the backend's name on that route

    def encode(self) -> str:
        return json.dumps({"k": self.key, "r": self.route, "b": self.backend}, separators=(",", ":"))

    @classmethod
    def decode(cls, text: str | bytes) -> StoredResponse | None:
        """None for a value that is not a record (written by something else)."""
        try:
            value = json.loads(text)
            return cls(key=value["k"], route=value["r"], backend=value["b"])
        except (ValueError, TypeError, KeyError):
            return None


class ResponseStore(Protocol):
    name: str

    async def put(self, namespace: str, response_id: str, record: StoredResponse) -> None: ...

    async def get(self, namespace: str, response_id: str) -> StoredResponse | None: ...

    async def forget(self, namespace: str, response_id: str) -> None: ...

    async def close(self) -> None: ...


class MemoryResponseStore:
    """One process's records: lost on restart and not shared between replicas or workers."""

    name = "memory"

    def __init__(self, *, limit: int = MEMORY_LIMIT, ttl_s: float = TTL_S) -> None:
        self._items: OrderedDict[tuple[str, str], tuple[float, StoredResponse]] = OrderedDict()
        self._limit, self._ttl_s = limit, ttl_s

    async def put(self, namespace: str, response_id: str, record: StoredResponse) -> None:
        self._items[(namespace, response_id)] = (time.monotonic() + self._ttl_s, record)
        self._items.move_to_end((namespace, response_id))
        while len(self._items) > self._limit:
            self._items.popitem(last=False)

    async def get(self, namespace: str, response_id: str) -> StoredResponse | None:
        found = self._items.get((namespace, response_id))
        if found is None:
            return None
        if found[0] <= time.monotonic():
            del self._items[(namespace, response_id)]
            return None
        return found[1]

    async def forget(self, namespace: str, response_id: str) -> None:
        self._items.pop((namespace, response_id), None)

    async def close(self) -> None:
        return None


class RedisResponseStore:
    name = "redis"

    def __init__(
        self,
        url: str,
        *,
        password: str | None = None,
        timeout_s: float = 0.5,
        cooldown_s: float = 0.5,
        max_connections: int = 16,
        ttl_s: int = TTL_S,
    ) -> None:
        # A lookup runs while Envoy waits for the request-headers reply: bounded, and after a failure
        # calls fail at once for `cooldown_s` instead of each waiting out the timeout.
        self.url, self.timeout_s, self.cooldown_s, self.ttl_s = url, timeout_s, cooldown_s, ttl_s
        self._down_until = 0.0
        self._redis = bounded_client(
            url, timeout_s=timeout_s, max_connections=max_connections, password=password
        )

    @staticmethod
    def key(namespace: str, response_id: str) -> str:
        return f"{PREFIX}{{{namespace}}}:{response_id}"

    async def put(self, namespace: str, response_id: str, record: StoredResponse) -> None:
        await self._call(
            "put", self._redis.set(self.key(namespace, response_id), record.encode(), ex=self.ttl_s)
        )

    async def get(self, namespace: str, response_id: str) -> StoredResponse | None:
        value: Any = await self._call("get", self._redis.get(self.key(namespace, response_id)))
        return None if value is None else StoredResponse.decode(value)

    async def forget(self, namespace: str, response_id: str) -> None:
        await self._call("delete", self._redis.delete(self.key(namespace, response_id)))

    async def close(self) -> None:
        await self._redis.aclose()

    async def _call(self, what: str, awaitable: Awaitable[T]) -> T:
        where = self.url.rsplit("@", 1)[-1]  # never the password
        if time.monotonic() < self._down_until:
            if isinstance(awaitable, Coroutine):
                awaitable.close()  # never awaited: no "was never awaited" warning
            raise ResponseStoreUnavailable(f"Redis at {where} failed moments ago; not retrying yet")
        try:
            async with asyncio.timeout(self.timeout_s):
                return await awaitable
        except (RedisError, OSError, TimeoutError) as exc:
            self._down_until = time.monotonic() + self.cooldown_s
            reason = "timed out" if isinstance(exc, TimeoutError) else type(exc).__name__
            raise ResponseStoreUnavailable(f"Redis at {where} {what}: {reason}") from exc
