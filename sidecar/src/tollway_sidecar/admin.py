"""The admin HTTP port: /healthz, /readyz, /metrics, /spend, and the in-memory store's usage outbox
(`/usage/outbox`, read and acknowledged by a local meter). Bind it to loopback or the Pod only."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Sequence

from aiohttp import web

from tollway_sidecar.contract.usage_event import USAGE_STREAM
from tollway_sidecar.contract.usage_outbox import (
    OUTBOX_ACK_PATH,
    OUTBOX_PATH,
    OutboxAck,
    OutboxWireError,
)
from tollway_sidecar.quota.outbox import Outbox, OutboxAckError
from tollway_sidecar.quota.spend import spend_snapshot
from tollway_sidecar.quota.store import StoreUnavailable
from tollway_sidecar.runtime import Runtime


def create_admin_app(runtime: Runtime, *, peers: Sequence[str] = ()) -> web.Application:
    """The admin app of one process; `peers`: the ext_proc addresses of the Pod's other workers,
    which must all answer for the Pod to be ready (a dead worker is restarted meanwhile)."""

    async def healthz(_request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(_request: web.Request) -> web.Response:
        config = runtime.compiled.config
        down = [address for address in peers if not await _answers(address)]
        if down:
            return web.json_response({"status": "not ready", "workers_down": down}, status=503)
        return web.json_response(
            {
                "status": "ready",
                "config_version": config.version,
                "routes": len(config.routes),
                "keys": len(config.keys),
            }
        )

    async def metrics(_request: web.Request) -> web.Response:
        return web.Response(
            body=runtime.metrics.render(),
            content_type="text/plain",
            charset="utf-8",
            headers={"x-content-type-options": "nosniff"},
        )

    async def spend(request: web.Request) -> web.Response:
        try:
            snapshot = await spend_snapshot(
                runtime.quota, runtime.compiled.config, user=request.query.get("user")
            )
        except StoreUnavailable as exc:
            return web.json_response(
                {"error": f"the quota store is unreachable: {exc}", "store": runtime.quota.store.name},
                status=503,
            )
        return web.Response(text=json.dumps(snapshot, indent=2), content_type="application/json")

    def outbox_or_conflict() -> Outbox | web.Response:
        outbox = getattr(runtime.quota.store, "outbox", None)
        if isinstance(outbox, Outbox):
            return outbox
        return _error(
            409,
            f"the {runtime.quota.store.name} store keeps no outbox here: its usage events are in the "
            f"Redis stream {USAGE_STREAM}; run `tollway meter run --redis URL` to meter them",
            store=runtime.quota.store.name,
        )

    async def outbox_page(request: web.Request) -> web.Response:
        outbox = outbox_or_conflict()
        if isinstance(outbox, web.Response):
            return outbox
        try:
            after = _query_count(request, "after", 0)
            limit = _query_count(request, "limit", 500)
        except OutboxWireError as exc:
            return _error(400, str(exc))
        return web.Response(text=outbox.page(after, limit).to_json(), content_type="application/json")

    async def outbox_ack(request: web.Request) -> web.Response:
        outbox = outbox_or_conflict()
        if isinstance(outbox, web.Response):
            return outbox
        try:
            ack = OutboxAck.from_json(await request.read())
        except OutboxWireError as exc:
            return _error(400, str(exc))
        if ack.outbox != outbox.id:
            # The sidecar restarted since that page was read: its sequence numbers mean other events.
            return _error(409, f"outbox: {ack.outbox} is not this sidecar's outbox ({outbox.id}); read again")
        try:
            acked = outbox.ack(ack.upto)
        except OutboxAckError as exc:
            return _error(409, str(exc))
        return web.json_response({"acked": acked, "pending": len(outbox), "first": outbox.first})

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/spend", spend)
    app.router.add_get(OUTBOX_PATH, outbox_page)
    app.router.add_post(OUTBOX_ACK_PATH, outbox_ack)
    return app


def _error(status: int, message: str, **extra: str) -> web.Response:
    return web.json_response({"error": message, **extra}, status=status)


def _query_count(request: web.Request, name: str, default: int) -> int:
    text = request.query.get(name)
    if text is None:
        return default
    if not (text.isascii() and text.isdigit()) or len(text) > 18:
        raise OutboxWireError(f"{name}: expected an integer >= 0, got {text!r}")
    return int(text)


async def _answers(address: str) -> bool:
    """Whether a worker's ext_proc address accepts a connection (`unix:/path` or `host:port`)."""
    try:
        if address.startswith("unix:"):
            opened = asyncio.open_unix_connection(address.removeprefix("unix:"))
        else:
            host, port = address.rsplit(":", 1)
            opened = asyncio.open_connection(host, int(port))
        _reader, writer = await asyncio.wait_for(opened, timeout=1.0)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True
