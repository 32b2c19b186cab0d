"""The admin HTTP port: /healthz, /readyz, /metrics, /spend. Bind it to loopback or the Pod only."""

from __future__ import annotations

import json

from aiohttp import web

from tollway_sidecar.runtime import Runtime


def create_admin_app(runtime: Runtime) -> web.Application:
    async def healthz(_request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(_request: web.Request) -> web.Response:
        config = runtime.compiled.config
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

    async def spend(_request: web.Request) -> web.Response:
        snapshot = runtime.ledger.snapshot(runtime.compiled.config)
        return web.Response(text=json.dumps(snapshot, indent=2), content_type="application/json")

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/spend", spend)
    return app
