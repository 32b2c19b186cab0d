"""The CostReport CRD on a real kube-apiserver: the example is accepted and parses the way the
meter's scheduler reads it; the OpenAPI and CEL rules refuse what the scheduler could not send."""

from __future__ import annotations

import base64
import copy
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web
from croniter import croniter
from harness import ControlPlane

from tollway.ports import free_port
from tollway_meter.console.access import KubeApi, KubeClient
from tollway_meter.console.forecast import ClusterBudgets
from tollway_meter.costreport import BadCostReport, parse_manifest
from tollway_meter.costreport_kube import GROUP_PATH, ClusterCostReports, ClusterSecrets
from tollway_meter.ledger import Ledger
from tollway_meter.report_period import containing
from tollway_meter.report_scheduler import Scheduler

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT / "tests" / "ledger") not in sys.path:
    sys.path.insert(0, str(ROOT / "tests" / "ledger"))

from ledger_events import make_event  # noqa: E402  (the ledger tier's event builder)

EXAMPLE = ROOT / "examples" / "reports" / "weekly-costreport.yaml"


@pytest.fixture(scope="module")
def cp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    with ControlPlane.start(tmp_path_factory.mktemp("kube")) as control_plane:
        for crd in ("costreports", "budgets"):
            control_plane.kubectl("apply", "-f", str(ROOT / "crds" / f"tollway.dev_{crd}.yaml"))
            control_plane.kubectl(
                "wait", "--for=condition=Established", "--timeout=60s", f"crd/{crd}.tollway.dev"
            )
        control_plane.create_namespace("team-a")
        yield control_plane


def _example() -> dict[str, Any]:
    return dict(yaml.safe_load(EXAMPLE.read_text()))


def _apply(cp: ControlPlane, body: dict[str, Any]) -> tuple[int, str]:
    done = cp.kubectl("apply", "-f", "-", input=yaml.safe_dump(body), check=False)
    return done.returncode, done.stderr


def test_the_example_is_accepted_and_read_alike(cp: ControlPlane) -> None:
    code, err = _apply(cp, _example())
    assert code == 0, err
    report = parse_manifest("example", _example())
    assert report is not None
    assert [name for name, _spec in report.channel_names()] == ["finance-mail", "team-slack", "billing-hook"]
    listed = cp.kubectl("get", "costreports", "-n", "team-a").stdout
    header = listed.splitlines()[0].split()
    assert header[:3] == ["NAME", "PERIOD", "SCHEDULE"]
    assert "SENT" in header and "DUE" in header and "RESULT" in header


def _broken(change: str) -> dict[str, Any]:
    body = copy.deepcopy(_example())
    body["metadata"]["name"] = "broken"
    channels = body["spec"]["channels"]
    if change == "two kinds":
        channels[2]["slack"] = {"webhookSecretRef": {"name": "s"}}
    elif change == "no kind":
        channels[2] = {"name": "empty"}
    elif change == "url and ref":
        channels[2]["webhook"]["urlSecretRef"] = {"name": "hook"}
    elif change == "same names":
        channels[1]["name"] = "finance-mail"
    elif change == "bad schedule":
        body["spec"]["schedule"] = "every monday"
    elif change == "daily period":
        body["spec"]["period"] = "Daily"
    return body


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("two kinds", "exactly one of slack, email, webhook, kubernetesEvent"),
        ("no kind", "exactly one of slack, email, webhook, kubernetesEvent"),
        ("url and ref", "exactly one of url and urlSecretRef"),
        ("same names", "channel names must be unique"),
        ("bad schedule", "spec.schedule"),
        ("daily period", "spec.period"),
    ],
)
def test_the_apiserver_and_the_scheduler_refuse_the_same_mistakes(
    cp: ControlPlane, change: str, message: str
) -> None:
    body = _broken(change)
    code, err = _apply(cp, body)
    assert code != 0 and message in err
    with pytest.raises(BadCostReport):
        parse_manifest("broken", body)


async def test_the_scheduler_reads_costreports_from_the_api_and_writes_their_status(
    cp: ControlPlane, tmp_path: Path
) -> None:
    """As the meter's ServiceAccount under deploy/rbac/meter-reports.yaml only, and the per-namespace
    RoleBinding for Secrets in this test's namespace: the report goes to a webhook whose URL is
    in a Secret and as an Event; the status tells; a second tick sends nothing."""
    cp.create_namespace("reports")
    cp.create_namespace("tollway-system")
    cp.kubectl("apply", "-f", str(ROOT / "deploy" / "rbac" / "meter-reports.yaml"))
    secrets = (ROOT / "deploy" / "rbac" / "per-namespace" / "meter-report-secrets.yaml").read_text()
    cp.kubectl("apply", "-f", "-", input=secrets.replace("namespace: team-a", "namespace: reports"))
    token = tmp_path / "token"
    token.write_text(cp.token("tollway-system", "tollway-meter"))

    got: list[tuple[dict[str, Any], str]] = []

    async def hook(request: web.Request) -> web.Response:
        got.append((await request.json(), request.headers.get("Idempotency-Key", "")))
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    url = base64.b64encode(f"http://127.0.0.1:{port}/hook".encode()).decode()
    cp.api(
        "POST",
        "/api/v1/namespaces/reports/secrets",
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "hook"}, "data": {"url": url}},
    )
    body = {
        "apiVersion": "tollway.dev/v1alpha1",
        "kind": "CostReport",
        "metadata": {"name": "weekly", "namespace": "reports"},
        "spec": {
            "schedule": "0 8 * * 1",
            "channels": [
                {"name": "hook", "webhook": {"urlSecretRef": {"name": "hook"}}},
                {"name": "event", "kubernetesEvent": {}},
            ],
        },
    }
    code, err = _apply(cp, body)
    assert code == 0, err
    budget = {
        "apiVersion": "tollway.dev/v1alpha1",
        "kind": "Budget",
        "metadata": {"name": "monthly", "namespace": "reports"},
        "spec": {"limit": "10"},
    }
    code, err = _apply(cp, budget)
    assert code == 0, err

    ledger = Ledger.open(f"sqlite:///{tmp_path / 'ledger.db'}")
    ledger.migrate()
    now = datetime.now(UTC)
    week = containing("week", croniter("0 8 * * 1", now).get_prev(datetime)).previous()
    ledger.ingest([make_event(at=week.since + timedelta(hours=5), cost="1.5", namespace="reports")])
    client = KubeClient(KubeApi(cp.url, token, cp.pki.ca_cert))
    cluster = ClusterCostReports(client, ["reports"])
    try:
        scheduler = Scheduler(
            ledger,
            "meter-0",
            ClusterSecrets(client),
            kube=client,
            status=cluster,
            budgets=ClusterBudgets(client),
        )
        outcomes = await scheduler.tick(await cluster.list())
        assert [(o.channel, o.result) for o in outcomes] == [("hook", "sent"), ("event", "sent")], outcomes
        again = await Scheduler(ledger, "meter-1", ClusterSecrets(client), kube=client, status=cluster).tick(
            await cluster.list()
        )
        assert [o.result for o in again] == ["skipped", "skipped"]
        # No RoleBinding in team-a: its Secrets stay out of the meter's reach.
        with pytest.raises(BadCostReport, match="HTTP 403"):
            await ClusterSecrets(client).read("team-a", "anything", "url")
    finally:
        await client.close()
        await runner.cleanup()
        ledger.close()

    ((payload, key),) = got
    assert payload["report"]["total_usd"] == "1.500000000" and key == payload["delivery_id"]
    (forecast,) = payload["report"]["budgets"]
    assert (forecast["budget"], forecast["limit_usd"]) == ("reports/monthly", "10.000000000")
    events = cp.api("GET", "/api/v1/namespaces/reports/events")["items"]
    mine = [e for e in events if e["involvedObject"]["name"] == "weekly"]
    assert (
        len(mine) == 1 and mine[0]["reason"] == "CostReportSent" and "1.500000000 USD" in mine[0]["message"]
    )
    status = cp.api("GET", f"{GROUP_PATH}/namespaces/reports/costreports/weekly")["status"]
    assert status["lastResult"] == "Sent" and status["lastPeriod"] == week.label
    assert status["conditions"][0]["status"] == "True"
    listed = cp.kubectl("get", "costreports", "-n", "reports").stdout
    assert "Sent" in listed.splitlines()[1]
