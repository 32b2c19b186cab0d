"""Shared per-app state, the per-call context and the response writers (JSON, SSE, failures)."""

from __future__ import annotations

import asyncio
import itertools
import os
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from .knobs import (
    FAIL_BROKEN_STREAM,
    FAIL_EMPTY_BODY,
    FAIL_NEGATIVE_USAGE,
    FAIL_NO_USAGE,
    FAIL_STALL_STREAM,
    FAIL_TRUNCATED_JSON,
    JSON_CT,
    Flavor,
    Knobs,
    error_response,
)
from .settings import MockSettings


@dataclass(slots=True)
class MockState:
    settings: MockSettings
    requests: deque[dict[str, Any]]
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    prefix: str = field(default_factory=lambda: os.urandom(4).hex())
    _counter: Iterator[int] = field(default_factory=itertools.count)

    def new_id(self, kind: str) -> str:
        """``kind`` + a process-unique suffix, e.g. ``chatcmpl-mock1a2b3c4d0000000042``."""
        return f"{kind}mock{self.prefix}{next(self._counter):010d}"

    def record(self, request: web.Request, body: Any, body_text: str | None) -> None:
        if self.requests.maxlen == 0:
            return
        self.requests.append(
            {
                "method": request.method,
                "path": request.path,
                "query": dict(request.query),
                "headers": {k.lower(): v for k, v in request.headers.items()},
                "body": body,
                "body_text": body_text,
                "received_at": time.time(),
            }
        )


STATE_KEY = web.AppKey("tollway_mock_state", MockState)


@dataclass(slots=True)
class Call:
    """One provider request that passed the failure knobs and authentication."""

    request: web.Request
    body: dict[str, Any]
    knobs: Knobs
    state: MockState
    flavor: Flavor
    request_id: str

    @property
    def no_usage(self) -> bool:
        return FAIL_NO_USAGE in self.knobs.fail

    @property
    def broken(self) -> bool:
        return FAIL_BROKEN_STREAM in self.knobs.fail

    @property
    def stalls_midway(self) -> bool:
        return FAIL_STALL_STREAM in self.knobs.fail

    def reported(self, usage: dict[str, Any]) -> dict[str, Any] | None:
        """The usage object to send: none with ``no-usage``, every count negated with
        ``negative-usage`` (nested details included)."""
        if self.no_usage:
            return None
        if FAIL_NEGATIVE_USAGE in self.knobs.fail:
            return {key: _negated(value) for key, value in usage.items()}
        return usage

    def id_headers(self) -> dict[str, str]:
        if self.flavor is Flavor.BEDROCK:
            return {"x-amzn-RequestId": self.request_id}
        name = "request-id" if self.flavor is Flavor.ANTHROPIC else "x-request-id"
        return {name: self.request_id}

    def error(
        self, status: int, message: str, *, param: str | None = None, code: str | None = None
    ) -> web.Response:
        return error_response(
            self.flavor, status, message, request_id=self.request_id, param=param, code=code
        )

    async def json(self, payload: bytes) -> web.StreamResponse:
        """A JSON reply. Failure modes: ``broken-stream`` sends half the body, then resets;
        ``stall-stream`` sends half the body, then nothing more; ``truncated-json`` sends the first
        half as the whole (well-framed) body; ``empty-body`` sends no body at all."""
        fail = self.knobs.fail
        if FAIL_TRUNCATED_JSON in fail:
            payload = payload[: len(payload) // 2]
        elif FAIL_EMPTY_BODY in fail:
            payload = b""
        if not (self.broken or self.stalls_midway):
            return web.Response(body=payload, content_type=JSON_CT, headers=self.id_headers())
        resp = web.StreamResponse(headers=self.id_headers())
        resp.content_type = JSON_CT
        resp.content_length = len(payload)
        try:
            await resp.prepare(self.request)
            await resp.write(payload[: len(payload) // 2])
        except ConnectionResetError:
            return resp
        if self.stalls_midway:
            await stall(self.request, self.state.stopping)
        await abort_connection(self.request, flush=True)
        return resp

    async def stream(
        self,
        head: list[bytes],
        pieces: list[bytes],
        tail: list[bytes],
        *,
        content_type: str = "text/event-stream",
    ) -> web.StreamResponse:
        """Send a streamed reply (SSE, or Bedrock's event-stream frames): headers, ttft, ``head`` +
        first piece, the other pieces, ``tail``.

        With ``x-mock-fail: broken-stream`` only half of the pieces are sent, then the connection
        is reset (no tail, no terminal chunk/event); with ``stall-stream`` the same half is sent,
        then nothing more until the client disconnects (an upstream that hangs mid-stream).
        """
        knobs = self.knobs
        if self.broken or self.stalls_midway:
            pieces, tail = pieces[: len(pieces) // 2], []
        resp = web.StreamResponse(headers={"cache-control": "no-cache", **self.id_headers()})
        resp.content_type = content_type
        if content_type == "text/event-stream":
            resp.charset = "utf-8"
        try:
            await resp.prepare(self.request)
            if knobs.ttft_ms > 0:
                await asyncio.sleep(knobs.ttft_ms / 1000)
            delay = knobs.chunk_delay_ms / 1000
            if delay <= 0:
                await resp.write(b"".join(head + pieces + tail))
            else:
                await resp.write(b"".join(head + pieces[:1]))
                for piece in pieces[1:]:
                    await asyncio.sleep(delay)
                    await resp.write(piece)
                if tail:
                    await resp.write(b"".join(tail))
            if self.stalls_midway:
                await stall(self.request, self.state.stopping)
            if self.broken or self.stalls_midway:
                await abort_connection(self.request, flush=True)
                return resp
            await resp.write_eof()
        except ConnectionResetError:
            pass  # the client went away; nothing left to do
        return resp


async def abort_connection(request: web.BaseRequest, *, flush: bool = False) -> None:
    """Reset the TCP connection (after letting already written bytes reach the socket)."""
    transport = request.transport
    if transport is None:
        return
    if flush:
        for _ in range(200):
            if transport.is_closing() or transport.get_write_buffer_size() == 0:
                break
            await asyncio.sleep(0.005)
    transport.abort()


async def stall(request: web.BaseRequest, stopping: asyncio.Event) -> None:
    """Never answer: wait until the client disconnects or the server shuts down."""
    while not stopping.is_set():
        transport = request.transport
        if transport is None or transport.is_closing():
            return
        await asyncio.sleep(0.1)


def _negated(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _negated(item) for key, item in value.items()}
    if isinstance(value, int) and not isinstance(value, bool):
        return -value if value else -1
    return value


def sse_data(payload: str) -> bytes:
    return f"data: {payload}\n\n".encode()


def sse_event(event: str, payload: str) -> bytes:
    return f"event: {event}\ndata: {payload}\n\n".encode()
