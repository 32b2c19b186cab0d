"""The console's access control against a real kube-apiserver (RBAC on): real ServiceAccount tokens,
TokenReview and SubjectAccessReview made by the meter's own account under
deploy/rbac/meter-console.yaml, and the API server's audit log showing it used every rule and was
refused nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from harness import ControlPlane, wait_for

from tollway.ports import free_port
from tollway_meter.console import mount
from tollway_meter.console.access import COOKIE, KubeApi, KubernetesAuthorizer, Unauthenticated
from tollway_meter.console.forecast import ClusterBudgets
from tollway_meter.ledger import Ledger
from tollway_sidecar.contract.usage_event import Attempt, Tokens, UsageData, UsageEvent, uuid7

ROOT = Path(__file__).resolve().parents[2]
SYSTEM_NS = "tollway-system"
METER_SA = "tollway-meter"
METER_USER = f"system:serviceaccount:{SYSTEM_NS}:{METER_SA}"
AUDIT_POLICY = f"""\
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
  - level: Metadata
    users: [{METER_USER}]
  - level: None
"""
AT = datetime(2026, 11, 10, 9, 0, tzinfo=UTC)
WINDOW = "since=2026-11-01T00:00:00%2B00:00&until=2026-12-01T00:00:00%2B00:00"
Client = TestClient[web.Request, web.Application]
READ_KEYS = [{"apiGroups": ["tollway.dev"], "resources": ["virtualkeys"], "verbs": ["get"]}]
READ_SECRETS = [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}]


def event(namespace: str, minute: int) -> UsageEvent:
    data = UsageData(
        namespace=namespace,
        key_name="k",
        route="chat",
        model="gpt-4o-mini",
        status=200,
        outcome="ok",
        cost=f"0.00000{minute + 1}",
        billable=True,
        team="t",
        session_id=f"{namespace}-s",
        budgets=(f"{namespace}/monthly",),
        attempts=(Attempt("mock", "openai", "gpt-4o-mini", 200),),
        tokens=Tokens(input=10, output=2),
        latency_ms=5,
    )
    return UsageEvent(
        id=uuid7(), source="gw", time=AT + timedelta(minutes=minute), subject=f"{namespace}/k", data=data
    )


@dataclass
class Cluster:
    cp: ControlPlane
    audit_log: Path
    api: KubeApi
    tokens: dict[str, str]  # user → a real ServiceAccount token
    ledger_dsn: str
    events: list[UsageEvent]

    def audit(self) -> list[dict[str, Any]]:
        entries = [json.loads(line) for line in self.audit_log.read_text().splitlines()]
        return [e for e in entries if e.get("user", {}).get("username") == METER_USER]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    workdir = tmp_path_factory.mktemp("console-kube")
    cp, audit_log = ControlPlane.start_audited(workdir, AUDIT_POLICY)
    with cp:
        cp.kubectl("apply", "-f", str(ROOT / "crds"))
        for ns in (SYSTEM_NS, "team-a", "team-b"):
            cp.create_namespace(ns)
        cp.kubectl("apply", "-f", str(ROOT / "deploy" / "rbac" / "meter-console.yaml"))
        cp.create_service_account("team-a", "alice")
        cp.grant("team-a", "alice", READ_KEYS)
        cp.create_service_account("team-b", "carol")
        cp.grant("team-b", "carol", READ_KEYS + READ_SECRETS)
        cp.create_service_account("team-b", "nobody")  # authenticated, granted nothing
        for ns, limit in (("team-a", "0.000010"), ("team-b", "5")):
            budget = (
                "apiVersion: tollway.dev/v1alpha1\nkind: Budget\n"
                f"metadata: {{name: monthly, namespace: {ns}}}\nspec: {{limit: '{limit}'}}\n"
            )
            cp.kubectl("apply", "-f", "-", input=budget)
        meter_token = workdir / "meter-token"
        meter_token.write_text(cp.token(SYSTEM_NS, METER_SA))
        tokens = {
            "alice": cp.token("team-a", "alice"),
            "carol": cp.token("team-b", "carol"),
            "nobody": cp.token("team-b", "nobody"),
        }
        dsn = f"sqlite:///{workdir / 'ledger.db'}"
        events = [event("team-a", i) for i in range(3)] + [event("team-b", 10 + i) for i in range(2)]
        ledger = Ledger.open(dsn)
        ledger.migrate()
        ledger.ingest(events)
        ledger.close()
        yield Cluster(cp, audit_log, KubeApi(cp.url, meter_token, cp.pki.ca_cert), tokens, dsn, events)


@pytest.fixture(scope="module")
async def console(cluster: Cluster) -> AsyncIterator[tuple[Client, KubernetesAuthorizer]]:
    ledger = Ledger.open(cluster.ledger_dsn)
    authorizer = KubernetesAuthorizer(cluster.api)
    app = web.Application()
    budgets = ClusterBudgets(authorizer.client)
    mount(app, ledger, clock=lambda: AT + timedelta(days=1), authorizer=authorizer, budgets=budgets)
    async with TestClient(TestServer(app)) as client:
        yield client, authorizer
    await authorizer.close()
    ledger.close()


def rows_of(html: str) -> set[str]:
    return {part.split('"', 1)[0] for part in html.split('data-id="')[1:]}


def ids(cluster: Cluster, namespace: str) -> set[str]:
    return {str(e.id) for e in cluster.events if e.data.namespace == namespace}


async def get(client: Client, path: str, token: str | None = None) -> tuple[int, str]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    answer = await client.get(path, headers=headers, allow_redirects=False)
    return answer.status, await answer.text()


async def test_no_token_and_a_bad_token_are_401(
    console: tuple[Client, KubernetesAuthorizer], cluster: Cluster
) -> None:
    client, _ = console
    status, html = await get(client, f"/console/requests?{WINDOW}")
    assert status == 401 and 'id="login"' in html
    forged = cluster.tokens["alice"][:-4] + "AAAA"  # a real token's shape, its signature broken
    for bad in ("not-a-token", forged):
        status, html = await get(client, f"/console/requests?{WINDOW}", bad)
        assert status == 401, html
        assert "does not accept this token" in html
        assert bad not in html


async def test_a_user_bound_to_get_virtualkeys_in_a_sees_a_and_gets_403_on_b(
    console: tuple[Client, KubernetesAuthorizer], cluster: Cluster
) -> None:
    client, _ = console
    alice = cluster.tokens["alice"]
    status, html = await get(client, f"/console/requests?{WINDOW}&limit=500", alice)
    assert status == 200 and rows_of(html) == ids(cluster, "team-a")
    assert "system:serviceaccount:team-a:alice" in html  # who is logged in
    status, html = await get(client, f"/console/requests?{WINDOW}&namespace=team-b", alice)
    assert status == 403, html
    (theirs,) = list(ids(cluster, "team-b"))[:1]
    status, _ = await get(client, f"/console/requests/{theirs}", alice)
    assert status == 404
    (mine,) = list(ids(cluster, "team-a"))[:1]
    status, html = await get(client, f"/console/requests/{mine}", alice)
    assert status == 200 and 'id="content-hidden"' in html and 'id="content"' not in html


async def test_a_user_with_secrets_access_sees_the_content_section(
    console: tuple[Client, KubernetesAuthorizer], cluster: Cluster
) -> None:
    client, _ = console
    carol = cluster.tokens["carol"]
    status, html = await get(client, f"/console/requests?{WINDOW}&limit=500", carol)
    assert status == 200 and rows_of(html) == ids(cluster, "team-b")
    (theirs,) = list(ids(cluster, "team-b"))[:1]
    status, html = await get(client, f"/console/requests/{theirs}", carol)
    assert status == 200 and 'id="content"' in html and 'id="content-hidden"' not in html


async def test_a_user_granted_nothing_sees_no_row(
    console: tuple[Client, KubernetesAuthorizer], cluster: Cluster
) -> None:
    client, _ = console
    status, html = await get(client, f"/console/requests?{WINDOW}", cluster.tokens["nobody"])
    assert status == 200 and rows_of(html) == set()
    status, _ = await get(client, f"/console/requests?{WINDOW}&namespace=team-b", cluster.tokens["nobody"])
    assert status == 403


async def test_the_login_form_keeps_the_token_in_an_httponly_strict_cookie(
    console: tuple[Client, KubernetesAuthorizer], cluster: Cluster
) -> None:
    client, _ = console
    answer = await client.post("/console/login", data={"token": "wrong"}, allow_redirects=False)
    assert answer.status == 401 and "set-cookie" not in answer.headers
    answer = await client.post(
        "/console/login", data={"token": cluster.tokens["alice"]}, allow_redirects=False
    )
    assert answer.status == 303 and answer.headers["Location"] == "/console/"
    cookie = answer.headers["Set-Cookie"]
    assert cookie.startswith(f"{COOKIE}=") and "HttpOnly" in cookie and "SameSite=Strict" in cookie
    assert "Path=/console" in cookie
    answer = await client.get(f"/console/requests?{WINDOW}&limit=500")  # the jar sends the cookie
    assert answer.status == 200 and rows_of(await answer.text()) == ids(cluster, "team-a")
    answer = await client.post("/console/logout", allow_redirects=False)
    assert answer.status == 303
    client.session.cookie_jar.clear()
    assert (await client.get("/console/")).status == 401
    # Another site's page posting a token (logging this browser in as someone else) is refused.
    answer = await client.post(
        "/console/login",
        data={"token": cluster.tokens["alice"]},
        headers={"Origin": "https://evil.example"},
        allow_redirects=False,
    )
    assert answer.status == 403 and "set-cookie" not in answer.headers
    client.session.cookie_jar.clear()


async def test_decisions_are_cached_per_token_briefly_and_the_cache_is_bounded(cluster: Cluster) -> None:
    now = [0.0]
    authorizer = KubernetesAuthorizer(cluster.api, ttl=30, entries=2, clock=lambda: now[0])
    try:
        first = await authorizer.access(cluster.tokens["alice"], ["team-a", "team-b"])
        assert first.namespaces == frozenset({"team-a"}) and first.content == frozenset()
        asked = authorizer.reviews
        assert asked == 1 + 2 * 2  # one TokenReview, two SubjectAccessReviews per namespace
        assert await authorizer.access(cluster.tokens["alice"], ["team-a", "team-b"]) == first
        assert authorizer.reviews == asked  # cached
        now[0] = 31.0
        await authorizer.access(cluster.tokens["alice"], ["team-a", "team-b"])
        assert authorizer.reviews == 2 * asked  # expired: asked again
        for user in ("carol", "nobody"):  # two more tokens push alice's out (2 entries)
            await authorizer.access(cluster.tokens[user], ["team-a", "team-b"])
        before = authorizer.reviews
        await authorizer.access(cluster.tokens["alice"], ["team-a", "team-b"])
        assert authorizer.reviews == before + asked
        with pytest.raises(Unauthenticated):
            await authorizer.access("not-a-token", [])
        refused = authorizer.reviews
        with pytest.raises(Unauthenticated):
            await authorizer.access("not-a-token", [])
        assert authorizer.reviews == refused  # a refused token is cached too
    finally:
        await authorizer.close()


async def test_budget_limits_come_from_the_budget_resources(
    console: tuple[Client, KubernetesAuthorizer], cluster: Cluster
) -> None:
    client, _ = console
    status, html = await get(client, f"/console/?{WINDOW}", cluster.tokens["alice"])
    assert status == 200, html
    rows = [part.split('"', 1)[0] for part in html.split('data-budget="')[1:]]
    assert rows == ["team-a/monthly"]  # team-b's Budget is not alice's to see
    # team-a spent $0.000001 + $0.000002 + $0.000003 of its $0.000010 on 10 November, 1 day before "now".
    assert "$0.000010000" in html and "$0.000006000" in html


async def test_without_its_rbac_or_its_api_server_the_console_answers_503(
    cluster: Cluster, tmp_path: Path
) -> None:
    """The meter's reviews need its ClusterRole: under an account without it (and with no API
    server at all) every page is a 503 naming the meter's refused call, never a guess."""
    unbound = tmp_path / "unbound-token"
    unbound.write_text(cluster.tokens["nobody"])  # authenticated, but may not create reviews
    down = tmp_path / "token"
    down.write_text("x")
    for api, reason in (
        (KubeApi(cluster.cp.url, unbound, cluster.cp.pki.ca_cert), "HTTP 403"),
        (KubeApi(f"https://127.0.0.1:{free_port()}", down, cluster.cp.pki.ca_cert), "ClientConnectorError"),
    ):
        ledger = Ledger.open(cluster.ledger_dsn)
        authorizer = KubernetesAuthorizer(api)
        app = web.Application()
        mount(app, ledger, clock=lambda: AT + timedelta(days=1), authorizer=authorizer)
        try:
            async with TestClient(TestServer(app)) as client:
                status, html = await get(client, f"/console/requests?{WINDOW}", cluster.tokens["alice"])
        finally:
            await authorizer.close()
            ledger.close()
        assert status == 503, html
        assert "tokenreviews" in html and reason in html
        assert cluster.tokens["alice"] not in html


def test_tollway_console_with_kubernetes_auth_as_a_process(cluster: Cluster, tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "console.log"
    argv = [
        *[sys.executable, "-m", "tollway.cli"],
        *["console", "--db", cluster.ledger_dsn, "--host", "0.0.0.0", "--port", str(port)],
        *["--auth", "kubernetes", "--kube-url", cluster.cp.url],
        *["--kube-token-file", str(cluster.api.token_file), "--kube-ca-file", str(cluster.cp.pki.ca_cert)],
    ]
    with log.open("wb") as out:
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=dict(os.environ))
    try:

        def fetch(token: str | None) -> int:
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            request = urllib.request.Request(
                f"http://127.0.0.1:{port}/console/requests?{WINDOW}", headers=headers
            )
            try:
                with urllib.request.urlopen(request, timeout=10) as response:
                    return int(response.status)
            except urllib.error.HTTPError as exc:
                return int(exc.code)

        def up() -> bool:
            if process.poll() is not None:
                raise AssertionError(f"tollway console exited:\n{log.read_text()}")
            return fetch(None) == 401

        wait_for(up, 60, "tollway console --auth kubernetes", interval=0.2)
        assert fetch(cluster.tokens["alice"]) == 200
        assert fetch("not-a-token") == 401
    finally:
        process.terminate()
        process.wait(20)
    text = log.read_text()
    assert "(auth kubernetes)" in text
    for token in cluster.tokens.values():
        assert token not in text  # never logged


def test_the_meter_used_every_rule_and_was_refused_nothing(cluster: Cluster) -> None:
    """Runs last in this module: the calls above are in the audit log by now (it is flushed
    asynchronously, hence the wait)."""

    def calls() -> set[tuple[str, str, str, int]] | None:
        found = {
            (
                e["verb"],
                e["objectRef"]["apiGroup"],
                e["objectRef"]["resource"],
                e["responseStatus"]["code"],
            )
            for e in cluster.audit()
            if e.get("objectRef") and e.get("stage") == "ResponseComplete"
        }
        return found if len(found) >= 3 else None

    seen = wait_for(calls, 30, "the meter's reviews in the audit log", interval=0.5)
    assert seen == {
        ("create", "authentication.k8s.io", "tokenreviews", 201),
        ("create", "authorization.k8s.io", "subjectaccessreviews", 201),
        ("list", "tollway.dev", "budgets", 200),
    }
