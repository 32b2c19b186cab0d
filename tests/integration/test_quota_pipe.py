"""The request path's pipelined Redis connection (`quota.resp`) against a real redis-server, on uvloop
as in the sidecar: concurrent callers share one connection and each gets its own reply; a script
Redis forgot is loaded again; a restarted or hung Redis fails the waiting calls and the next call
reconnects."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import uvloop
from redisserver import RedisServer

from tollway_sidecar.quota.redis_store import RedisStore
from tollway_sidecar.quota.resp import PipelinedRedis, ReplyError, supports

ECHO = "redis.call('INCR', KEYS[1]); return {tonumber(ARGV[1]), ARGV[2]}"
SHA = hashlib.sha1(ECHO.encode()).hexdigest()


def run(main: Callable[[], Awaitable[Any]]) -> Any:
    return uvloop.run(main())


def test_which_urls_it_serves() -> None:
    assert supports("redis://127.0.0.1:6379/0")
    assert supports("unix:///run/redis.sock")
    assert not supports("rediss://redis.example:6380/0")  # TLS stays on redis-py


def test_concurrent_callers_share_one_connection_and_get_their_own_replies(redis_server: RedisServer) -> None:
    async def main() -> list[Any]:
        pipe = PipelinedRedis(redis_server.url)
        try:
            # Fifty callers at once, before any connection exists: one connect, fifty replies.
            return await asyncio.gather(
                *(pipe.evalsha(ECHO, SHA, ["{pipe}n"], [i, f"call-{i}"]) for i in range(50))
            )
        finally:
            await pipe.close()

    replies = run(main)
    assert replies == [[i, f"call-{i}"] for i in range(50)]


def test_a_forgotten_script_is_loaded_again(redis_server: RedisServer) -> None:
    async def main() -> tuple[Any, Any]:
        pipe = PipelinedRedis(redis_server.url)
        try:
            first = await pipe.evalsha(ECHO, SHA, ["{pipe}f"], [1, "a"])
            await _command(redis_server, "SCRIPT", "FLUSH")
            return first, await pipe.evalsha(ECHO, SHA, ["{pipe}f"], [2, "b"])
        finally:
            await pipe.close()

    assert run(main) == ([1, "a"], [2, "b"])


def test_a_script_error_is_the_callers_and_the_connection_goes_on(redis_server: RedisServer) -> None:
    broken = "return redis.call('NOSUCHCOMMAND')"
    broken_sha = hashlib.sha1(broken.encode()).hexdigest()

    async def main() -> Any:
        pipe = PipelinedRedis(redis_server.url)
        try:
            with pytest.raises(ReplyError):
                await pipe.evalsha(broken, broken_sha, [], [])
            return await pipe.evalsha(ECHO, SHA, ["{pipe}e"], [3, "c"])
        finally:
            await pipe.close()

    assert run(main) == [3, "c"]


@pytest.fixture
def own_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of the test's own, which it may stop, restart or pause."""
    server = RedisServer(tmp_path / "redis")
    server.start()
    try:
        yield server
    finally:
        server.stop()


Body = Callable[[RedisStore, PipelinedRedis], Awaitable[Any]]


def with_store(server: RedisServer, timeout_s: float, body: Body) -> Any:
    """Run `body` on uvloop with a RedisStore (no cool-down) and its pipelined connection."""

    async def main() -> Any:
        store = RedisStore(server.url, timeout_s=timeout_s, cooldown_s=0.0)
        try:
            assert store._pipe is not None
            return await body(store, store._pipe)
        finally:
            await store.close()

    return run(main)


def test_a_restarted_redis_fails_the_call_in_flight_and_the_next_one_reconnects(
    own_server: RedisServer,
) -> None:
    async def body(store: RedisStore, pipe: PipelinedRedis) -> Any:
        assert await pipe.evalsha(ECHO, SHA, ["{pipe}r"], [1, "before"]) == [1, "before"]
        await asyncio.to_thread(own_server.stop)
        with pytest.raises((ConnectionResetError, ConnectionRefusedError)):
            await pipe.evalsha(ECHO, SHA, ["{pipe}r"], [2, "down"])
        await asyncio.to_thread(own_server.start)  # same port, empty, no scripts loaded
        return await pipe.evalsha(ECHO, SHA, ["{pipe}r"], [3, "after"])

    assert with_store(own_server, 1.0, body) == [3, "after"]


def test_a_hung_redis_times_out_and_the_store_recovers_when_it_answers(own_server: RedisServer) -> None:
    store_errors: list[str] = []

    async def body(store: RedisStore, pipe: PipelinedRedis) -> Any:
        await pipe.evalsha(ECHO, SHA, ["{pipe}h"], [1, "before"])
        own_server.pause()
        try:
            await store._call("reserve", lambda: pipe.evalsha(ECHO, SHA, ["{pipe}h"], [2, "hung"]))
        except Exception as exc:
            store_errors.append(str(exc))
        finally:
            own_server.resume()
        return await store._call("reserve", lambda: pipe.evalsha(ECHO, SHA, ["{pipe}h"], [3, "after"]))

    assert with_store(own_server, 0.3, body) == [3, "after"]
    assert store_errors == [f"Redis at {own_server.url} reserve: timed out"]


async def _command(server: RedisServer, *args: str) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    parts = [f"*{len(args)}\r\n".encode()] + [f"${len(a)}\r\n{a}\r\n".encode() for a in args]
    writer.write(b"".join(parts))
    await writer.drain()
    assert (await reader.readline()).startswith(b"+OK")
    writer.close()
    await writer.wait_closed()
