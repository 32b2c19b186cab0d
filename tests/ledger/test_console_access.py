"""Who sees what, given the access decision: every page and query reads only the namespaces a user
may see, a namespace filter outside them is a 403, another namespace's request or session is the
same 404 as a missing one, and captured content is gated on its own permission. On SQLite and
PostgreSQL. (The decision itself, from a real kube-apiserver: tests/kube/test_console_rbac.py.)"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from datetime import UTC, datetime, timedelta

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from click.testing import CliRunner
from console_html import body_rows, read_page
from ledger_events import NOV, make_event, spread

from tollway.cli import main
from tollway_meter.console import mount
from tollway_meter.console.access import OPEN, Access, Forbidden, Unauthenticated, in_clause, token_of
from tollway_meter.console.pages import usd
from tollway_meter.ledger import Ledger
from tollway_meter.queries import usage
from tollway_sidecar.contract.usage_event import UsageEvent

WINDOW = "since=2026-11-01T00:00:00%2B00:00&until=2026-12-01T00:00:00%2B00:00"
SINCE, UNTIL = datetime(2026, 11, 1, tzinfo=UTC), datetime(2026, 12, 1, tzinfo=UTC)
Client = TestClient[web.Request, web.Application]


class Fixed:
    """An authorizer whose decision is given: token → Access (no entry: not authenticated)."""

    def __init__(self, decisions: dict[str, Access]) -> None:
        self.decisions = decisions
        self.asked: list[list[str]] = []

    async def access(self, token: str | None, namespaces: Iterable[str]) -> Access:
        self.asked.append(sorted(namespaces))
        if token is None or token not in self.decisions:
            raise Unauthenticated("not a token this test knows")
        return self.decisions[token]

    async def close(self) -> None:
        return None


ALICE = Access("alice", frozenset({"team-a"}), frozenset())
CAROL = Access("carol", frozenset({"team-a", "team-b"}), frozenset({"team-a"}))
NOBODY = Access("nobody", frozenset(), frozenset())


def two_namespaces() -> list[UsageEvent]:
    a = spread(12)
    b = [
        make_event(
            at=NOV.replace(hour=10, minute=i),
            cost=f"0.00{i + 1}",
            namespace="team-b",
            key_name="bert",
            team="b-team",
            end_user=f"b-user-{i}",
            session_id="shared" if i < 2 else f"b-s-{i}",
            properties={"feature": "b-only"},
            budgets=("team-b/monthly",),
        )
        for i in range(5)
    ]
    a.append(make_event(at=NOV.replace(hour=11), cost="0.5", session_id="shared"))
    return [*a, *b]


@pytest.fixture
async def scoped(ledger: Ledger) -> AsyncIterator[tuple[Client, list[UsageEvent], Fixed]]:
    events = two_namespaces()
    ledger.ingest(events)
    authorizer = Fixed({"alice": ALICE, "carol": CAROL, "nobody": NOBODY})
    app = web.Application()
    mount(app, ledger, clock=lambda: NOV + timedelta(days=1), authorizer=authorizer)
    async with TestClient(TestServer(app)) as client:
        yield client, events, authorizer


async def get(client: Client, path: str, token: str | None, status: int = 200) -> str:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    answer = await client.get(path, headers=headers, allow_redirects=False)
    html = await answer.text()
    assert answer.status == status, html
    return html


def ids(events: list[UsageEvent], namespace: str | None = None) -> set[str]:
    return {str(e.id) for e in events if namespace is None or e.data.namespace == namespace}


async def listed(client: Client, token: str, query: str = "") -> set[str]:
    html = await get(client, f"/console/requests?{WINDOW}&limit=500{query}", token)
    return set(read_page(html).row_ids)


def test_the_decision_itself() -> None:
    assert ALICE.sees("team-a") and not ALICE.sees("team-b")
    assert ALICE.scope() == frozenset({"team-a"})
    assert ALICE.scope("team-a") == frozenset({"team-a"})
    with pytest.raises(Forbidden):
        ALICE.scope("team-b")
    assert CAROL.sees_content("team-a") and not CAROL.sees_content("team-b")
    # Secrets access without the rows' access shows nothing.
    assert not Access("x", frozenset(), frozenset({"team-a"})).sees_content("team-a")
    assert OPEN.scope() is None and OPEN.sees("anything") and OPEN.sees_content("anything")
    assert in_clause("namespace", None) == ("1 = 1", [])
    assert in_clause("namespace", frozenset()) == ("1 = 0", [])
    assert in_clause("namespace", {"b", "a"}) == ("namespace IN (%s, %s)", ["a", "b"])


def test_the_token_comes_from_the_header_then_the_cookie() -> None:
    assert token_of("Bearer abc", "cookie") == "abc"
    assert token_of("bearer  abc ", None) == "abc"
    assert token_of("Basic abc", "cookie") is None  # a wrong scheme is not silently ignored
    assert token_of(None, "cookie") == "cookie"
    assert token_of(None, None) is None
    assert token_of("Bearer ", None) is None


async def test_no_token_or_an_unknown_one_is_a_401_with_the_login_form(
    scoped: tuple[Client, list[UsageEvent], Fixed],
) -> None:
    client, _, _ = scoped
    for path in ("/console/", "/console/requests", "/console/sessions", "/console/users"):
        for token in (None, "stranger"):
            answer = await client.get(path, headers={"Authorization": f"Bearer {token}"} if token else {})
            html = await answer.text()
            assert answer.status == 401, path
            assert answer.headers["WWW-Authenticate"].startswith("Bearer")
            assert 'id="login"' in html
    assert (await client.get("/console/login")).status == 200  # the form itself needs no token


async def test_the_request_list_shows_only_the_allowed_namespaces(
    scoped: tuple[Client, list[UsageEvent], Fixed],
) -> None:
    client, events, authorizer = scoped
    assert await listed(client, "alice") == ids(events, "team-a")
    assert await listed(client, "carol") == ids(events)
    assert await listed(client, "carol", "&namespace=team-b") == ids(events, "team-b")
    assert await listed(client, "nobody") == set()
    # The decision is asked over the ledger's namespaces.
    assert authorizer.asked[-1] == ["team-a", "team-b"]


async def test_a_namespace_filter_outside_the_allowed_ones_is_a_403(
    scoped: tuple[Client, list[UsageEvent], Fixed],
) -> None:
    client, _, _ = scoped
    for path in (
        "/console/requests",
        "/console/",
        "/console/sessions",
        "/console/users",
        "/console/properties",
    ):
        html = await get(client, f"{path}?{WINDOW}&namespace=team-b", "alice", 403)
        assert "team-b" in html
    await get(client, f"/console/requests?{WINDOW}&namespace=team-a", "alice")


async def test_another_namespaces_request_is_the_same_404_as_a_missing_one(
    scoped: tuple[Client, list[UsageEvent], Fixed],
) -> None:
    client, events, _ = scoped
    theirs = next(e for e in events if e.data.namespace == "team-b")
    mine = next(e for e in events if e.data.namespace == "team-a")
    hidden = await get(client, f"/console/requests/{theirs.id}", "alice", 404)
    missing_id = "01890000-0000-7000-8000-000000000000"
    missing = await get(client, f"/console/requests/{missing_id}", "alice", 404)
    assert hidden.replace(str(theirs.id), "<id>") == missing.replace(missing_id, "<id>")
    await get(client, f"/console/requests/{mine.id}", "alice")
    await get(client, f"/console/requests/{theirs.id}", "carol")


async def test_captured_content_is_gated_on_secrets_access(
    scoped: tuple[Client, list[UsageEvent], Fixed],
) -> None:
    client, events, _ = scoped
    in_a = next(e for e in events if e.data.namespace == "team-a")
    in_b = next(e for e in events if e.data.namespace == "team-b")
    shown = read_page(await get(client, f"/console/requests/{in_a.id}", "carol")).texts
    assert "content" in shown and "content-hidden" not in shown
    hidden = read_page(await get(client, f"/console/requests/{in_b.id}", "carol")).texts
    assert "content-hidden" in hidden and "content" not in hidden
    alice = read_page(await get(client, f"/console/requests/{in_a.id}", "alice")).texts
    assert "content-hidden" in alice


async def test_sessions_show_only_the_allowed_calls(
    scoped: tuple[Client, list[UsageEvent], Fixed],
) -> None:
    client, events, _ = scoped
    listing = read_page(await get(client, f"/console/sessions?{WINDOW}", "alice"))
    sessions = {row[0] for row in body_rows(listing.tables["sessions"])}
    assert sessions == {e.data.session_id for e in events if e.data.namespace == "team-a"}
    # "shared" has calls in both namespaces: alice's tree sums only team-a's.
    tree = read_page(await get(client, "/console/sessions/shared", "alice"))
    total = sum(
        e.data.cost_nanos for e in events if e.data.session_id == "shared" and e.data.namespace == "team-a"
    )
    assert usd(total) in tree.texts["session-total"]
    await get(client, "/console/sessions/b-s-3", "alice", 404)
    await get(client, "/console/sessions/b-s-3", "carol")


async def test_the_overview_users_and_properties_count_only_the_allowed_namespaces(
    scoped: tuple[Client, list[UsageEvent], Fixed], ledger: Ledger
) -> None:
    client, _, _ = scoped
    a_only = usage(ledger, [], SINCE, UNTIL, namespaces={"team-a"})[0]
    everything = usage(ledger, [], SINCE, UNTIL)[0]
    assert a_only.cost_nanos < everything.cost_nanos  # the data really has two namespaces
    overview = read_page(await get(client, f"/console/?{WINDOW}", "alice"))
    assert usd(a_only.cost_nanos) in overview.texts["total"]
    assert usd(everything.cost_nanos) not in overview.texts["total"]
    budgets = {row[0] for row in body_rows(overview.tables["budgets"])}
    assert "team-b/monthly" not in budgets and "team-a/monthly" in budgets
    html = await get(client, f"/console/users?{WINDOW}", "alice")
    assert "b-user-" not in html
    html = await get(client, f"/console/properties?{WINDOW}&name=feature", "alice")
    assert "b-only" not in html
    assert "b-only" in await get(client, f"/console/properties?{WINDOW}&name=feature", "carol")
    assert [r.requests for r in usage(ledger, [], SINCE, UNTIL, namespaces=set())] == [0]
    assert usage(ledger, ["team"], SINCE, UNTIL, namespaces=set()) == []


async def test_without_an_authorizer_everything_is_open(ledger: Ledger) -> None:
    events = two_namespaces()
    ledger.ingest(events)
    app = web.Application()
    mount(app, ledger, clock=lambda: NOV + timedelta(days=1))
    async with TestClient(TestServer(app)) as client:
        assert await listed(client, "") == ids(events)


@pytest.mark.parametrize("command", [["console", "--host", "0.0.0.0"], ["console", "--host", "10.1.2.3"]])
def test_auth_none_is_refused_off_loopback(command: list[str], tmp_path: object) -> None:
    result = CliRunner().invoke(main, [*command, "--db", "sqlite:///:memory:"])
    assert result.exit_code == 2, result.output
    assert "--auth none" in result.output and "loopback" in result.output


def test_the_meter_refuses_an_open_console_on_every_address() -> None:
    result = CliRunner().invoke(
        main, ["meter", "run", "--redis", "redis://127.0.0.1:1", "--console", "--api-host", "0.0.0.0"]
    )
    assert result.exit_code == 2, result.output
    assert "--auth none" in result.output


def test_auth_kubernetes_outside_a_cluster_needs_the_api_servers_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    result = CliRunner().invoke(main, ["console", "--auth", "kubernetes", "--db", "sqlite:///:memory:"])
    assert result.exit_code == 2, result.output
    assert "--kube-url" in result.output
