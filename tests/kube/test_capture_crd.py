"""The RouteRule CRD's `spec.capture` against a real kube-apiserver: retentionDays defaults to 7 and
is bounded 1..365, and a rule setting both `capture` and the older `captureContent` is refused."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import ControlPlane

ROOT = Path(__file__).resolve().parents[2]
RULE = """\
apiVersion: tollway.dev/v1alpha1
kind: RouteRule
metadata: {{name: {name}, namespace: capture}}
spec:
  model: {name}
  backends: [{{name: mock, provider: openai-compatible, model: m, baseURL: "http://127.0.0.1:9/v1"}}]
{extra}
"""


@pytest.fixture(scope="module")
def cp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    with ControlPlane.start(tmp_path_factory.mktemp("kube")) as control_plane:
        control_plane.kubectl("apply", "-f", str(ROOT / "crds" / "tollway.dev_routerules.yaml"))
        control_plane.kubectl(
            "wait", "--for=condition=Established", "--timeout=60s", "crd/routerules.tollway.dev"
        )
        control_plane.create_namespace("capture")
        yield control_plane


def apply(cp: ControlPlane, name: str, extra: str, *, check: bool = True) -> str:
    done = cp.kubectl("apply", "-f", "-", input=RULE.format(name=name, extra=extra), check=check)
    return str(done.stderr)


def test_retention_defaults_to_7_days(cp: ControlPlane) -> None:
    apply(cp, "seven", "  capture: {content: true}")
    got = json.loads(cp.kubectl("get", "routerule", "seven", "-n", "capture", "-o", "json").stdout)
    assert got["spec"]["capture"] == {"content": True, "retentionDays": 7}


@pytest.mark.parametrize("days", [1, 365])
def test_retention_within_bounds_is_accepted(cp: ControlPlane, days: int) -> None:
    apply(cp, f"days-{days}", f"  capture: {{content: true, retentionDays: {days}}}")


@pytest.mark.parametrize(
    ("days", "message"),
    [(0, "should be greater than or equal to 1"), (366, "should be less than or equal to 365")],
)
def test_retention_out_of_bounds_is_refused(cp: ControlPlane, days: int, message: str) -> None:
    error = apply(cp, f"bad-{days}", f"  capture: {{content: true, retentionDays: {days}}}", check=False)
    assert "spec.capture.retentionDays" in error and message in error, error


def test_capture_and_capture_content_together_are_refused(cp: ControlPlane) -> None:
    error = apply(cp, "both", "  capture: {content: true}\n  captureContent: true", check=False)
    assert "set either capture or the older captureContent, not both" in error, error


def test_the_older_capture_content_alone_still_applies(cp: ControlPlane) -> None:
    apply(cp, "older", "  captureContent: true")
