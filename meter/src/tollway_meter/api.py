"""The meter's JSON query API: usage by dimensions, the most expensive requests, one request, and
invoices. Errors use the OpenAI error shape, like the gateway's.

Queries run on their own ledger connection in a worker thread (the event loop never waits on the
database), one at a time: the connection is not shared with the consumer.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import web

from tollway_meter.invoice import build_invoice, invoice_json
from tollway_meter.ledger import Ledger
from tollway_meter.queries import get_request, top_requests, usage
from tollway_sidecar.contract.usage_event import nanos_to_usd

MAX_TOP = 1000


class BadParameter(ValueError):
    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param


def error(
    status: int, message: str, param: str | None = None, code: str = "invalid_parameter"
) -> web.Response:
    body = {"error": {"message": message, "type": "invalid_request_error", "param": param, "code": code}}
    return web.json_response(body, status=status)


def _time(request: web.Request, name: str, default: datetime) -> datetime:
    text = request.query.get(name)
    if text is None:
        return default
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise BadParameter(name, f"{name}: expected an ISO 8601 time, got {text!r}") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _range(request: web.Request) -> tuple[datetime, datetime]:
    now = datetime.now(UTC)
    return _time(request, "since", now - timedelta(days=7)), _time(request, "until", now + timedelta(hours=1))


class MeterApi:
    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self._lock = asyncio.Lock()

    async def _run(self, query: Callable[[], Any]) -> Any:
        async with self._lock:
            return await asyncio.to_thread(query)

    async def usage(self, request: web.Request) -> web.Response:
        by = [d for d in request.query.get("by", "").split(",") if d]
        granularity = request.query.get("granularity")
        since, until = _range(request)
        try:
            rows = await self._run(lambda: usage(self.ledger, by, since, until, granularity))
        except ValueError as exc:
            raise BadParameter("by" if str(exc).startswith("by") else "granularity", str(exc)) from exc
        return web.json_response(
            {
                "by": by,
                "granularity": granularity,
                "since": since.isoformat(),
                "until": until.isoformat(),
                "rows": [
                    {
                        **({"bucket": r.bucket} if granularity else {}),
                        **r.keys,
                        "requests": r.requests,
                        "billable_requests": r.billable_requests,
                        "cost_usd": str(r.cost),
                        "tokens": {
                            "input": r.input_tokens,
                            "output": r.output_tokens,
                            "cached_read": r.cached_read_tokens,
                            "cache_write": r.cache_write_tokens,
                            "reasoning": r.reasoning_tokens,
                        },
                    }
                    for r in rows
                ],
            }
        )

    async def top(self, request: web.Request) -> web.Response:
        text = request.query.get("n", "10")
        if not text.isdigit() or not 1 <= int(text) <= MAX_TOP:
            raise BadParameter("n", f"n: expected an integer from 1 to {MAX_TOP}, got {text!r}")
        since, until = _range(request)
        found = await self._run(lambda: top_requests(self.ledger, int(text), since, until))
        return web.json_response(
            {
                "requests": [
                    {
                        "id": r.id,
                        "time": r.time if isinstance(r.time, str) else r.time.isoformat(),
                        "namespace": r.namespace,
                        "key_name": r.key_name,
                        "team": r.team,
                        "model": r.model,
                        "cost_usd": str(nanos_to_usd(r.cost_nanos)),
                    }
                    for r in found
                ]
            }
        )

    async def one(self, request: web.Request) -> web.Response:
        event_id = request.match_info["id"]
        try:
            found = await self._run(lambda: get_request(self.ledger, event_id))
        except ValueError as exc:
            raise BadParameter("id", str(exc)) from exc
        if found is None:
            return error(404, f"request {event_id}: not in the ledger", "id", "not_found")
        body = json.loads(found.event.to_json())
        return web.json_response(
            {"event": body, "booked_period": found.booked_period, "adjustment": found.adjustment}
        )

    async def invoice(self, request: web.Request) -> web.Response:
        period = request.match_info["period"]
        by = [d for d in request.query.get("by", "team").split(",") if d]
        try:
            built = await self._run(lambda: build_invoice(self.ledger, period, by))
        except ValueError as exc:
            raise BadParameter("period" if str(exc).startswith("period") else "by", str(exc)) from exc
        return web.Response(text=invoice_json(built), content_type="application/json")


@web.middleware
async def _errors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> Any:
    try:
        return await handler(request)
    except BadParameter as exc:
        return error(400, str(exc), exc.param)
    except web.HTTPNotFound:
        return error(404, f"no such endpoint: {request.method} {request.path}", None, "not_found")


def create_app(ledger: Ledger) -> web.Application:
    api = MeterApi(ledger)
    app = web.Application(middlewares=[_errors])
    app.router.add_get("/healthz", _ok)
    app.router.add_get("/v1/usage", api.usage)
    app.router.add_get("/v1/requests/top", api.top)
    app.router.add_get("/v1/requests/{id}", api.one)
    app.router.add_get("/v1/invoices/{period}", api.invoice)
    return app


async def _ok(_request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})
