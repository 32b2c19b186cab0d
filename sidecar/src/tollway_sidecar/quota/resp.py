"""One pipelined Redis connection for the request path's two scripts (reserve and settle).

redis-py's asyncio client costs ~300 µs of Python per command on this path (a pooled connection
checked out and back, its retry wrapper, its parser); the Redis script itself runs in ~70 µs.
This client keeps one connection, writes each command as it comes and matches replies to callers
in order (Redis answers a connection's commands in the order sent), so concurrent calls share the
connection without waiting for one another. Replies are parsed by `hiredis`, Redis' own C parser.

Only what the request path needs: `redis://` and `unix://` URLs (user, password and database from
the URL), `EVALSHA` with a `SCRIPT LOAD` when Redis does not know the script yet. A connection
that fails, or a command that times out, closes the connection and fails every command waiting on
it (as redis-py does); the next command connects again. TLS (`rediss://`) is not handled here: the
store keeps redis-py for those URLs.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

import hiredis
from redis.asyncio.connection import parse_url

__all__ = ["PipelinedRedis", "ReplyError", "supports"]


class ReplyError(Exception):
    """Redis answered the command with an error."""


def supports(url: str) -> bool:
    return url.startswith(("redis://", "unix://"))


def _encode(args: tuple[str | int | bytes, ...]) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


class _Protocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.reader = hiredis.Reader(replyError=ReplyError, encoding="utf-8")
        self.waiting: deque[asyncio.Future[Any]] = deque()
        self.transport: asyncio.WriteTransport | None = None
        self.lost: BaseException | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a stream transport (uvloop's are not asyncio.Transport)

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        while True:
            reply = self.reader.gets()
            if reply is False:
                return
            if not self.waiting:  # never expected: Redis sends nothing unasked on this connection
                continue
            future = self.waiting.popleft()
            if future.done():  # its caller gave up (timed out)
                continue
            if isinstance(reply, ReplyError):
                future.set_exception(reply)
            else:
                future.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = exc or ConnectionResetError("Redis closed the connection")
        self.transport = None
        while self.waiting:
            future = self.waiting.popleft()
            if not future.done():
                future.set_exception(ConnectionResetError(str(self.lost)))

    def send(self, payload: bytes) -> asyncio.Future[Any]:
        if self.transport is None or self.transport.is_closing():
            raise ConnectionResetError("not connected to Redis")
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.waiting.append(future)
        self.transport.write(payload)
        return future


class PipelinedRedis:
    """Callers bound every call with their own timeout and call `drop()` when it fires."""

    def __init__(self, url: str, *, password: str | None = None) -> None:
        options = parse_url(url)
        self._path: str | None = options.get("path")
        self._host: str = options.get("host", "localhost")
        self._port: int = int(options.get("port", 6379))
        self._db = int(options.get("db", 0) or 0)
        self._username: str | None = options.get("username")
        self._password: str | None = password or options.get("password")
        self._protocol: _Protocol | None = None
        self._connecting: asyncio.Future[_Protocol] | None = None

    async def _connect(self) -> _Protocol:
        loop = asyncio.get_running_loop()
        if self._path is not None:
            _, protocol = await loop.create_unix_connection(_Protocol, self._path)
        else:
            _, protocol = await loop.create_connection(_Protocol, self._host, self._port)
        if self._password:
            auth = ("AUTH", self._username, self._password) if self._username else ("AUTH", self._password)
            await protocol.send(_encode(auth))
        if self._db:
            await protocol.send(_encode(("SELECT", self._db)))
        return protocol

    async def _connection(self) -> _Protocol:
        protocol = self._protocol
        if protocol is not None and protocol.transport is not None:
            return protocol
        if self._connecting is None:  # one connect at a time; concurrent callers wait for it
            self._connecting = asyncio.ensure_future(self._connect())
        connecting = self._connecting
        try:
            protocol = await asyncio.shield(connecting)
        finally:
            if connecting.done() and self._connecting is connecting:
                self._connecting = None
        self._protocol = protocol
        return protocol

    async def evalsha(self, source: str, sha: str, keys: list[str], args: list[str | int]) -> Any:
        protocol = await self._connection()
        command = _encode(("EVALSHA", sha, len(keys), *keys, *args))
        try:
            return await protocol.send(command)
        except ReplyError as exc:
            if not str(exc).startswith("NOSCRIPT"):
                raise
        await protocol.send(_encode(("SCRIPT", "LOAD", source)))  # a new or flushed Redis
        return await protocol.send(command)

    def drop(self) -> None:
        """Close the connection (after a timeout): every command waiting on it fails."""
        protocol, self._protocol = self._protocol, None
        if protocol is not None and protocol.transport is not None:
            protocol.transport.abort()

    async def close(self) -> None:
        self.drop()
