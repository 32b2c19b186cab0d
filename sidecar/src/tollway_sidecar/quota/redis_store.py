"""The Redis quota store: each operation is one Lua script, so one atomic round trip.

The client never retries and never waits longer than `timeout_s` (socket, connection and pool
waits included): a slow or unreachable Redis becomes `StoreUnavailable` well inside Envoy's ext_proc
message timeout, and the caller's failure policy decides. After a failure, calls fail at once for
`cooldown_s` instead of each waiting out the timeout; the next call after that tries Redis again.

On a Redis Cluster (`redis+cluster://`) every key a script touches carries its namespace's hash
tag, the usage stream included (`usage_stream_for`), so each operation is still one script on one
primary.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from importlib import resources
from typing import Any, TypeVar

from redis.commands.core import AsyncScript
from redis.exceptions import RedisError

from tollway_sidecar.contract.counters import (
    read_reply,
    read_request,
    read_script,
    sweep_source,
    usage_stream_for,
)
from tollway_sidecar.contract.redis_counters import bounded_client, is_cluster
from tollway_sidecar.contract.usage_event import USAGE_FIELD, USAGE_STREAM_MAXLEN
from tollway_sidecar.quota import resp
from tollway_sidecar.quota.plan import Plan, Settlement
from tollway_sidecar.quota.store import (
    SWEEP_LIMIT,
    Batch,
    ReserveResult,
    StoreUnavailable,
    record_of,
)

__all__ = ["RedisStore", "script_source"]

log = logging.getLogger("tollway.quota.redis")
T = TypeVar("T")


def script_source(name: str) -> str:
    """A script with the shared sweep function in front of it (the read is the operator's too:
    `tollway_sidecar.contract.counters`)."""
    if name == "read":
        return read_script()
    folder = resources.files("tollway_sidecar.quota") / "lua"
    return sweep_source() + "\n" + (folder / f"{name}.lua").read_text()


class RedisStore:
    name = "redis"

    def __init__(
        self,
        url: str,
        *,
        timeout_s: float = 1.0,
        cooldown_s: float = 0.5,
        max_connections: int = 64,
        password: str | None = None,
        usage_stream_maxlen: int = USAGE_STREAM_MAXLEN,
    ) -> None:
        self.url = url
        self.usage_stream_maxlen = usage_stream_maxlen
        self.timeout_s = timeout_s
        self.cooldown_s = cooldown_s
        self._redis = bounded_client(
            url, timeout_s=timeout_s, max_connections=max_connections, password=password
        )
        self._reserve = self._redis.register_script(script_source("reserve"))
        self._settle = self._redis.register_script(script_source("settle"))
        # The request path's scripts go through one pipelined connection (`quota.resp`).
        self._pipe = resp.PipelinedRedis(url, password=password) if resp.supports(url) else None
        self._apply = self._redis.register_script(script_source("apply"))
        self._read = self._redis.register_script(script_source("read"))
        self._down_until = 0.0
        self.sharded = is_cluster(url)

    def stream(self, namespace: str | None) -> str:
        """The usage stream `namespace`'s events go to."""
        return usage_stream_for(namespace, sharded=self.sharded)

    async def _call(self, what: str, make: Callable[[], Awaitable[T]]) -> T:
        if time.monotonic() < self._down_until:
            raise StoreUnavailable(f"Redis at {self._where()} failed moments ago; not retrying yet")
        try:
            async with asyncio.timeout(self.timeout_s):
                return await make()
        except (RedisError, resp.ReplyError, OSError, TimeoutError) as exc:
            self._down_until = time.monotonic() + self.cooldown_s
            if self._pipe is not None and isinstance(exc, TimeoutError | OSError):
                self._pipe.drop()
            reason = "timed out" if isinstance(exc, TimeoutError) else f"{type(exc).__name__}: {exc}"
            raise StoreUnavailable(f"Redis at {self._where()} {what}: {reason}") from exc

    def _where(self) -> str:
        return self.url.rsplit("@", 1)[-1]  # never the password

    def _script(self, script: AsyncScript, keys: list[str], args: list[str | int]) -> Awaitable[Any]:
        if self._pipe is None:
            return script(keys=keys, args=args)
        assert script.sha is not None and isinstance(script.script, str)
        return self._pipe.evalsha(script.script, script.sha, keys, args)

    async def reserve(self, plan: Plan, expiry_event: str | None = None) -> ReserveResult:
        keys = [plan.reservation_key, plan.index_key, self.stream(plan.namespace), *plan.keys]
        position = {key: i + 4 for i, key in enumerate(plan.keys)}  # Lua's KEYS is 1-based
        args: list[str | int] = [
            plan.now_ms,
            plan.rid,
            plan.ttl_ms,
            plan.reservation_prefix,
            SWEEP_LIMIT,
            record_of(plan, expiry_event),
            USAGE_FIELD,
            self.usage_stream_maxlen,
            len(plan.lines),
        ]
        for line in plan.lines:
            args += [
                position[line.key],
                line.used_field,
                line.rsv_field,
                line.amount,
                line.limit,
                line.ttl_ms,
            ]
        reply = await self._call("reserve", lambda: self._script(self._reserve, keys, args))
        values = [int(value) for value in reply]
        return ReserveResult(values[0] == 1, tuple(values[1:]))

    async def settle(self, plan: Plan, settlement: Settlement, now_ms: int, event: str | None = None) -> bool:
        items = [*settlement.deltas, *settlement.tallies]
        counters = list(dict.fromkeys(item.key for item in items))
        position = {key: i + 4 for i, key in enumerate(counters)}
        keys = [plan.reservation_key, plan.index_key, self.stream(plan.namespace), *counters]
        args: list[str | int] = [
            now_ms,
            plan.rid,
            plan.reservation_prefix,
            SWEEP_LIMIT,
            USAGE_FIELD,
            self.usage_stream_maxlen,
            event or "",
            len(items),
        ]
        for item in items:
            args += [position[item.key], item.field, item.amount]
        reply = await self._call("settle", lambda: self._script(self._settle, keys, args))
        return int(reply) == 1

    async def emit(self, event: str, namespace: str | None = None) -> None:
        stream = self.stream(namespace)
        await self._call(
            "emit",
            lambda: self._redis.xadd(
                stream, {USAGE_FIELD: event}, maxlen=self.usage_stream_maxlen, approximate=True
            ),
        )

    async def apply(self, batch: Batch) -> bool:
        counters = list(dict.fromkeys(line.key for line in batch.lines))
        position = {key: i + 2 for i, key in enumerate(counters)}
        args: list[str | int] = [len(batch.lines)]
        for line in batch.lines:
            args += [position[line.key], line.field, line.amount, line.ttl_ms]
        keys = [batch.mark_key, *counters]
        if batch.events:
            keys.append(self.stream(batch.namespace))  # the script's last key
            args += [len(batch.events), USAGE_FIELD, self.usage_stream_maxlen, *batch.events]
        reply = await self._call("apply", lambda: self._apply(keys=keys, args=args))
        return int(reply) == 1

    async def read(self, namespace: str, keys: Sequence[str], now_ms: int) -> dict[str, dict[str, int]]:
        stream = self.stream(namespace)
        all_keys, args = read_request(namespace, keys, now_ms, self.usage_stream_maxlen, stream)
        reply = await self._call("read", lambda: self._read(keys=all_keys, args=args))
        return read_reply(keys, reply)

    async def ping(self) -> None:
        await self._call("ping", self._redis.ping)

    async def close(self) -> None:
        if self._pipe is not None:
            await self._pipe.close()
        await self._redis.aclose()
