"""`spec.capture` of RouteRules, compiled: capture and its retention, the older `captureContent`
still meaning the same, and the errors naming each field (both together, days out of bounds)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from tollway_operator.compile import CompileResult, Manifest, compile_manifests
from tollway_sidecar.config.models import Route

ROOT = Path(__file__).resolve().parents[2]
MOCK = {
    "name": "mock",
    "provider": "openai-compatible",
    "model": "m",
    "baseURL": "http://127.0.0.1:9/v1",
    "pricing": {"inputPerMillion": "1", "outputPerMillion": "2"},
}


def compile_rule(**spec: Any) -> CompileResult:
    body = {
        "apiVersion": "tollway.dev/v1alpha1",
        "kind": "RouteRule",
        "metadata": {"name": "chat", "namespace": "default"},
        "spec": {"model": "chat", "backends": [MOCK], **spec},
    }
    return compile_manifests([Manifest.from_object(body, source="test.yaml")])


def the_route(result: CompileResult) -> Route:
    assert result.errors == ()
    (found,) = result.config.routes
    return found


def test_capture_with_its_retention_compiles_into_the_route() -> None:
    route = the_route(compile_rule(capture={"content": True, "retentionDays": 30}))
    assert (route.capture_content, route.content_retention_days) == (True, 30)


def test_capture_without_retention_keeps_content_7_days() -> None:
    route = the_route(compile_rule(capture={"content": True}))
    assert (route.capture_content, route.content_retention_days) == (True, 7)


def test_capture_off_turns_the_gateways_setting_off_for_the_route() -> None:
    assert the_route(compile_rule(capture={"content": False})).capture_content is False


def test_no_capture_leaves_the_gateways_setting() -> None:
    route = the_route(compile_rule())
    assert (route.capture_content, route.content_retention_days) == (None, 7)


@pytest.mark.parametrize("value", [True, False])
def test_the_older_capture_content_still_compiles(value: bool) -> None:
    route = the_route(compile_rule(captureContent=value))
    assert (route.capture_content, route.content_retention_days) == (value, 7)


CASES = [
    (
        "zero days",
        {"capture": {"content": True, "retentionDays": 0}},
        "spec.capture.retentionDays",
        "greater than or equal to 1",
    ),
    (
        "over a year",
        {"capture": {"content": True, "retentionDays": 366}},
        "spec.capture.retentionDays",
        "less than or equal to 365",
    ),
    ("text days", {"capture": {"retentionDays": "7"}}, "spec.capture.retentionDays", "integer"),
    (
        "both fields",
        {"capture": {"content": True}, "captureContent": True},
        "spec.capture",
        "not both",
    ),
    ("unknown field", {"capture": {"content": True, "days": 3}}, "spec.capture.days", "unknown field"),
]


@pytest.mark.parametrize(("spec", "field", "message"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_a_bad_capture_is_an_error_naming_the_field(spec: dict[str, Any], field: str, message: str) -> None:
    result = compile_rule(**spec)
    assert result.config.routes == ()
    ((error),) = result.errors
    assert error.field == field
    assert message in error.message


def test_the_crd_bounds_retention_and_refuses_both_fields() -> None:
    """The apiserver refuses what the compiler refuses (the kube tier applies the CRD for real)."""
    for path in ("crds/tollway.dev_routerules.yaml", "charts/tollway/files/crds/tollway.dev_routerules.yaml"):
        crd = yaml.safe_load((ROOT / path).read_text())
        spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
        days = spec["properties"]["capture"]["properties"]["retentionDays"]
        assert (days["minimum"], days["maximum"], days["default"]) == (1, 365, 7)
        rules = [v["rule"] for v in spec["x-kubernetes-validations"]]
        assert "!has(self.capture) || !has(self.captureContent)" in rules
