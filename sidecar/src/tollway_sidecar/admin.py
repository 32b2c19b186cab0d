"""The admin HTTP port: /healthz, /readyz, /metrics, /spend. Bind it to loopback or the Pod only."""

from __future__ import annotations

import json

from aiohttp import web

from tollway_sidecar.quota.spend import spend_snapshot
from tollway_sidecar.quota.store import StoreUnavailable
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

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/spend", spend)
    return app
