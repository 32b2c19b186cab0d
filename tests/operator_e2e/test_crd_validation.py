"""The CRDs, validated by a real API server: good manifests are stored (with their defaults), each bad
one is refused with the message a user would see from `kubectl apply`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import Plane

ROOT = Path(__file__).resolve().parents[2]
NS = "crd-validation"
API = "tollway.dev/v1alpha1"
MOCK = {"name": "mock", "provider": "openai-compatible", "model": "m", "baseURL": "http://127.0.0.1:9/v1"}


@pytest.fixture(scope="module")
def cp(plane: Plane) -> Any:
    plane.cp.create_namespace(NS)
    return plane.cp


def apply(cp: Any, manifest: dict[str, Any], *, dry_run: bool = True) -> Any:
    args = ["apply", "-n", NS, "-f", "-"] + (["--dry-run=server"] if dry_run else [])
    return cp.kubectl(*args, input=json.dumps(manifest), check=False)


def budget(**spec: Any) -> dict[str, Any]:
    return {"apiVersion": API, "kind": "Budget", "metadata": {"name": "b"}, "spec": {"limit": "10", **spec}}


def route(**spec: Any) -> dict[str, Any]:
    body = {"model": "m", "backends": [MOCK], **spec}
    return {"apiVersion": API, "kind": "RouteRule", "metadata": {"name": "r"}, "spec": body}


def vkey(**spec: Any) -> dict[str, Any]:
    return {"apiVersion": API, "kind": "VirtualKey", "metadata": {"name": "k"}, "spec": spec}


def test_the_examples_are_accepted(cp: Any) -> None:
    for path in sorted((ROOT / "examples" / "local").glob("*.yaml")):
        result = cp.kubectl("apply", "-n", NS, "--dry-run=server", "-f", str(path), check=False)
        assert result.returncode == 0, f"{path.name}: {result.stderr}"


def test_defaults_are_filled_in_by_the_api_server(cp: Any) -> None:
    assert apply(cp, budget(), dry_run=False).returncode == 0
    assert apply(cp, route(), dry_run=False).returncode == 0
    stored = json.loads(cp.kubectl("get", "budget", "b", "-n", NS, "-o", "json").stdout)["spec"]
    assert stored == {
        "limit": "10",
        "period": "Monthly",
        "perUser": False,
        "thresholds": [50, 80, 95],
        "action": "Block",
        "failurePolicy": "FailClosed",
    }
    stored = json.loads(cp.kubectl("get", "routerule", "r", "-n", NS, "-o", "json").stdout)["spec"]
    assert (stored["strategy"], stored["timeout"]) == ("Priority", "60s")
    assert (stored["backends"][0]["weight"], stored["backends"][0]["priority"]) == (1, 0)


def test_kubectl_get_shows_the_printer_columns(cp: Any) -> None:
    apply(cp, budget(), dry_run=False)
    header = cp.kubectl("get", "budgets", "-n", NS).stdout.splitlines()[0].split()
    assert header == ["NAME", "LIMIT", "SPENT", "REMAINING", "PERIOD", "STATE", "SAVED", "AGE"]
    header = cp.kubectl("get", "rr", "-n", NS).stdout.splitlines()[0].split()
    assert header == ["NAME", "MODEL", "STRATEGY", "BACKENDS", "READY"]
    listed = cp.kubectl("get", "tollway", "-n", NS, "-o", "name").stdout.split()
    assert "budget.tollway.dev/b" in listed and "routerule.tollway.dev/r" in listed


REGION_RULE = "region is required for bedrock"
VERTEX = {
    "name": "vx",
    "provider": "vertex",
    "model": "gemini-2.5-flash",
    "project": "my-proj",
    "region": "us-central1",
    "credentialsSecretRef": {"name": "gcp", "key": "key.json"},
}
ROLE = "arn:aws:iam::123456789012:role/tollway-gateway"
BEDROCK = {"name": "br", "provider": "bedrock", "model": "amazon.nova-lite-v1:0", "region": "us-east-1"}
AWS_SECRET = {"name": "aws", "key": "AWS_ACCESS_KEY_ID"}
ONE_OF_RULE = "a bedrock backend takes exactly one of credentialsSecretRef and webIdentity"

INVALID: list[tuple[str, dict[str, Any], str]] = [
    ("zero limit", budget(limit="0.00"), "limit must be greater than 0"),
    ("limit not a number", budget(limit="ten"), "spec.limit in body should match"),
    ("unknown period", budget(period="Yearly"), 'Unsupported value: "Yearly"'),
    ("thresholds decreasing", budget(thresholds=[80, 50]), "thresholds must be increasing"),
    ("threshold 0", budget(thresholds=[0, 50]), "should be greater than or equal to 1"),
    ("threshold above 100", budget(thresholds=[50, 101]), "should be less than or equal to 100"),
    (
        "webhook not http",
        budget(alertWebhook={"url": "ftp://x"}),
        "spec.alertWebhook.url in body should match",
    ),
    ("no backends", route(backends=[]), "should have at least 1 items"),
    (
        "weighted without weight",
        route(strategy="Weighted", backends=[{**MOCK, "weight": 0}]),
        "strategy Weighted needs at least one backend with weight above 0",
    ),
    (
        "duplicate backend names",
        route(backends=[MOCK, {**MOCK, "baseURL": "http://127.0.0.1:10/v1"}]),
        "Duplicate value",
    ),
    (
        "credential missing",
        route(backends=[{"name": "o", "provider": "openai", "model": "gpt-4o"}]),
        "credentialsSecretRef is required for this provider",
    ),
    (
        "baseURL missing",
        route(backends=[{"name": "c", "provider": "openai-compatible", "model": "m"}]),
        "baseURL is required for openai-compatible and azure-openai backends",
    ),
    ("unknown provider", route(backends=[{**MOCK, "provider": "watsonx"}]), 'Unsupported value: "watsonx"'),
    ("bedrock without region", route(backends=[{**MOCK, "provider": "bedrock"}]), REGION_RULE),
    ("region off bedrock", route(backends=[{**MOCK, "region": "us-east-1"}]), REGION_RULE),
    (
        "vertex without project",
        route(backends=[{k: v for k, v in VERTEX.items() if k != "project"}]),
        "spec.backends[0].project: Invalid value: project is required for vertex",
    ),
    (
        "vertex without region",
        route(backends=[{k: v for k, v in VERTEX.items() if k != "region"}]),
        "spec.backends[0].region: Invalid value: region is required for bedrock and vertex",
    ),
    (
        "project off vertex",
        route(backends=[{**MOCK, "project": "my-proj"}]),
        "project is required for vertex",
    ),
    (
        "vertex project malformed",
        route(backends=[{**VERTEX, "project": "My_Proj"}]),
        "spec.backends[0].project in body should match",
    ),
    (
        "web_identity and a Secret",
        route(backends=[{**BEDROCK, "credentialsSecretRef": AWS_SECRET, "webIdentity": {"roleARN": ROLE}}]),
        ONE_OF_RULE,
    ),
    ("web_identity nor a Secret", route(backends=[BEDROCK]), ONE_OF_RULE),
    (
        "web_identity off bedrock",
        route(backends=[{**MOCK, "webIdentity": {}}]),
        "only bedrock backends take webIdentity",
    ),
    (
        "web_identity role not an IAM role ARN",
        route(backends=[{**BEDROCK, "webIdentity": {"roleARN": "tollway-gateway"}}]),
        "webIdentity.roleARN in body should match",
    ),
    ("bad timeout", route(timeout="soon"), "spec.timeout in body should match"),
    ("retry on a success", route(fallback={"onStatus": [200]}), "should be greater than or equal to 400"),
    ("too many attempts", route(fallback={"maxAttempts": 11}), "should be less than or equal to 10"),
    ("zero rate limit", vkey(limits={"requestsPerMinute": 0}), "should be greater than or equal to 1"),
    ("secretRef without key", vkey(secretRef={"name": "s"}), "spec.secretRef.key: Required value"),
    ("expiry not a time", vkey(expiresAt="tomorrow"), "spec.expiresAt in body must be of type date-time"),
]


@pytest.mark.parametrize("region", ["us-central1", "global"])
def test_a_vertex_backend_is_accepted(cp: Any, region: str) -> None:
    result = apply(cp, route(backends=[{**VERTEX, "region": region}]))
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    ("manifest", "message"), [(m, msg) for _, m, msg in INVALID], ids=[i for i, _, _ in INVALID]
)
def test_invalid_manifests_are_refused_with_the_reason(
    cp: Any, manifest: dict[str, Any], message: str
) -> None:
    result = apply(cp, manifest)
    assert result.returncode != 0, f"accepted: {yaml.safe_dump(manifest)}"
    assert message in result.stderr


@pytest.mark.parametrize(
    "web_identity", [{"roleARN": ROLE}, {}], ids=["web_identity role", "web_identity pod role"]
)
def test_a_bedrock_backend_with_web_identity_is_accepted(cp: Any, web_identity: dict[str, Any]) -> None:
    result = apply(cp, route(backends=[{**BEDROCK, "webIdentity": web_identity}]))
    assert result.returncode == 0, result.stderr
