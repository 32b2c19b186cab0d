"""A connection closed under a write is a store failure (ConnectionError, so the failure policy
answers), while the same exception types from anywhere else stay the bugs they are."""

from __future__ import annotations

import asyncio

import pytest
import uvloop
from redis.asyncio.connection import Connection

from tollway_sidecar.contract.redis_counters import _closed_under_a_write


async def test_a_write_on_a_connection_closed_under_it_is_recognised() -> None:
    connection = Connection(host="127.0.0.1", port=1)  # never connected: no writer, as after a teardown
    with pytest.raises(AttributeError) as caught:
        await connection._send_packed_command([b"PING\r\n"])
    assert _closed_under_a_write(caught.value)


def test_the_same_error_from_elsewhere_is_not() -> None:
    with pytest.raises(AttributeError) as caught:
        None.writelines([])  # type: ignore[attr-defined]
    assert not _closed_under_a_write(caught.value)


def test_a_write_on_a_closed_uvloop_transport_is_recognised() -> None:
    # The sidecar runs on uvloop, whose closed transport raises RuntimeError instead.
    async def write_after_close() -> BaseException:
        accepted: list[asyncio.StreamWriter] = []
        server = await asyncio.start_server(lambda r, w: accepted.append(w), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        connection = Connection(host="127.0.0.1", port=port)
        connection._reader, connection._writer = await asyncio.open_connection("127.0.0.1", port)
        connection._writer.transport.abort()
        await asyncio.sleep(0)
        try:
            await connection._send_packed_command([b"PING\r\n"])
        except RuntimeError as exc:
            return exc
        finally:
            await connection.disconnect(nowait=True)
            for writer in accepted:
                writer.close()
            server.close()
            await server.wait_closed()
        raise AssertionError("the write on a closed transport did not fail")

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        assert _closed_under_a_write(runner.run(write_after_close()))
