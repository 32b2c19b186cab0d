"""Steady load on a gateway while a test breaks something: each call's key, times, status and cost."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal

from reliability_env import Client, Reply, chat_body, key_value


@dataclass(frozen=True)
class Call:
    key: str
    origin: str
    started: float
    ended: float
    status: int
    code: str | None  # the error object's code, or the transport error for status 0
    cost: Decimal | None

    @classmethod
    def of(cls, key: str, origin: str, reply: Reply) -> Call:
        error = reply.error_object()
        code = error["code"] if error else reply.error
        return cls(key, origin, reply.started, reply.ended, reply.status, code, reply.cost)


@dataclass
class Load:
    """`workers` sequential callers per (origin, key) until `stop()`; every call is kept."""

    origins: list[str]
    keys: list[str]
    workers: int = 3
    headers: dict[str, str] = field(default_factory=dict)
    pause_s: float = 0.01
    timeout_s: float = 10.0
    calls: list[Call] = field(default_factory=list)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _clients: list[Client] = field(default_factory=list)

    async def start(self) -> None:
        for origin in self.origins:
            client = Client(origin, limit=self.workers * len(self.keys))
            await client.__aenter__()
            self._clients.append(client)
            for key in self.keys:
                for _ in range(self.workers):
                    self._tasks.append(asyncio.create_task(self._worker(client, origin, key)))

    async def _worker(self, client: Client, origin: str, key: str) -> None:
        headers = {
            "authorization": f"Bearer {key_value(key)}",
            "content-type": "application/json",
            **self.headers,
        }
        while not self._stop.is_set():
            reply = await client.send(
                "POST", "/v1/chat/completions", chat_body(), headers, timeout_s=self.timeout_s
            )
            self.calls.append(Call.of(key, origin, reply))
            # A refused connection comes back at once: do not spin on a gateway that is down.
            await asyncio.sleep(self.pause_s if reply.status else 0.1)

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)
        for client in self._clients:
            await client.__aexit__(None, None, None)

    def select(self, key: str, where: Callable[[Call], bool]) -> list[Call]:
        return [call for call in self.calls if call.key == key and where(call)]


def now() -> float:
    return time.monotonic()
