"""The console's pages over a ledger filled through `Ledger.ingest`, on SQLite and PostgreSQL: each
page renders, the numbers shown are the ledger's, filters select exactly the matching requests,
pagination visits every row once, and text from events is escaped."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from urllib.parse import quote

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from console_html import Page, body_rows, read_page
from ledger_events import NOV, make_event, spread

from tollway_meter.api import create_app
from tollway_meter.console import mount
from tollway_meter.console.pages import usd
from tollway_meter.ledger import Ledger
from tollway_meter.queries import usage
from tollway_sidecar.contract.usage_event import Attempt, UsageEvent

JAEGER = "http://jaeger.example:16686"
WINDOW = "since=2026-11-01T00:00:00%2B00:00&until=2026-12-01T00:00:00%2B00:00"
SINCE, UNTIL = datetime(2026, 11, 1, tzinfo=UTC), datetime(2026, 12, 1, tzinfo=UTC)
SCRIPT = "<script>alert('x')</script>"


def varied() -> list[UsageEvent]:
    """Spread events plus the shapes the pages treat specially: errors, fallbacks, a session tree,
    several calls at the same instant (the cursor's tie-break), an unbillable call, a tiny cost."""
    same = NOV.replace(hour=11, minute=0)
    extra = [
        make_event(at=same, cost="0.000000001", end_user="u-1", key_name="bob", status=500, outcome="error"),
        make_event(at=same, cost="0.5", end_user="u-2", team="sales"),
        make_event(at=same, cost="0.25", end_user="u-1", billable=False),
        make_event(
            at=NOV.replace(hour=12),
            cost="0.010000000",
            attempts=(Attempt("a", "openai", "gpt-4o-mini", 503), Attempt("b", "anthropic", "claude", 200)),
            session_id="chat-9",
            session_path="/support",
            trace_id="4bf92f3577b34da6a3ce929d0e0e4736",
            ttft_ms=42,
            budgets=("team-a/monthly", "org/yearly"),
        ),
        make_event(
            at=NOV.replace(hour=12, minute=1),
            cost="0.020000000",
            session_id="chat-9",
            session_path="/support/lookup",
        ),
        make_event(
            at=NOV.replace(hour=12, minute=2),
            cost="0.030000000",
            session_id="chat-9",
            session_path="/support/lookup",
        ),
        make_event(
            at=NOV.replace(hour=12, minute=3),
            cost="0.040000000",
            session_id="chat-9",
            session_path="/billing",
        ),
        make_event(at=NOV.replace(hour=13), properties={"feature": SCRIPT}, session_id=SCRIPT, team=SCRIPT),
        make_event(at=NOV.replace(day=20, hour=8), cost="1.000000000", team="ops"),
        # Response-cache hits: a saving, the smallest one, and a hit that states none.
        make_event(
            at=NOV.replace(hour=13, minute=30), cost="0", cache="HIT", saved="0.123456789", team="sales"
        ),
        make_event(
            at=NOV.replace(hour=13, minute=35),
            cost="0",
            cache="SEMANTIC_HIT",
            saved="0.000000001",
            model="claude-sonnet",
        ),
        make_event(at=NOV.replace(day=20, hour=9), cost="0", cache="HIT", team="ops"),
        make_event(at=NOV.replace(day=20, hour=10), cost="0.2", cache="MISS", team="ops"),
    ]
    return [*spread(40), *extra]


@pytest.fixture
async def filled(
    ledger: Ledger,
) -> AsyncIterator[tuple[TestClient[web.Request, web.Application], list[UsageEvent]]]:
    events = varied()
    ledger.ingest(events)
    app = web.Application()
    mount(app, ledger, JAEGER, clock=lambda: NOV + timedelta(days=1))
    async with TestClient(TestServer(app)) as client:
        yield client, events


async def page(
    client: TestClient[web.Request, web.Application], path: str, status: int = 200
) -> tuple[str, Page]:
    answer = await client.get(path)
    html = await answer.text()
    assert answer.status == status, html
    assert answer.content_type == "text/html"
    return html, read_page(html)


def cost_cell(nanos: int) -> str:
    return usd(nanos)


def cache_savings(events: list[UsageEvent], dimension: str) -> list[list[str]]:
    """The overview's savings table for a dimension, from the events themselves."""
    sums: dict[str, tuple[int, int]] = {}
    for e in events:
        if e.data.cache in ("HIT", "SEMANTIC_HIT"):
            hits, saved = sums.get(getattr(e.data, dimension), (0, 0))
            sums[getattr(e.data, dimension)] = (hits + 1, saved + e.data.saved_nanos)
    ranked = sorted(sums.items(), key=lambda kv: (-kv[1][1], -kv[1][0], kv[0]))
    return [[name, str(hits), usd(saved)] for name, (hits, saved) in ranked[:10]]


async def test_the_overview_shows_cache_hits_and_savings_equal_to_the_events(
    filled: tuple[TestClient[web.Request, web.Application], list[UsageEvent]], ledger: Ledger
) -> None:
    client, events = filled
    hits = [e for e in events if e.data.cache in ("HIT", "SEMANTIC_HIT")]
    saved = sum(e.data.saved_nanos for e in hits)
    assert (len(hits), saved) == (3, 123_456_790)
    want = {
        "cache": f"Response cache: 3 hits saved {usd(saved)}.",
        "savings-model": cache_savings(events, "model"),
        "savings-team": cache_savings(events, "team"),
    }
    assert want["savings-team"] == [
        ["sales", "1", "$0.123456789"],
        ["research", "1", "$0.000000001"],
        ["ops", "1", "$0.000000000"],
    ]
    for _ in range(2):  # the second time after the same events were ingested again: nothing doubles
        _, shown = await page(client, f"/console/?{WINDOW}")
        assert shown.texts["cache"] == want["cache"]
        assert body_rows(shown.tables["savings-model"]) == want["savings-model"]
        assert body_rows(shown.tables["savings-team"]) == want["savings-team"]
        assert ledger.ingest(events).inserted == 0
    # A range without a hit says so.
    _, shown = await page(
        client, "/console/?since=2026-11-21T00:00:00%2B00:00&until=2026-11-22T00:00:00%2B00:00"
    )
    assert shown.texts["cache"] == "Response cache: 0 hits saved $0.000000000."
    assert body_rows(shown.tables["savings-team"]) == [["No cache hit in this range."]]


async def test_every_page_renders(
    filled: tuple[TestClient[web.Request, web.Application], list[UsageEvent]],
) -> None:
    client, events = filled
    first = str(events[0].id)
    for path, heading in (
        (f"/console/?{WINDOW}", "Overview"),
        (f"/console/requests?{WINDOW}", "Requests"),
        (f"/console/requests/{first}", f"Request {first}"),
        (f"/console/sessions?{WINDOW}", "Sessions"),
        ("/console/sessions/chat-9", "Session chat-9"),
        (f"/console/users?{WINDOW}", "Users"),
        (f"/console/properties?name=feature&{WINDOW}", "Properties"),
    ):
        html, _ = await page(client, path)
        assert f"<h1>{heading}</h1>" in html, path
    answer = await client.get("/console", allow_redirects=False)
    assert (answer.status, answer.headers["Location"]) == (302, "/console/")


async def test_money_is_exact_to_the_nano_dollar() -> None:
    assert usd(1) == "$0.000000001"
    assert usd(0) == "$0.000000000"
    assert usd(123_456_789_012_345_678) == "$123456789.012345678"


async def test_overview_shows_the_ledgers_numbers(
    filled: tuple[TestClient[web.Request, web.Application], list[UsageEvent]], ledger: Ledger
) -> None:
    client, events = filled
    html, shown = await page(client, f"/console/?{WINDOW}")
    [total] = usage(ledger, [], SINCE, UNTIL)
    billed = sum(e.data.cost_nanos for e in events if e.data.billable)
    assert total.cost_nanos == billed
    assert f"Spend {usd(billed)} over {len(events)} requests" in shown.texts["total"]
    groups = {"team": ["team"], "model": ["model"], "key": ["namespace", "key"], "provider": ["provider"]}
    for dim, dims in groups.items():
        expected = [
            ["/".join(r.keys.values()) or "-", str(r.requests), usd(r.cost_nanos)]
            for r in usage(ledger, dims, SINCE, UNTIL)[:10]
        ]
        assert body_rows(shown.tables[f"by-{dim}"]) == expected, dim
    assert {row[0] for row in body_rows(shown.tables["by-key"])} == {"team-a/alice", "team-a/bob"}
    # A month's range is drawn per day: one bar per day, the days with spend at their exact amount.
    bars = re.findall(r'<rect class="bar"[^>]*><title>([^<]+)</title>', html)
    assert len(bars) == 30 and bars[0].startswith("2026-11-01: ") and bars[-1].startswith("2026-11-30: ")
    spent = [b for b in bars if not b.endswith(": $0.000000000")]
    assert spent == [f"{r.bucket}: {usd(r.cost_nanos)}" for r in usage(ledger, [], SINCE, UNTIL, "day")]
    assert len(spent) == 2
    health = {row[0]: row[1:] for row in body_rows(shown.tables["health"])}
    errors = sum(1 for e in events if e.data.outcome == "error" and e.data.provider == "openai")
    fallbacks = sum(1 for e in events if len(e.data.attempts) > 1 and e.data.provider == "anthropic")
    assert health["openai"][1] == str(errors) and errors == 1
    assert health["anthropic"][2] == str(fallbacks) and fallbacks == 1
    budgets = {row[0]: row[1:] for row in body_rows(shown.tables["budgets"])}
    monthly = [e for e in events if "team-a/monthly" in e.data.budgets]
    assert budgets["team-a/monthly"] == [
        str(len(monthly)),
        usd(sum(e.data.cost_nanos for e in monthly if e.data.billable)),
    ]
    assert budgets["org/yearly"] == ["1", "$0.010000000"]


def matching(events: list[UsageEvent], **want: object) -> list[str]:
    """Ids of the events whose data has every wanted value, newest first (the list's order)."""
    chosen = [e for e in events if all(getattr(e.data, k) == v for k, v in want.items())]
    chosen.sort(key=lambda e: (e.time, str(e.id)), reverse=True)
    return [str(e.id) for e in chosen]


async def all_ids(client: TestClient[web.Request, web.Application], query: str) -> list[str]:
    """Follow the "older" links from the first page to the last, collecting row ids."""
    ids: list[str] = []
    path: str | None = f"/console/requests?{query}"
    pages = 0
    while path is not None:
        _, shown = await page(client, path)
        ids.extend(shown.row_ids)
        path = shown.links.get("next")
        pages += 1
        assert pages < 100
    return ids


async def test_pagination_visits_every_row_exactly_once_in_order(
    filled: tuple[TestClient[web.Request, web.Application], list[UsageEvent]],
) -> None:
    client, events = filled
    for limit in (1, 2, 3, 7, 500):  # page ends inside the three calls made at the same instant
        ids = await all_ids(client, f"{WINDOW}&limit={limit}")
        assert ids == matching(events), limit  # every row, once, newest first, ties broken by id
        assert len(ids) == len(set(ids)) == len(events)


@pytest.mark.parametrize(
    ("query", "want"),
    [
        ("team=sales", {"team": "sales"}),
        ("model=claude-sonnet", {"model": "claude-sonnet"}),
        ("key=bob", {"key_name": "bob"}),
        ("user=alice%40example.com", {"user": "alice@example.com"}),
        ("end_user=u-1", {"end_user": "u-1"}),
        ("status=500", {"status": 500}),
        ("session=chat-9", {"session_id": "chat-9"}),
        ("team=sales&model=gpt-4o-mini", {"team": "sales", "model": "gpt-4o-mini"}),
    ],
)
async def test_each_filter_lists_exactly_the_matching_requests(
    filled: tuple[TestClient[web.Request, web.Application], list[UsageEvent]],
    query: str,
    want: dict[str, object],
) -> None:
    client, events = filled
    expected = matching(events, **want)
    assert expected, "the filter must select something"
    assert await all_ids(client, f"{WINDOW}&{query}&limit=4") == expected


async def test_property_and_time_filters(
    filled: tuple[TestClient[web.Request, web.Application], list[UsageEvent]],
) -> None:
    client, events = filled
    f2 = [e for e in events if e.data.properties.get("feature") == "f2"]
    assert await all_ids(client, f"{WINDOW}&property=feature%3Df2") == matching(f2)
    start, end = NOV.replace(hour=11), NOV.replace(hour=12, minute=2)
    inside = [e for e in events if start <= e.time < end]
    window = f"since={start.isoformat()}&until={end.isoformat()}".replace("+", "%2B")
    assert await all_ids(client, window) == matching(inside)
    assert inside


async def test_a_bad_filter_is_a_400_page_naming_the_parameter(
    filled: tuple[TestClient[web.Request, web.Application], list[UsageEvent]],
) -> None:
    client, _ = filled
    for query, param in (
        ("status=abc", "status"),
        ("limit=0", "limit"),
        ("since=yesterday", "since"),
        ("property=nope", "property"),
        ("after=garbage", "after"),
    ):
        html, _ = await page(client, f"/console/requests?{query}", 400)
        assert f"{param}: " in html, query
    html, _ = await page(client, "/console/requests/not-a-uuid", 400)
    assert "id: " in html
    await page(client, "/console/requests/0192f2a0-0000-7000-8000-000000000000", 404)
    await page(client, "/console/sessions/none-such", 404)


async def test_a_requests_page_has_its_attempts_event_and_trace_link(
    filled: tuple[TestClient[web.Request, web.Application], list[UsageEvent]],
) -> None:
    client, events = filled
    [event] = [e for e in events if len(e.data.attempts) == 2]
    html, shown = await page(client, f"/console/requests/{event.id}")
    assert body_rows(shown.tables["attempts"]) == [
        ["1", "a", "openai", "gpt-4o-mini", "503"],
        ["2", "b", "anthropic", "claude", "200"],
    ]
    assert shown.links["trace"] == f"{JAEGER}/trace/4bf92f3577b34da6a3ce929d0e0e4736"
    assert json.loads(shown.texts["event"]) == json.loads(event.to_json())
    assert "$0.010000000" in html and "42 ms" in html


async def test_sessions_and_one_session_as_a_tree(
    filled: tuple[TestClient[web.Request, web.Application], list[UsageEvent]],
) -> None:
    client, events = filled
    _, shown = await page(client, f"/console/sessions?{WINDOW}")
    rows = {row[0]: row[1:3] for row in body_rows(shown.tables["sessions"])}
    for session in {e.data.session_id for e in events}:
        calls = [e for e in events if e.data.session_id == session]
        assert rows[session] == [
            str(len(calls)),
            usd(sum(e.data.cost_nanos for e in calls if e.data.billable)),
        ]
    html, shown = await page(client, "/console/sessions/chat-9")
    assert shown.texts["session-total"] == "4 calls, $0.100000000"
    totals = dict(
        re.findall(r'data-path="([^"]+)"><strong>[^<]+</strong>\s*<span class="total">([^<]+)</span>', html)
    )
    assert totals == {
        "/": "4 calls, $0.100000000",
        "/billing": "1 calls, $0.040000000",
        "/support": "3 calls, $0.060000000",
        "/support/lookup": "2 calls, $0.050000000",
    }


async def test_sessions_pages_show_every_session_exactly_once_in_order(
    filled: tuple[TestClient[web.Request, web.Application], list[UsageEvent]], ledger: Ledger
) -> None:
    client, events = filled
    # Five sessions last active at one instant (the cursor's tie-break), one with a `~` in its id.
    tied = [
        make_event(at=NOV.replace(hour=16), session_id=f"tie-{i}~x" if i == 2 else f"tie-{i}")
        for i in range(5)
    ]
    ledger.ingest(tied)
    last: dict[str, datetime] = {}
    for e in [*events, *tied]:
        last[e.data.session_id] = max(last.get(e.data.session_id, e.time), e.time)
    expected = sorted(last, key=lambda session: (last[session], session), reverse=True)
    assert len(expected) > 10
    for limit in (1, 2, 3, 4, 500):
        shown_ids: list[str] = []
        path: str | None = f"/console/sessions?{WINDOW}&limit={limit}"
        pages = 0
        while path is not None:
            _, shown = await page(client, path)
            assert len(shown.row_ids) <= limit
            shown_ids.extend(shown.row_ids)
            path = shown.links.get("next")
            pages += 1
            assert pages <= len(expected)
        assert shown_ids == expected, limit  # every session once, most recently active first
        assert pages == -(-len(expected) // limit)
    html, _ = await page(client, "/console/sessions?after=garbage", 400)
    assert "after: " in html


async def test_users_and_properties_pages_show_the_ledgers_groups(
    filled: tuple[TestClient[web.Request, web.Application], list[UsageEvent]], ledger: Ledger
) -> None:
    client, _ = filled
    _, shown = await page(client, f"/console/users?{WINDOW}")
    expected = [
        [r.keys["end_user"] or "-", str(r.requests), usd(r.cost_nanos)]
        for r in usage(ledger, ["end_user"], SINCE, UNTIL)
    ]
    assert body_rows(shown.tables["end-users"]) == expected
    assert {"u-1", "u-2"} <= {row[0] for row in expected}
    _, shown = await page(client, f"/console/properties?name=feature&{WINDOW}")
    rows = usage(ledger, ["property:feature"], SINCE, UNTIL)
    assert body_rows(shown.tables["values"]) == [
        [r.keys["property:feature"], str(r.requests), usd(r.cost_nanos)] for r in rows
    ]
    assert (
        sum(Decimal(row[2].lstrip("$")) for row in body_rows(shown.tables["values"]))
        == usage(ledger, [], SINCE, UNTIL)[0].cost
    )


async def test_text_from_events_is_escaped_everywhere(
    filled: tuple[TestClient[web.Request, web.Application], list[UsageEvent]],
) -> None:
    client, events = filled
    [event] = [e for e in events if e.data.team == SCRIPT]
    for path in (
        f"/console/requests/{event.id}",
        f"/console/requests?{WINDOW}",
        f"/console/?{WINDOW}",
        f"/console/sessions?{WINDOW}",
        f"/console/properties?name=feature&{WINDOW}",
        f"/console/requests?{WINDOW}&team=%3Cscript%3E",
        f"/console/sessions/{quote(SCRIPT, safe='')}",
    ):
        html, _ = await page(client, path)
        assert "<script" not in html, path
    html, shown = await page(client, f"/console/requests/{event.id}")
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;" in html
    assert shown.tables["properties"] == [["feature", SCRIPT]]


async def test_the_meter_api_serves_no_console_unless_mounted(ledger: Ledger) -> None:
    async with TestClient(TestServer(create_app(ledger))) as client:
        answer = await client.get("/console/")
        assert answer.status == 404
    app = create_app(ledger)
    mount(app, ledger)
    async with TestClient(TestServer(app)) as client:
        answer = await client.get("/console/")
        assert answer.status == 200
        answer = await client.get("/v1/usage")  # the JSON API is unchanged beside it
        assert answer.status == 200


async def test_a_short_range_is_drawn_per_hour_with_the_ledgers_buckets(
    filled: tuple[TestClient[web.Request, web.Application], list[UsageEvent]], ledger: Ledger
) -> None:
    client, _ = filled
    since, until = NOV.replace(hour=0, minute=0), NOV.replace(hour=0, minute=0) + timedelta(days=1)
    html, _ = await page(client, f"/console/?since={since.date()}&until={until.date()}")
    bars = re.findall(r'<rect class="bar"[^>]*><title>([^<]+)</title>', html)
    assert len(bars) == 24
    spent = [b for b in bars if not b.endswith(": $0.000000000")]
    assert spent == [f"{r.bucket}: {usd(r.cost_nanos)}" for r in usage(ledger, [], since, until, "hour")]
    assert len(spent) == 5
