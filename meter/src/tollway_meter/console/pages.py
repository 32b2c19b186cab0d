"""The console's pages: aiohttp handlers that read the ledger off the event loop and render
autoescaped jinja2 templates. Read-only: no handler writes to the ledger.

Mounted at /console on the meter's API app (`tollway meter run --console`) or served alone
(`tollway console`). A bad filter is a 400 page naming the parameter. With an authorizer, every page
needs a token (header or login cookie) and reads only the namespaces its user may see.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

import jinja2
from aiohttp import web

from tollway_meter.console import reads
from tollway_meter.console.access import (
    COOKIE,
    OPEN,
    Access,
    Authorizer,
    Forbidden,
    ReviewFailed,
    Unauthenticated,
    token_of,
)
from tollway_meter.console.chart import bar_chart, time_series
from tollway_meter.console.filters import BadFilter, RequestFilter, SessionFilter, TimeRange
from tollway_meter.console.forecast import PERIODS, BudgetSource, Forecast, Limit, forecast
from tollway_meter.console.tree import build_tree
from tollway_meter.ledger import Ledger
from tollway_meter.queries import UsageRow, usage
from tollway_sidecar.contract.periods import period_bounds
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
    env.globals["access"] = None  # pages rendered before access is known (errors, login)
    return env


@dataclass(frozen=True)
class Grouped:
    label: str
    requests: int
    cost_nanos: int


def _label(row: UsageRow) -> str:
    return "/".join(row.keys.values()) or "-"


def _grouped(rows: list[UsageRow]) -> list[Grouped]:
    """The top rows by spend, each labelled by its dimension values joined with '/'."""
    return [Grouped(_label(r), r.requests, r.cost_nanos) for r in rows[:TOP]]


@dataclass(frozen=True)
class Saved:
    label: str
    cache_hits: int
    saved_nanos: int


def _savings(rows: list[UsageRow]) -> list[Saved]:
    """The top groups by what their cache hits saved (only groups with a hit)."""
    hit = sorted((r for r in rows if r.cache_hits), key=lambda r: (-r.saved_nanos, -r.cache_hits, _label(r)))
    return [Saved(_label(r), r.cache_hits, r.saved_nanos) for r in hit[:TOP]]


def _granularity(window: TimeRange) -> str:
    span = window.until - window.since
    return "hour" if span <= timedelta(days=2) else "day" if span <= timedelta(days=120) else "month"


NAMESPACES_SECONDS = 30.0


def _same_origin(request: web.Request) -> None:
    """Refuse a login or logout posted by another site's page (it would log the browser in as
    someone else): browsers send Origin on every cross-site POST."""
    origin = request.headers.get("Origin")
    if origin is not None and urlsplit(origin).netloc != request.host:
        raise Forbidden(f"a login posted from {origin!r}, not from this console")


ACCESS = web.RequestKey("access", Access)


def _access(request: web.Request) -> Access:
    return request[ACCESS]


class Console:
    def __init__(
        self,
        ledger: Ledger,
        jaeger_url: str | None = None,
        clock: Clock | None = None,
        authorizer: Authorizer | None = None,
        budgets: BudgetSource | None = None,
    ) -> None:
        self.ledger = ledger
        self.budgets = budgets
        self.jaeger_url = jaeger_url.rstrip("/") if jaeger_url else None
        self.clock = clock or (lambda: datetime.now(UTC))
        self.authorizer = authorizer
        self.env = _environment()
        self._lock = asyncio.Lock()  # one ledger connection: one query at a time
        self._namespaces: tuple[float, list[str]] | None = None

    async def namespaces(self) -> list[str]:
        """The ledger's namespaces, re-read at most every NAMESPACES_SECONDS."""
        now = time.monotonic()
        if self._namespaces is None or self._namespaces[0] <= now:
            found = await self._run(lambda: reads.namespaces(self.ledger))
            self._namespaces = (now + NAMESPACES_SECONDS, found)
        return self._namespaces[1]

    async def access(self, request: web.Request) -> Access:
        if self.authorizer is None:
            return OPEN
        token = token_of(request.headers.get("Authorization"), request.cookies.get(COOKIE))
        return await self.authorizer.access(token, await self.namespaces())

    async def login_form(self, request: web.Request) -> web.Response:
        return self.login_page(200, "")

    def login_page(self, status: int, message: str) -> web.Response:
        response = self.render("login.html", status, message=message, nav="")
        if status == 401:
            response.headers["WWW-Authenticate"] = 'Bearer realm="tollway-console"'
        return response

    async def login(self, request: web.Request) -> web.Response:
        """Check the posted token, then keep it in an HttpOnly, SameSite=Strict cookie (never in a URL)."""
        _same_origin(request)
        form = await request.post()
        token = str(form.get("token", "")).strip()
        if self.authorizer is not None:
            try:
                await self.authorizer.access(token, [])
            except Unauthenticated as exc:
                return self.login_page(401, str(exc))
        response = web.HTTPSeeOther(PREFIX + "/")
        if self.authorizer is not None:
            response.set_cookie(
                COOKIE, token, path=PREFIX, httponly=True, samesite="Strict", secure=request.secure
            )
        raise response

    async def logout(self, request: web.Request) -> web.Response:
        _same_origin(request)
        response = web.HTTPSeeOther(PREFIX + "/login")
        response.del_cookie(COOKIE, path=PREFIX)
        raise response

    async def _run(self, query: Callable[[], Any]) -> Any:
        async with self._lock:
            return await asyncio.to_thread(query)

    def render(self, template: str, status: int = 200, **context: Any) -> web.Response:
        """A page; `access` in the context shows who is logged in."""
        html = self.env.get_template(template).render(**context)
        return web.Response(text=html, status=status, content_type="text/html", charset="utf-8")

    def _window(self, request: web.Request) -> TimeRange:
        return TimeRange.parse(request.query, self.clock())

    async def overview(self, request: web.Request) -> web.Response:
        window = self._window(request)
        grain = _granularity(window)
        access = _access(request)
        allowed = access.scope(request.query.get("namespace", ""))
        now = self.clock()
        limits = await self.budgets.limits() if self.budgets is not None else None

        def read() -> dict[str, Any]:
            since, until = window.since, window.until

            def rows(by: list[str], granularity: str | None = None) -> list[UsageRow]:
                return usage(self.ledger, by, since, until, granularity, namespaces=allowed)

            teams, models = rows(["team"]), rows(["model"])
            return {
                "totals": rows([]),
                "series": rows([], grain),
                "savings": {"model": _savings(models), "team": _savings(teams)},
                "by": {
                    "team": _grouped(teams),
                    "model": _grouped(models),
                    # A key's name is unique only in its namespace.
                    "key": _grouped(rows(["namespace", "key"])),
                    "provider": _grouped(rows(["provider"])),
                },
                "health": reads.provider_health(self.ledger, window, allowed),
                "budgets": reads.budget_spend(self.ledger, window, allowed),
                "forecasts": self._forecasts(limits, allowed, now),
            }

        found = await self._run(read)
        spend = {r.bucket or "": r.cost_nanos for r in found["series"]}
        chart = bar_chart(time_series(window.since, window.until, grain, spend))
        total = found["totals"][0] if found["totals"] else None
        return self.render(
            "overview.html",
            window=window,
            grain=grain,
            chart=chart,
            total=total,
            **found,
            limits_known=limits is not None,
            nav="overview",
            access=access,
        )

    def _forecasts(
        self, known: dict[str, Limit] | None, allowed: frozenset[str] | None, now: datetime
    ) -> list[Forecast]:
        """Each known budget of the allowed namespaces, against its current period's spend (the
        events' time, up to now): one spend query per period kind in use."""
        limits = [limit for limit in (known or {}).values() if allowed is None or limit.namespace in allowed]
        spent: dict[str, dict[str, int]] = {}
        for period in PERIODS:
            if any(limit.period == period for limit in limits):
                start, _end = period_bounds(period, now)
                rows = reads.budget_spend(self.ledger, TimeRange(start, now), allowed)
                spent[period] = {row.budget: row.cost_nanos for row in rows}
        return [
            forecast(limit, spent[limit.period].get(limit.id, 0), now)
            for limit in sorted(limits, key=lambda limit: limit.id)
        ]

    async def requests(self, request: web.Request) -> web.Response:
        chosen = RequestFilter.parse(request.query, self.clock())
        access = _access(request)
        allowed = access.scope(chosen.namespace)
        page = await self._run(lambda: reads.list_requests(self.ledger, chosen, allowed))
        next_link = (
            f"{PREFIX}/requests?{urlencode(chosen.query(after=page.next.text(), limit=str(chosen.limit)))}"
            if page.next
            else None
        )
        return self.render(
            "requests.html", chosen=chosen, page=page, next_link=next_link, nav="requests", access=access
        )

    async def request(self, request: web.Request) -> web.Response:
        event_id = request.match_info["id"]
        access = _access(request)
        try:
            # Another namespace's request is "not in the ledger" too: a 404 says nothing about it.
            found = await self._run(lambda: reads.get_request(self.ledger, event_id, access.namespaces))
        except ValueError as exc:
            raise BadFilter("id", str(exc).removeprefix("id: ")) from exc
        if found is None:
            return self.render(
                "error.html", 404, message=f"request {event_id}: not in the ledger", nav="", access=access
            )
        event = found.event
        trace = (
            f"{self.jaeger_url}/trace/{quote(event.data.trace_id, safe='')}"
            if self.jaeger_url and event.data.trace_id
            else None
        )
        pretty = json.dumps(json.loads(event.to_json()), indent=2, sort_keys=True)
        sees_content = access.sees_content(event.data.namespace)
        # Read only for a viewer who may see it: content never leaves the database otherwise.
        captured = (
            await self._run(
                lambda: reads.captured_content(self.ledger, str(event.id), event.data.namespace, self.clock())
            )
            if sees_content
            else None
        )
        return self.render(
            "request.html",
            event=event,
            booked=found,
            pretty=pretty,
            trace=trace,
            content=sees_content,
            captured=captured,
            nav="requests",
            access=access,
        )

    async def sessions(self, request: web.Request) -> web.Response:
        chosen = SessionFilter.parse(request.query, self.clock())
        access = _access(request)
        allowed = access.scope(chosen.namespace)
        page = await self._run(lambda: reads.sessions(self.ledger, chosen, allowed))
        next_link = (
            f"{PREFIX}/sessions?{urlencode(chosen.query(after=page.next.text()))}" if page.next else None
        )
        return self.render(
            "sessions.html",
            window=chosen.range,
            chosen=chosen,
            page=page,
            next_link=next_link,
            nav="sessions",
            access=access,
        )

    async def session(self, request: web.Request) -> web.Response:
        session_id = request.match_info["id"]
        access = _access(request)
        calls = await self._run(lambda: reads.session_calls(self.ledger, session_id, access.namespaces))
        if not calls:
            return self.render(
                "error.html",
                404,
                message=f"session {session_id}: no calls in the ledger",
                nav="",
                access=access,
            )
        return self.render(
            "session.html",
            session_id=session_id,
            root=build_tree(calls),
            truncated=len(calls) >= reads.MAX_SESSION_CALLS,
            cap=reads.MAX_SESSION_CALLS,
            nav="sessions",
            access=access,
        )

    async def users(self, request: web.Request) -> web.Response:
        window = self._window(request)
        since, until = window.since, window.until
        access = _access(request)
        allowed = access.scope(request.query.get("namespace", ""))
        found = await self._run(
            lambda: (
                usage(self.ledger, ["end_user"], since, until, namespaces=allowed),
                usage(self.ledger, ["user"], since, until, namespaces=allowed),
            )
        )
        return self.render(
            "users.html", window=window, end_users=found[0], users=found[1], nav="users", access=access
        )

    async def properties(self, request: web.Request) -> web.Response:
        window = self._window(request)
        name = request.query.get("name", "")
        if name and not PROPERTY_NAME.fullmatch(name):
            raise BadFilter("name", f"not a valid property name: {name!r}")
        access = _access(request)
        allowed = access.scope(request.query.get("namespace", ""))

        def read() -> tuple[list[str], list[Any]]:
            names = reads.property_names(self.ledger, window, allowed)
            by = [f"property:{name}"]
            rows = usage(self.ledger, by, window.since, window.until, namespaces=allowed) if name else []
            return names, rows

        names, rows = await self._run(read)
        return self.render(
            "properties.html",
            window=window,
            name=name,
            names=names,
            rows=rows,
            nav="properties",
            access=access,
        )


def _errors(console: Console) -> Any:
    @web.middleware
    async def middleware(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        try:
            if request.path not in OPEN_PATHS:
                request[ACCESS] = await console.access(request)
            return await handler(request)
        except Unauthenticated as exc:
            return console.login_page(401, str(exc))
        except Forbidden as exc:
            return console.render("error.html", 403, message=str(exc), nav="")
        except ReviewFailed as exc:
            # The reason names the meter's own call, never the user's token.
            return console.render("error.html", 503, message=f"cannot check access: {exc}", nav="")
        except BadFilter as exc:
            return console.render("error.html", 400, message=str(exc), param=exc.param, nav="")
        except web.HTTPNotFound:
            return console.render("error.html", 404, message=f"no such page: {request.path}", nav="")

    return middleware


OPEN_PATHS = frozenset({f"{PREFIX}/login", f"{PREFIX}/logout"})


def console_app(
    ledger: Ledger,
    jaeger_url: str | None = None,
    clock: Clock | None = None,
    authorizer: Authorizer | None = None,
    budgets: BudgetSource | None = None,
) -> web.Application:
    """The console as an aiohttp sub-application, to mount at PREFIX. Without an authorizer it is
    open to whoever reaches it (`--auth none`, loopback only)."""
    console = Console(ledger, jaeger_url, clock, authorizer, budgets)
    app = web.Application(middlewares=[_errors(console)])
    app.router.add_get("/login", console.login_form)
    app.router.add_post("/login", console.login)
    app.router.add_post("/logout", console.logout)
    app.router.add_get("/", console.overview)
    app.router.add_get("/requests", console.requests)
    app.router.add_get("/requests/{id}", console.request)
    app.router.add_get("/sessions", console.sessions)
    app.router.add_get("/sessions/{id}", console.session)
    app.router.add_get("/users", console.users)
    app.router.add_get("/properties", console.properties)
    return app


def mount(
    app: web.Application,
    ledger: Ledger,
    jaeger_url: str | None = None,
    clock: Clock | None = None,
    authorizer: Authorizer | None = None,
    budgets: BudgetSource | None = None,
) -> None:
    """Serve the console under PREFIX/ on `app` (the meter's API app or a standalone one)."""

    async def to_slash(_request: web.Request) -> web.Response:
        raise web.HTTPFound(PREFIX + "/")

    # Before the sub-application: its prefix would otherwise claim the bare path (and 404 it).
    app.router.add_get(PREFIX, to_slash)
    app.add_subapp(PREFIX, console_app(ledger, jaeger_url, clock, authorizer, budgets))
