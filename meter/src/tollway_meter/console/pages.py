"""The console's pages: aiohttp handlers that read the ledger off the event loop and render
autoescaped jinja2 templates. Read-only: no handler writes to the ledger.

Mounted at /console on the meter's API app (`tollway meter run --console`) or served alone
(`tollway console`). A bad filter is a 400 page naming the parameter.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote, urlencode

import jinja2
from aiohttp import web

from tollway_meter.console import reads
from tollway_meter.console.chart import bar_chart, time_series
from tollway_meter.console.filters import BadFilter, RequestFilter, TimeRange
from tollway_meter.console.tree import build_tree
from tollway_meter.ledger import Ledger
from tollway_meter.queries import UsageRow, get_request, usage
from tollway_sidecar.contract.usage_event import PROPERTY_NAME, nanos_to_usd

PREFIX = "/console"
TOP = 10
Clock = Callable[[], datetime]


def usd(nanos: int) -> str:
    """Exact dollars from integer nano-USD: all nine fraction digits, no float on the way."""
    return "$" + format(nanos_to_usd(nanos), "f")


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("tollway_meter.console", "templates"),
        autoescape=True,  # every value from an event is text to show, never markup
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["usd"] = usd
    env.filters["when"] = lambda moment: moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")
    env.globals["prefix"] = PREFIX
    env.globals["qs"] = lambda params: urlencode(params)
    return env


@dataclass(frozen=True)
class Grouped:
    label: str
    requests: int
    cost_nanos: int


def _grouped(rows: list[UsageRow]) -> list[Grouped]:
    """The top rows by spend, each labelled by its dimension values joined with '/'."""
    return [Grouped("/".join(r.keys.values()) or "-", r.requests, r.cost_nanos) for r in rows[:TOP]]


def _granularity(window: TimeRange) -> str:
    span = window.until - window.since
    return "hour" if span <= timedelta(days=2) else "day" if span <= timedelta(days=120) else "month"


class Console:
    def __init__(self, ledger: Ledger, jaeger_url: str | None = None, clock: Clock | None = None) -> None:
        self.ledger = ledger
        self.jaeger_url = jaeger_url.rstrip("/") if jaeger_url else None
        self.clock = clock or (lambda: datetime.now(UTC))
        self.env = _environment()
        self._lock = asyncio.Lock()  # one ledger connection: one query at a time

    async def _run(self, query: Callable[[], Any]) -> Any:
        async with self._lock:
            return await asyncio.to_thread(query)

    def render(self, template: str, status: int = 200, **context: Any) -> web.Response:
        html = self.env.get_template(template).render(**context)
        return web.Response(text=html, status=status, content_type="text/html", charset="utf-8")

    def _window(self, request: web.Request) -> TimeRange:
        return TimeRange.parse(request.query, self.clock())

    async def overview(self, request: web.Request) -> web.Response:
        window = self._window(request)
        grain = _granularity(window)

        def read() -> dict[str, Any]:
            since, until = window.since, window.until
            return {
                "totals": usage(self.ledger, [], since, until),
                "series": usage(self.ledger, [], since, until, grain),
                "by": {
                    "team": _grouped(usage(self.ledger, ["team"], since, until)),
                    "model": _grouped(usage(self.ledger, ["model"], since, until)),
                    # A key's name is unique only in its namespace.
                    "key": _grouped(usage(self.ledger, ["namespace", "key"], since, until)),
                    "provider": _grouped(usage(self.ledger, ["provider"], since, until)),
                },
                "health": reads.provider_health(self.ledger, window),
                "budgets": reads.budget_spend(self.ledger, window),
            }

        found = await self._run(read)
        spend = {r.bucket or "": r.cost_nanos for r in found["series"]}
        chart = bar_chart(time_series(window.since, window.until, grain, spend))
        total = found["totals"][0] if found["totals"] else None
        return self.render(
            "overview.html", window=window, grain=grain, chart=chart, total=total, **found, nav="overview"
        )

    async def requests(self, request: web.Request) -> web.Response:
        chosen = RequestFilter.parse(request.query, self.clock())
        page = await self._run(lambda: reads.list_requests(self.ledger, chosen))
        next_link = (
            f"{PREFIX}/requests?{urlencode(chosen.query(after=page.next.text(), limit=str(chosen.limit)))}"
            if page.next
            else None
        )
        return self.render("requests.html", chosen=chosen, page=page, next_link=next_link, nav="requests")

    async def request(self, request: web.Request) -> web.Response:
        event_id = request.match_info["id"]
        try:
            found = await self._run(lambda: get_request(self.ledger, event_id))
        except ValueError as exc:
            raise BadFilter("id", str(exc).removeprefix("id: ")) from exc
        if found is None:
            return self.render("error.html", 404, message=f"request {event_id}: not in the ledger", nav="")
        event = found.event
        trace = (
            f"{self.jaeger_url}/trace/{quote(event.data.trace_id, safe='')}"
            if self.jaeger_url and event.data.trace_id
            else None
        )
        pretty = json.dumps(json.loads(event.to_json()), indent=2, sort_keys=True)
        return self.render(
            "request.html", event=event, booked=found, pretty=pretty, trace=trace, nav="requests"
        )

    async def sessions(self, request: web.Request) -> web.Response:
        window = self._window(request)
        found = await self._run(lambda: reads.sessions(self.ledger, window))
        return self.render(
            "sessions.html", window=window, sessions=found, cap=reads.MAX_SESSIONS, nav="sessions"
        )

    async def session(self, request: web.Request) -> web.Response:
        session_id = request.match_info["id"]
        calls = await self._run(lambda: reads.session_calls(self.ledger, session_id))
        if not calls:
            return self.render(
                "error.html", 404, message=f"session {session_id}: no calls in the ledger", nav=""
            )
        return self.render(
            "session.html",
            session_id=session_id,
            root=build_tree(calls),
            truncated=len(calls) >= reads.MAX_SESSION_CALLS,
            cap=reads.MAX_SESSION_CALLS,
            nav="sessions",
        )

    async def users(self, request: web.Request) -> web.Response:
        window = self._window(request)
        since, until = window.since, window.until
        found = await self._run(
            lambda: (
                usage(self.ledger, ["end_user"], since, until),
                usage(self.ledger, ["user"], since, until),
            )
        )
        return self.render("users.html", window=window, end_users=found[0], users=found[1], nav="users")

    async def properties(self, request: web.Request) -> web.Response:
        window = self._window(request)
        name = request.query.get("name", "")
        if name and not PROPERTY_NAME.fullmatch(name):
            raise BadFilter("name", f"not a valid property name: {name!r}")

        def read() -> tuple[list[str], list[Any]]:
            names = reads.property_names(self.ledger, window)
            rows = usage(self.ledger, [f"property:{name}"], window.since, window.until) if name else []
            return names, rows

        names, rows = await self._run(read)
        return self.render(
            "properties.html", window=window, name=name, names=names, rows=rows, nav="properties"
        )


def _errors(console: Console) -> Any:
    @web.middleware
    async def middleware(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        try:
            return await handler(request)
        except BadFilter as exc:
            return console.render("error.html", 400, message=str(exc), param=exc.param, nav="")
        except web.HTTPNotFound:
            return console.render("error.html", 404, message=f"no such page: {request.path}", nav="")

    return middleware


def console_app(ledger: Ledger, jaeger_url: str | None = None, clock: Clock | None = None) -> web.Application:
    """The console as an aiohttp sub-application, to mount at PREFIX."""
    console = Console(ledger, jaeger_url, clock)
    app = web.Application(middlewares=[_errors(console)])
    app.router.add_get("/", console.overview)
    app.router.add_get("/requests", console.requests)
    app.router.add_get("/requests/{id}", console.request)
    app.router.add_get("/sessions", console.sessions)
    app.router.add_get("/sessions/{id}", console.session)
    app.router.add_get("/users", console.users)
    app.router.add_get("/properties", console.properties)
    return app


def mount(
    app: web.Application, ledger: Ledger, jaeger_url: str | None = None, clock: Clock | None = None
) -> None:
    """Serve the console under PREFIX/ on `app` (the meter's API app or a standalone one)."""

    async def to_slash(_request: web.Request) -> web.Response:
        raise web.HTTPFound(PREFIX + "/")

    # Before the sub-application: its prefix would otherwise claim the bare path (and 404 it).
    app.router.add_get(PREFIX, to_slash)
    app.add_subapp(PREFIX, console_app(ledger, jaeger_url, clock))
