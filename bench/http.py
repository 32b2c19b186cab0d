"""A lean HTTP/1.1 keep-alive client on asyncio protocols: the load generator's wire.

Why not aiohttp's client: it spends ~3.5x more CPU per request than this (about 100 µs against
30 µs on the benchmark machine, both on uvloop), and the load generator shares the two cores with
the systems under test. Why not
`wrk`: Debian's wrk 4.1 has no constant-rate mode (`-R` is wrk2), so it cannot offer a fixed rate,
and its latencies are measured from the actual send (coordinated omission); it also cannot time
individual SSE events.

Each `Connection` carries one request at a time. Timestamps are `time.perf_counter()` taken in
`data_received`, so they include the event loop's own delay, the same for every system measured.
"""

from __future__ import annotations

import asyncio
import itertools
import secrets
import time
from dataclasses import dataclass, field

# A numbered request is unique across the whole run and across runs against one long-lived cache:
# a random run prefix, then a serial shared by every endpoint of this process.
SERIAL_SLOT = b"@" * 16
_RUN = f"{secrets.randbits(32):08x}"
_SERIAL = itertools.count()

_CRLF = b"\r\n"
_HEAD_END = b"\r\n\r\n"


@dataclass(slots=True)
class Endpoint:
    """Where one system serves one scenario, and the exact bytes of the request to send."""

    host: str
    port: int
    request: bytes
    stream: bool = False
    serial_at: int = -1
    """Where `SERIAL_SLOT` is in `request`: each send writes a new number there (same length, so the
    Content-Length holds). -1: the same bytes every time."""

    @classmethod
    def build(
        cls,
        host: str,
        port: int,
        path: str,
        body: bytes,
        headers: dict[str, str],
        *,
        stream: bool = False,
        numbered: bool = False,
    ) -> Endpoint:
        lines = [f"POST {path} HTTP/1.1", f"Host: {host}:{port}", "Content-Type: application/json"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        lines.append(f"Content-Length: {len(body)}")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode()
        request = head + body
        serial_at = request.find(SERIAL_SLOT) if numbered else -1
        if numbered and serial_at < 0:
            raise ValueError("a numbered endpoint's body needs the serial slot (http.SERIAL_SLOT)")
        return cls(host, port, request, stream, serial_at)

    def next_request(self) -> bytes:
        at = self.serial_at
        if at < 0:
            return self.request
        serial = f"{_RUN}{next(_SERIAL) % 10**8:08d}".encode()
        return self.request[:at] + serial + self.request[at + len(SERIAL_SLOT) :]


@dataclass(slots=True)
class Response:
    sent_at: float
    status: int = 0
    head: bytes = b""
    headers_at: float = 0.0
    done_at: float = 0.0
    body: bytes = b""
    events: list[tuple[float, bytes]] = field(default_factory=list)
    """SSE events (`data: ...` blocks) with the time each was complete, for streamed responses."""
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.status == 200


class ConnectionLost(Exception):
    pass


class Connection(asyncio.Protocol):
    """One keep-alive connection; `send` one request at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self._buf = bytearray()
        self._waiter: asyncio.Future[Response] | None = None
        self._resp: Response | None = None
        self._stream = False
        # Parser state: 0 head, 1 content-length body, 2 chunked body, 3 body until close.
        self._phase = 0
        self._remaining = 0
        self._chunk_left = -1  # -1: expecting a chunk-size line
        self._body = bytearray()
        self._events = bytearray()

    @classmethod
    async def open(cls, host: str, port: int) -> Connection:
        loop = asyncio.get_running_loop()
        _transport, protocol = await loop.create_connection(cls, host, port)
        return protocol

    # -- asyncio.Protocol -----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not an asyncio.Transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._waiter is not None and not self._waiter.done():
            if self._phase == 3 and self._resp is not None:
                self._complete(time.perf_counter())
            else:
                self._waiter.set_exception(ConnectionLost(str(exc or "connection closed")))

    def data_received(self, data: bytes) -> None:
        now = time.perf_counter()
        if self._resp is None:
            return  # nothing asked: ignore (a server's stray bytes)
        self._buf += data
        try:
            self._parse(now)
        except ValueError as exc:
            self._fail(f"bad response: {exc}")

    # -- requests -------------------------------------------------------------------------------

    def send(self, request: bytes, *, stream: bool = False) -> asyncio.Future[Response]:
        assert self.transport is not None and self._waiter is None
        loop = asyncio.get_running_loop()
        self._waiter = loop.create_future()
        self._resp = Response(sent_at=time.perf_counter())
        self._stream = stream
        self._phase = 0
        self._body.clear()
        self._events.clear()
        self.transport.write(request)
        return self._waiter

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    # -- parsing --------------------------------------------------------------------------------

    def _parse(self, now: float) -> None:
        resp = self._resp
        assert resp is not None
        buf = self._buf
        if self._phase == 0:
            end = buf.find(_HEAD_END)
            if end < 0:
                return
            resp.head = bytes(buf[:end])
            head = resp.head.split(_CRLF)
            del buf[: end + 4]
            parts = head[0].split(b" ", 2)
            if len(parts) < 2 or not parts[0].startswith(b"HTTP/1."):
                raise ValueError(repr(head[0][:80]))
            resp.status = int(parts[1])
            resp.headers_at = now
            length = -1
            chunked = False
            for line in head[1:]:
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    length = int(value)
                elif name == b"transfer-encoding" and b"chunked" in value.lower():
                    chunked = True
            if chunked:
                self._phase, self._chunk_left = 2, -1
            elif length >= 0:
                self._phase, self._remaining = 1, length
            else:
                self._phase = 3
        if self._phase == 1:
            take = min(self._remaining, len(buf))
            self._deliver(bytes(buf[:take]), now)
            del buf[:take]
            self._remaining -= take
            if self._remaining == 0:
                self._complete(now)
        elif self._phase == 2:
            self._parse_chunked(buf, now)
        elif self._phase == 3:
            self._deliver(bytes(buf), now)
            buf.clear()

    def _parse_chunked(self, buf: bytearray, now: float) -> None:
        # _chunk_left: > 0 bytes of chunk data still due; -1 a size line; -3 the CRLF after a
        # chunk's data; -2 the CRLF after the last (empty) chunk.
        while True:
            left = self._chunk_left
            if left == -1:
                line_end = buf.find(_CRLF)
                if line_end < 0:
                    return
                size = int(bytes(buf[:line_end]).split(b";", 1)[0], 16)
                del buf[: line_end + 2]
                self._chunk_left = size if size > 0 else -2
            elif left in (-2, -3):
                if len(buf) < 2:
                    return
                del buf[:2]
                if left == -2:
                    self._complete(now)
                    return
                self._chunk_left = -1
            else:
                take = min(len(buf), left)
                if take == 0:
                    return
                self._deliver(bytes(buf[:take]), now)
                del buf[:take]
                self._chunk_left = left - take if left > take else -3

    def _deliver(self, data: bytes, now: float) -> None:
        if not data:
            return
        if not self._stream:
            self._body += data
            return
        events = self._events
        events += data
        assert self._resp is not None
        while True:
            cut = events.find(b"\n\n")
            if cut < 0:
                break
            self._resp.events.append((now, bytes(events[:cut])))
            del events[: cut + 2]

    def _complete(self, now: float) -> None:
        resp, waiter = self._resp, self._waiter
        assert resp is not None and waiter is not None
        resp.done_at = now
        resp.body = bytes(self._body)
        self._resp = self._waiter = None
        self._phase = 0
        self._buf.clear()  # no pipelining: nothing after a response belongs to us
        if not waiter.done():
            waiter.set_result(resp)

    def _fail(self, message: str) -> None:
        waiter = self._waiter
        self._resp = self._waiter = None
        self.close()
        if waiter is not None and not waiter.done():
            waiter.set_exception(ConnectionLost(message))


async def fetch(conn: Connection, endpoint: Endpoint, limit_s: float) -> Response:
    """One request on `conn`; a failure is returned as `Response.error` (the connection is closed)."""
    sent = time.perf_counter()
    try:
        return await asyncio.wait_for(conn.send(endpoint.next_request(), stream=endpoint.stream), limit_s)
    except (ConnectionLost, OSError, TimeoutError) as exc:
        conn.close()
        return Response(sent_at=sent, done_at=time.perf_counter(), error=type(exc).__name__ + f": {exc}")
