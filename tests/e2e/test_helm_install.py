"""`helm install` of charts/tollway into a real kube-apiserver (tests/kube/harness.py): every object the
chart renders, over several values sets, is accepted and stored by the server.

There is no kubelet and no controller manager, so no Pod ever runs: `helm install --wait=hookOnly`
(Helm 4's "do not wait for resources"; `--wait=false` is its deprecated spelling) and the objects are
then read back through the API. What this proves beyond `helm template` (tests/chart/): the server's
own validation (schemas of every built-in kind, the CRDs' OpenAPI and CEL rules, RBAC objects, Service
node ports, HPA and PDB) accepts every object, and the references between objects resolve (Services
select a workload that has the named port, ServiceAccounts and Roles exist, the HPA targets the
gateway Deployment, the PDB selects its Pods). `helm template | kubectl apply --dry-run=server` is
run too, with kubectl's strict field validation, and must print no warning.

`helm test` is run against the default release: the hook Pod is created (so the server accepted it),
but it stays Pending forever without a kubelet, so `helm test` can only time out. What is checked is
that the Pod exists as rendered and calls the gateway Service that exists; running its script for real
against a gateway is done by test_clusterless_e2e.py.
"""

from __future__ import annotations

import base64
import json
import re
import subprocess
from typing import Any

import pytest
from e2e_env import CHART, Cluster, documents

# values set → helm flags. Each is installed as release tw-<name> into namespace e2e-<name>.
VALUES_SETS: dict[str, list[str]] = {
    "defaults": [],
    "external-redis": [
        "--set",
        "redis.mode=external",
        "--set",
        "redis.external.url=rediss://redis.example.internal:6380/0",
        "--set",
        "redis.external.passwordSecret.name=redis-password",
        "--set",
        "meter.enabled=true",
        "--set",
        "meter.database.existingSecret=ledger-dsn",
    ],
    "jaeger-nodeport": [
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
        "metrics.grafanaDashboard.enabled=true",
    ],
    "hpa-pdb": [
        "--set",
        "gateway.autoscaling.enabled=true",
        "--set",
        "gateway.podDisruptionBudget.enabled=true",
        "--set",
        "operator.watchNamespaces={team-a,team-b}",
    ],
    # The trial ledger database (password generated at install), with the NetworkPolicies.
    "meter-bundled": [
        "--set",
        "meter.enabled=true",
        "--set",
        "meter.postgresql.bundled.enabled=true",
        "--set",
        "meter.networkPolicy.enabled=true",
    ],
    # The console with Kubernetes auth: the meter's token, its two ClusterRoles and their bindings.
    "meter-console": [
        "--set",
        "meter.enabled=true",
        "--set",
        "meter.database.existingSecret=ledger-dsn",
        "--set",
        "meter.console.enabled=true",
        "--set",
        "meter.networkPolicy.enabled=true",
    ],
}
# metrics.serviceMonitor.enabled is left out: a ServiceMonitor needs the Prometheus Operator's CRD,
# which a bare API server does not have (the server would rightly reject it).

# One release per cluster owns the CRDs, and in this session's cluster that may be the cluster-less
# test's: these releases install as every further release in a cluster does. The CRDs' own life
# (fresh install, upgrade, uninstall) is test_helm_crds.py's, in a cluster of its own.
NOT_THE_CRDS = ["--set", "crds.install=false"]

WORKLOADS = ("Deployment", "StatefulSet")
NAMESPACED_KINDS = {
    "ServiceAccount",
    "Secret",
    "ConfigMap",
    "Service",
    "Deployment",
    "StatefulSet",
    "Role",
    "RoleBinding",
    "HorizontalPodAutoscaler",
    "PodDisruptionBudget",
    "NetworkPolicy",
    "Pod",
}


def release(name: str) -> tuple[str, str]:
    return f"tw-{name}", f"e2e-{name}"


@pytest.fixture(scope="module")
def installs(cluster: Cluster) -> dict[str, subprocess.CompletedProcess[str]]:
    """Every values set installed once, as a user would (errors are kept for the tests to report)."""
    results = {}
    for name, values in VALUES_SETS.items():
        rel, namespace = release(name)
        if name == "external-redis":  # the user's own Redis password and ledger DSN Secrets, made first
            cluster.cp.kubectl("create", "namespace", namespace)
            cluster.cp.kubectl(
                "create",
                "secret",
                "generic",
                "redis-password",
                "--from-literal=password=s3cret",
                "-n",
                namespace,
            )
            cluster.cp.kubectl(
                "create",
                "secret",
                "generic",
                "ledger-dsn",
                "--from-literal=dsn=postgresql://meter:s3cret@postgres.example.internal/ledger",
                "-n",
                namespace,
            )
        results[name] = cluster.install(rel, namespace, *values, *NOT_THE_CRDS, check=False)
    return results


def by_kind(objects: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for obj in objects:
        out.setdefault(obj["kind"], {})[obj["metadata"]["name"]] = obj
    return out


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def container(obj: dict[str, Any], name: str) -> dict[str, Any]:
    (found,) = [c for c in obj["spec"]["template"]["spec"]["containers"] if c["name"] == name]
    return found


def env_of(c: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in c.get("env", ())}


@pytest.mark.parametrize("name", list(VALUES_SETS))
def test_every_rendered_object_is_accepted_and_stored(
    cluster: Cluster, installs: dict[str, subprocess.CompletedProcess[str]], name: str
) -> None:
    rel, namespace = release(name)
    result = installs[name]
    assert result.returncode == 0, f"helm install {rel} failed:\n{result.stderr}"
    status = json.loads(cluster.cp.helm("status", rel, "-n", namespace, "-o", "json").stdout)
    assert status["info"]["status"] == "deployed"

    rendered = cluster.manifest(rel, namespace)
    stored = cluster.get_all(rendered, namespace)
    assert [(o["kind"], o["metadata"]["name"]) for o in stored] == [
        (o["kind"], o["metadata"]["name"]) for o in rendered
    ]
    for obj in stored:
        meta = obj["metadata"]
        assert meta["labels"]["app.kubernetes.io/managed-by"] == "Helm", obj["kind"]
        assert meta["labels"]["app.kubernetes.io/instance"] == rel
        assert meta["uid"]
        if obj["kind"] in NAMESPACED_KINDS:
            assert meta["namespace"] == namespace, (
                f"{obj['kind']} {meta['name']} outside the release namespace"
            )

    objects = by_kind(stored)
    workloads = [o for kind in WORKLOADS for o in objects.get(kind, {}).values()]

    # Every Service selects exactly one workload of the release, which has each named target port.
    for svc in objects["Service"].values():
        (target,) = [
            w
            for w in workloads
            if selects(svc["spec"]["selector"], w["spec"]["template"]["metadata"]["labels"])
        ]
        ports = {
            p["name"] for c in target["spec"]["template"]["spec"]["containers"] for p in c.get("ports", ())
        }
        for port in svc["spec"]["ports"]:
            assert port["targetPort"] in ports, (
                f"Service {svc['metadata']['name']}: no port {port['targetPort']}"
            )
    # Every workload runs as a ServiceAccount that exists (or the namespace default, for Redis and Jaeger).
    for w in workloads:
        sa = w["spec"]["template"]["spec"].get("serviceAccountName")
        assert sa is None or sa in objects["ServiceAccount"], (
            f"{w['metadata']['name']}: no ServiceAccount {sa}"
        )
    # Bindings name Roles of the release and its ServiceAccounts.
    for kind, role_kind in (("RoleBinding", "Role"), ("ClusterRoleBinding", "ClusterRole")):
        for binding in objects.get(kind, {}).values():
            assert binding["roleRef"]["name"] in objects[role_kind]
            for subject in binding["subjects"]:
                assert (subject["namespace"], subject["name"]) in {
                    (namespace, sa) for sa in objects["ServiceAccount"]
                }

    fullname = f"{rel}-tollway"
    gateway = objects["Deployment"][f"{fullname}-gateway"]
    sidecar = env_of(container(gateway, "sidecar"))
    assert sidecar["TOLLWAY_CONFIG_SECRET"] == f"{namespace}/{fullname}-gateway-config"
    (rule,) = objects["Role"][f"{fullname}-gateway"]["rules"]
    assert rule["resourceNames"] == [f"{fullname}-gateway-config"] and rule["verbs"] == ["watch"]

    if name == "defaults":
        assert gateway["spec"]["replicas"] == 2
        redis = objects["StatefulSet"][f"{fullname}-redis"]
        assert redis["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"] == "1Gi"
        assert sidecar["TOLLWAY_REDIS_URL"] == f"redis://{fullname}-redis:6379/0"
        assert "OTEL_EXPORTER_OTLP_ENDPOINT" not in sidecar
        assert {"HorizontalPodAutoscaler", "PodDisruptionBudget", "ConfigMap"}.isdisjoint(objects)
    elif name == "external-redis":
        assert "StatefulSet" not in objects and f"{fullname}-redis" not in objects["Service"]
        assert sidecar["TOLLWAY_REDIS_URL"] == "rediss://redis.example.internal:6380/0"
        ref = sidecar["TOLLWAY_REDIS_PASSWORD"]["secretKeyRef"]
        assert ref == {"name": "redis-password", "key": "password"}
        assert cluster.get("secret", ref["name"], namespace) is not None
        operator = env_of(container(objects["Deployment"][f"{fullname}-operator"], "operator"))
        assert operator["TOLLWAY_REDIS_PASSWORD"] == sidecar["TOLLWAY_REDIS_PASSWORD"]
        meter_deployment = objects["Deployment"][f"{fullname}-meter"]
        meter = env_of(container(meter_deployment, "meter"))
        assert meter["TOLLWAY_REDIS_PASSWORD"] == sidecar["TOLLWAY_REDIS_PASSWORD"]
        assert (
            meter["TOLLWAY_REDIS_URL"] == "rediss://:$(TOLLWAY_REDIS_PASSWORD)@redis.example.internal:6380/0"
        )
        db = meter["TOLLWAY_METER_DB"]["secretKeyRef"]
        assert db == {"name": "ledger-dsn", "key": "dsn"}
        assert cluster.get("secret", db["name"], namespace) is not None
        assert meter_deployment["spec"]["replicas"] == 2
        pod = meter_deployment["spec"]["template"]["spec"]
        assert pod["automountServiceAccountToken"] is False
        assert objects["ServiceAccount"][pod["serviceAccountName"]]["automountServiceAccountToken"] is False
        assert {p["name"] for p in objects["Service"][f"{fullname}-meter"]["spec"]["ports"]} == {
            "api",
            "metrics",
        }
    elif name == "jaeger-nodeport":
        ports = {p["name"]: p for p in objects["Service"][f"{fullname}-gateway"]["spec"]["ports"]}
        assert objects["Service"][f"{fullname}-gateway"]["spec"]["type"] == "NodePort"
        assert ports["http"]["nodePort"] == 30080
        jaeger = objects["Service"][f"{fullname}-jaeger"]
        assert {p["name"]: p.get("nodePort") for p in jaeger["spec"]["ports"]}["ui"] == 30686
        assert sidecar["OTEL_EXPORTER_OTLP_ENDPOINT"] == f"http://{fullname}-jaeger:4317"
        assert sidecar["OTEL_SERVICE_NAME"] == "tollway-gateway"
        assert 4317 in {p["port"] for p in jaeger["spec"]["ports"]}
        dashboard = objects["ConfigMap"][f"{fullname}-dashboard"]
        assert json.loads(dashboard["data"]["tollway.json"])["panels"]
    elif name == "hpa-pdb":
        hpa = objects["HorizontalPodAutoscaler"][f"{fullname}-gateway"]
        target = hpa["spec"]["scaleTargetRef"]
        assert (target["kind"], target["name"]) == ("Deployment", gateway["metadata"]["name"])
        assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 10)
        # A CPU-utilization HPA can only compute utilization when every container requests CPU.
        for c in gateway["spec"]["template"]["spec"]["containers"]:
            assert c["resources"]["requests"]["cpu"], f"gateway container {c['name']} requests no CPU"
        assert not any(
            o.get("spec", {}).get("replicas")
            for o in rendered
            if o["kind"] == "Deployment" and o["metadata"]["name"] == gateway["metadata"]["name"]
        ), "the HPA owns replicas"
        pdb = objects["PodDisruptionBudget"][f"{fullname}-gateway"]
        assert selects(
            pdb["spec"]["selector"]["matchLabels"], gateway["spec"]["template"]["metadata"]["labels"]
        )
        args = container(objects["Deployment"][f"{fullname}-operator"], "operator")["args"]
        assert args == ["operator", "--namespace=team-a", "--namespace=team-b"]
    elif name == "meter-bundled":
        check_bundled_postgresql(cluster, objects, fullname, namespace)


def check_bundled_postgresql(
    cluster: Cluster, objects: dict[str, dict[str, dict[str, Any]]], fullname: str, namespace: str
) -> None:
    """The meter's DSN, as the server stored the Secret the chart generated, reaches the bundled
    PostgreSQL's Service with the password its container starts with; the NetworkPolicies are stored."""
    from psycopg.conninfo import conninfo_to_dict

    name = f"{fullname}-postgresql"
    meter = env_of(container(objects["Deployment"][f"{fullname}-meter"], "meter"))
    assert meter["TOLLWAY_METER_DB"] == {"secretKeyRef": {"name": name, "key": "dsn"}}
    stored = cluster.get("secret", name, namespace)
    assert stored is not None
    data = {k: base64.b64decode(v).decode() for k, v in stored["data"].items()}
    assert re.fullmatch(r"[A-Za-z0-9]{32}", data["password"])
    dsn = conninfo_to_dict(data["dsn"])
    assert (dsn["host"], dsn["port"], dsn["password"]) == (name, "5432", data["password"])
    assert name in objects["Service"]
    postgres = env_of(container(objects["StatefulSet"][name], "postgresql"))
    assert postgres["POSTGRES_PASSWORD"] == {"secretKeyRef": {"name": name, "key": "password"}}
    assert (dsn["user"], dsn["dbname"]) == (postgres["POSTGRES_USER"], postgres["POSTGRES_DB"])
    (claim,) = objects["StatefulSet"][name]["spec"]["volumeClaimTemplates"]
    assert claim["spec"]["resources"]["requests"]["storage"] == "8Gi"
    assert sorted(objects["NetworkPolicy"]) == [f"{fullname}-meter", name]


@pytest.mark.parametrize("name", list(VALUES_SETS))
def test_helm_template_passes_kubectl_apply_dry_run_server(cluster: Cluster, name: str) -> None:
    """`helm template | kubectl apply --dry-run=server` (the CRDs included), strict validation, no warning."""
    rel, namespace = f"dry-{name}", f"e2e-dry-{name}"  # names of its own: cluster-scoped objects are new
    cluster.cp.kubectl("create", "namespace", namespace)
    # The installed release holds node ports 30080 and 30686 (the server checks: "provided port is
    # already allocated"), so this render asks for two others.
    other_ports = ["--set", "gateway.service.nodePort=30180", "--set", "tracing.jaeger.nodePort=30786"]
    rendered = cluster.cp.helm(
        "template",
        rel,
        str(CHART),
        "--namespace",
        namespace,
        *VALUES_SETS[name],
        *other_ports,
    ).stdout
    docs = documents(rendered)
    applied = cluster.cp.kubectl(
        "apply",
        "--dry-run=server",
        "--validate=strict",
        "--namespace",
        namespace,
        "-f",
        "-",
        input=rendered,
        check=False,
    )
    assert applied.returncode == 0, applied.stderr
    # The CRDs may exist already (a release of the session installed them, without kubectl's
    # last-applied annotation): kubectl then says so for each. Any other warning (unknown field,
    # deprecated API, ...) fails the test.
    crds = {
        f"customresourcedefinitions/{d['metadata']['name']}"
        for d in docs
        if d["kind"] == "CustomResourceDefinition"
    }
    warnings = [
        line
        for line in applied.stderr.splitlines()
        if not (line.startswith("Warning: resource ") and line.split()[2] in crds and "last-applied" in line)
    ]
    assert not warnings, applied.stderr
    lines = applied.stdout.splitlines()
    assert len(lines) == len(docs) and all(line.endswith("(server dry run)") for line in lines), lines
    # Nothing was stored: the dry run left the namespace empty of the chart's objects.
    assert cluster.cp.kubectl("get", "deployments,services", "-n", namespace, "-o", "name").stdout == ""


def test_helm_test_creates_the_hook_pod_that_calls_the_gateway_service(
    cluster: Cluster, installs: dict[str, subprocess.CompletedProcess[str]]
) -> None:
    """Without a kubelet the hook Pod never runs, so `helm test` times out; the Pod must exist as rendered."""
    rel, namespace = release("defaults")
    assert installs["defaults"].returncode == 0
    result = cluster.cp.helm("test", rel, "--namespace", namespace, "--timeout", "3s", check=False)
    assert result.returncode != 0, "helm test cannot pass without a kubelet"
    assert "not ready" in result.stderr or "deadline exceeded" in result.stderr, result.stderr

    (hook,) = [h for h in cluster.hooks(rel, namespace) if h["kind"] == "Pod"]
    pod = cluster.get("pod", hook["metadata"]["name"], namespace)
    assert pod is not None, "helm test did not create the hook Pod"
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    assert pod["status"]["phase"] == "Pending" and not pod["spec"].get("nodeName")
    (c,) = pod["spec"]["containers"]
    (want,) = hook["spec"]["containers"]
    assert (c["image"], c["command"], c["args"]) == (want["image"], want["command"], want["args"])
    url = f"http://{rel}-tollway-gateway:80/v1/models"
    assert url in c["args"][0]
    service = cluster.get("service", f"{rel}-tollway-gateway", namespace)
    assert service is not None and 80 in {p["port"] for p in service["spec"]["ports"]}


@pytest.mark.parametrize("name", list(VALUES_SETS))
def test_notes_export_every_variable_their_commands_use(
    installs: dict[str, subprocess.CompletedProcess[str]], name: str
) -> None:
    """NOTES.txt as `helm install` prints it: each $VARIABLE a command uses was exported by an earlier
    line (test_clusterless_e2e.py runs the commands themselves against a gateway)."""
    notes = installs[name].stdout.split("NOTES:", 1)[1]
    exported: set[str] = set()
    for line in notes.splitlines():
        used = set(re.findall(r"\$([A-Z_][A-Z0-9_]*)", line))
        assert used <= exported, f"NOTES line {line.strip()!r} uses {sorted(used - exported)}, never exported"
        exported |= set(re.findall(r"export ([A-Z_][A-Z0-9_]*)=", line))
    assert {"TOLLWAY_KEY", "TOLLWAY_URL"} <= exported
    if name == "jaeger-nodeport":
        assert "export TOLLWAY_URL=http://127.0.0.1:30080/v1" in notes
        assert "svc/tw-jaeger-nodeport-tollway-jaeger 16686" in notes
