"""The CostReport CRD on a real kube-apiserver: the example is accepted and parses the way the
meter's scheduler reads it; the OpenAPI and CEL rules refuse what the scheduler could not send."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from harness import ControlPlane

from tollway_meter.costreport import BadCostReport, parse_manifest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "reports" / "weekly-costreport.yaml"


@pytest.fixture(scope="module")
def cp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    with ControlPlane.start(tmp_path_factory.mktemp("kube")) as control_plane:
        control_plane.kubectl("apply", "-f", str(ROOT / "crds" / "tollway.dev_costreports.yaml"))
        control_plane.kubectl(
            "wait", "--for=condition=Established", "--timeout=60s", "crd/costreports.tollway.dev"
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
