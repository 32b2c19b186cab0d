"""The meter's optional parts in the chart: the bundled trial PostgreSQL, its DSN and password, the
named ports the Service and the ServiceMonitor use, and the NetworkPolicies."""

from __future__ import annotations

import base64
import re
import subprocess
from typing import Any

import pytest
import yaml
from chart_env import CHART, METER_VALUES_SETS, documents, template
from psycopg.conninfo import conninfo_to_dict

BUNDLED = METER_VALUES_SETS["meter-bundled"]
# The bundled database with the password left to the chart, as a user installs it.
BUNDLED_RANDOM = ["--set", "meter.enabled=true", "--set", "meter.postgresql.bundled.enabled=true"]


def render(helm: str, *args: str) -> dict[tuple[str, str], dict[str, Any]]:
    result = template(helm, *args)
    assert result.returncode == 0, result.stderr
    return {(d["kind"], d["metadata"]["name"]): d for d in documents(result.stdout)}


def secret_data(secret: dict[str, Any]) -> dict[str, str]:
    return {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = workload["spec"]["template"]["spec"]
    return spec


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", ())}


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def test_bundled_postgresql_is_off_by_default(helm: str) -> None:
    for args in ([], METER_VALUES_SETS["meter-networkpolicy"]):
        names = [name for _, name in render(helm, *args)]
        assert [n for n in names if "postgresql" in n] == [], args


def test_the_meter_connects_to_the_bundled_postgresql_with_its_password(helm: str) -> None:
    """The DSN the meter gets names the bundled Service, port, user, database and the password the
    PostgreSQL container is started with; libpq's own parser (psycopg) reads it so."""
    objects = render(helm, *BUNDLED)
    secret = objects[("Secret", "tw-tollway-postgresql")]
    data = secret_data(secret)
    assert sorted(data) == ["dsn", "password"]
    assert data["password"] == "golden-trial-password"
    # Kept by `helm uninstall`: the volume keeps a database made with this password.
    assert secret["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}

    (meter,) = pod_spec(objects[("Deployment", "tw-tollway-meter")])["containers"]
    assert env_of(meter)["TOLLWAY_METER_DB"] == {
        "secretKeyRef": {"name": "tw-tollway-postgresql", "key": "dsn"}
    }
    statefulset = objects[("StatefulSet", "tw-tollway-postgresql")]
    (postgres,) = pod_spec(statefulset)["containers"]
    env = env_of(postgres)
    assert env["POSTGRES_PASSWORD"] == {"secretKeyRef": {"name": "tw-tollway-postgresql", "key": "password"}}
    assert env["PGDATA"].startswith("/var/lib/postgresql/data/")  # below the volume's mount
    assert {m["mountPath"]: m["name"] for m in postgres["volumeMounts"]}["/var/lib/postgresql/data"] == "data"

    service = objects[("Service", "tw-tollway-postgresql")]
    assert selects(service["spec"]["selector"], statefulset["spec"]["template"]["metadata"]["labels"])
    (port,) = service["spec"]["ports"]
    (container_port,) = [p for p in postgres["ports"] if p["name"] == port["targetPort"]]

    dsn = conninfo_to_dict(data["dsn"])
    assert dsn == {
        "user": env["POSTGRES_USER"],
        "password": data["password"],
        "host": service["metadata"]["name"],
        "port": str(port["port"]),
        "dbname": env["POSTGRES_DB"],
    }
    assert container_port["containerPort"] == 5432


def test_the_bundled_postgresql_image_is_pinned_and_its_volume_persists(helm: str) -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    image = values["meter"]["postgresql"]["bundled"]["image"]
    assert re.fullmatch(r"postgres:15\.\d+-bookworm", image), image  # a minor version, Debian (uid 999)
    statefulset = render(helm, *BUNDLED)[("StatefulSet", "tw-tollway-postgresql")]
    (postgres,) = pod_spec(statefulset)["containers"]
    assert postgres["image"] == image
    assert pod_spec(statefulset)["securityContext"]["runAsUser"] == 999
    (claim,) = statefulset["spec"]["volumeClaimTemplates"]
    assert claim["spec"]["resources"]["requests"]["storage"] == "8Gi"

    ephemeral = render(helm, *BUNDLED, "--set", "meter.postgresql.bundled.persistence.enabled=false")
    spec = ephemeral[("StatefulSet", "tw-tollway-postgresql")]
    assert "volumeClaimTemplates" not in spec["spec"]
    assert {"name": "data", "emptyDir": {}} in pod_spec(spec)["volumes"]


def test_a_password_left_empty_is_random_per_install(helm: str) -> None:
    """`helm template` has no cluster to look the Secret up in, so each render is a fresh install."""
    first, second = (
        secret_data(render(helm, *BUNDLED_RANDOM)[("Secret", "tw-tollway-postgresql")]) for _ in range(2)
    )
    for data in (first, second):
        assert re.fullmatch(r"[A-Za-z0-9]{32}", data["password"]), data["password"]
        assert conninfo_to_dict(data["dsn"])["password"] == data["password"]
    assert first["password"] != second["password"]


def test_the_password_is_never_in_the_notes(helm: str) -> None:
    result = subprocess.run(
        [helm, "install", "tw", str(CHART), "--dry-run=client", "--namespace", "tollway-system", *BUNDLED],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    notes = result.stdout.split("NOTES:", 1)[1]
    assert "tw-tollway-postgresql" in notes and "for trials, not" in notes
    assert "golden-trial-password" not in notes
    assert base64.b64encode(b"golden-trial-password").decode() not in notes
    assert "exec deploy/tw-tollway-meter -- tollway usage --by model" in notes


def test_the_service_monitor_scrapes_the_meters_metrics_port(helm: str) -> None:
    objects = render(helm, *BUNDLED)
    monitor = objects[("ServiceMonitor", "tw-tollway-meter")]
    services = [d for (kind, _), d in objects.items() if kind == "Service"]
    (service,) = [
        s for s in services if selects(monitor["spec"]["selector"]["matchLabels"], s["metadata"]["labels"])
    ]
    assert service["metadata"]["name"] == "tw-tollway-meter"
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["path"] == "/metrics"
    (port,) = [p for p in service["spec"]["ports"] if p["name"] == endpoint["port"]]
    (meter,) = pod_spec(objects[("Deployment", "tw-tollway-meter")])["containers"]
    (container_port,) = [p for p in meter["ports"] if p["name"] == port["targetPort"]]
    assert f"--metrics-port={container_port['containerPort']}" in meter["args"]
    assert {p["name"] for p in meter["ports"]} == {"api", "metrics"}


def _pod_labels(objects: dict[tuple[str, str], dict[str, Any]], name: str) -> dict[str, str]:
    for kind in ("Deployment", "StatefulSet"):
        if (kind, name) in objects:
            labels: dict[str, str] = objects[(kind, name)]["spec"]["template"]["metadata"]["labels"]
            return labels
    raise AssertionError(f"no workload {name}")


def test_network_policies_admit_only_what_the_meter_needs(helm: str) -> None:
    objects = render(helm, *BUNDLED)
    policy = objects[("NetworkPolicy", "tw-tollway-meter")]["spec"]
    assert selects(policy["podSelector"]["matchLabels"], _pod_labels(objects, "tw-tollway-meter"))
    assert sorted(policy["policyTypes"]) == ["Egress", "Ingress"]
    (meter,) = pod_spec(objects[("Deployment", "tw-tollway-meter")])["containers"]
    (ingress,) = policy["ingress"]
    assert sorted(p["port"] for p in ingress["ports"]) == sorted(p["containerPort"] for p in meter["ports"])
    assert ingress["from"] == [
        {"podSelector": {}},
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}},
    ]
    dns, redis, postgres = policy["egress"]
    assert "to" not in dns and {p["port"] for p in dns["ports"]} == {53}
    for rule, workload, port in (
        (redis, "tw-tollway-redis", 6379),
        (postgres, "tw-tollway-postgresql", 5432),
    ):
        (peer,) = rule["to"]
        assert selects(peer["podSelector"]["matchLabels"], _pod_labels(objects, workload)), workload
        assert not selects(peer["podSelector"]["matchLabels"], _pod_labels(objects, "tw-tollway-gateway"))
        assert rule["ports"] == [{"port": port, "protocol": "TCP"}]

    database = objects[("NetworkPolicy", "tw-tollway-postgresql")]["spec"]
    assert selects(database["podSelector"]["matchLabels"], _pod_labels(objects, "tw-tollway-postgresql"))
    assert "egress" not in database and "Egress" in database["policyTypes"]  # it connects nowhere
    ((peer,),) = [rule["from"] for rule in database["ingress"]]
    assert selects(peer["podSelector"]["matchLabels"], _pod_labels(objects, "tw-tollway-meter"))
    assert not selects(peer["podSelector"]["matchLabels"], _pod_labels(objects, "tw-tollway-gateway"))


def test_network_policy_to_your_own_redis_and_database_uses_their_ports(helm: str) -> None:
    objects = render(helm, *METER_VALUES_SETS["meter-networkpolicy"])
    _, redis, postgres = objects[("NetworkPolicy", "tw-tollway-meter")]["spec"]["egress"]
    assert redis == {"ports": [{"port": 6380, "protocol": "TCP"}]}  # rediss://…:6380/0
    assert postgres == {"ports": [{"port": 6432, "protocol": "TCP"}]}  # meter.database.port
    default_port = render(
        helm,
        *METER_VALUES_SETS["meter-networkpolicy"],
        "--set",
        "redis.external.url=redis://redis.example.internal/0",
    )
    _, redis, _ = default_port[("NetworkPolicy", "tw-tollway-meter")]["spec"]["egress"]
    assert redis == {"ports": [{"port": 6379, "protocol": "TCP"}]}


@pytest.mark.parametrize("values", ["meter", "meter-bundled-off"])
def test_no_network_policy_unless_asked(helm: str, values: str) -> None:
    args = {
        "meter": ["--set", "meter.enabled=true", "--set", "meter.database.existingSecret=ledger-dsn"],
        "meter-bundled-off": [*BUNDLED, "--set", "meter.networkPolicy.enabled=false"],
    }[values]
    assert [name for kind, name in render(helm, *args) if kind == "NetworkPolicy"] == []


def _meter_args(helm: str, *extra: str) -> list[str]:
    meter = render(helm, *BUNDLED, *extra)[("Deployment", "tw-tollway-meter")]
    args: list[str] = pod_spec(meter)["containers"][0]["args"]
    return args


def test_automatic_close_and_retention_are_off_unless_set(helm: str) -> None:
    args = _meter_args(helm)
    assert not [a for a in args if a.startswith(("--close-after", "--retain-months"))], args
    args = _meter_args(helm, "--set", "meter.closeAfter=72h", "--set", "meter.retainMonths=0")
    assert {"--close-after=72h", "--retain-months=0"} <= set(args), args


@pytest.mark.parametrize(
    "values", [["--set", "meter.closeAfter=72 hours"], ["--set", "meter.retainMonths=-1"]]
)
def test_a_bad_close_or_retention_value_is_refused_by_the_schema(helm: str, values: list[str]) -> None:
    result = template(helm, *BUNDLED, *values)
    assert result.returncode != 0 and "meter" in result.stderr, result.stderr


CONSOLE = METER_VALUES_SETS["meter-console"]


def test_the_console_is_off_by_default_with_no_rbac_and_no_token(helm: str) -> None:
    objects = render(helm, *METER_VALUES_SETS["meter-networkpolicy"])
    assert not [a for a in _args(objects) if a.startswith(("--console", "--auth"))]
    assert not [
        name for kind, name in objects if kind in ("ClusterRole", "ClusterRoleBinding") and "meter" in name
    ]
    assert objects[("ServiceAccount", "tw-tollway-meter")]["automountServiceAccountToken"] is False


def _args(objects: dict[tuple[str, str], dict[str, Any]]) -> list[str]:
    args: list[str] = pod_spec(objects[("Deployment", "tw-tollway-meter")])["containers"][0]["args"]
    return args


def test_the_console_runs_with_kubernetes_auth_and_exactly_the_review_rbac(helm: str) -> None:
    objects = render(helm, *CONSOLE)
    args = _args(objects)
    assert {
        "--console",
        "--auth=kubernetes",
        "--budgets-from=kubernetes",
        "--jaeger-url=http://jaeger.example:16686",
    } <= set(args)
    assert objects[("ServiceAccount", "tw-tollway-meter")]["automountServiceAccountToken"] is True
    assert pod_spec(objects[("Deployment", "tw-tollway-meter")])["automountServiceAccountToken"] is True
    role = objects[("ClusterRole", "tw-tollway-meter-console")]
    assert role["rules"] == [
        {"apiGroups": ["authentication.k8s.io"], "resources": ["tokenreviews"], "verbs": ["create"]},
        {"apiGroups": ["authorization.k8s.io"], "resources": ["subjectaccessreviews"], "verbs": ["create"]},
    ]
    budgets = objects[("ClusterRole", "tw-tollway-meter-budgets")]
    assert budgets["rules"] == [{"apiGroups": ["tollway.dev"], "resources": ["budgets"], "verbs": ["list"]}]
    for name in ("tw-tollway-meter-console", "tw-tollway-meter-budgets"):
        binding = objects[("ClusterRoleBinding", name)]
        assert binding["roleRef"]["name"] == name
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": "tw-tollway-meter", "namespace": "tollway-system"}
        ]
    # Nothing else is bound to the meter's account.
    bound = [
        (kind, name)
        for (kind, name), d in objects.items()
        if kind in ("RoleBinding", "ClusterRoleBinding")
        and any(s["name"] == "tw-tollway-meter" for s in d.get("subjects", []))
    ]
    assert sorted(bound) == [
        ("ClusterRoleBinding", "tw-tollway-meter-budgets"),
        ("ClusterRoleBinding", "tw-tollway-meter-console"),
    ]


def test_without_budget_limits_the_meter_has_only_the_review_rbac(helm: str) -> None:
    objects = render(helm, *CONSOLE, "--set", "meter.console.budgetLimits=false")
    assert "--budgets-from=kubernetes" not in _args(objects)
    roles = sorted(
        name for kind, name in objects if kind in ("ClusterRole", "ClusterRoleBinding") and "meter" in name
    )
    assert roles == ["tw-tollway-meter-console", "tw-tollway-meter-console"]


def test_the_console_rbac_is_exactly_what_the_kube_tests_proved(helm: str) -> None:
    """tests/kube/test_console_rbac.py runs the console's reviews under deploy/rbac/meter-console.yaml
    (and checks in the audit log that every rule is used and nothing refused)."""
    objects = render(helm, *CONSOLE)
    proved = yaml.safe_load_all((CHART.parents[1] / "deploy" / "rbac" / "meter-console.yaml").read_text())
    proved_roles = {d["metadata"]["name"]: d["rules"] for d in proved if d["kind"] == "ClusterRole"}
    chart_roles = {
        name.replace("tw-tollway-", "tollway-"): d["rules"]
        for (kind, name), d in objects.items()
        if kind == "ClusterRole" and name.startswith("tw-tollway-meter")
    }
    assert chart_roles == proved_roles


def test_the_network_policy_lets_the_console_reach_the_api_server(helm: str) -> None:
    egress = render(helm, *CONSOLE)[("NetworkPolicy", "tw-tollway-meter")]["spec"]["egress"]
    assert egress[-1] == {"ports": [{"port": 443, "protocol": "TCP"}, {"port": 6443, "protocol": "TCP"}]}
    without = render(helm, *METER_VALUES_SETS["meter-networkpolicy"])[("NetworkPolicy", "tw-tollway-meter")]
    assert len(without["spec"]["egress"]) == 3  # DNS, Redis, PostgreSQL only


def test_the_console_arguments_are_options_of_meter_run_it_accepts(helm: str) -> None:
    """What the chart passes for the console parses as `tollway meter run` options, and the run
    gets past its option checks (it fails only later, on the Redis and database it cannot reach)."""
    from click.testing import CliRunner

    from tollway.meter_cli import meter_run

    args = _args(render(helm, *CONSOLE))[2:]
    flags = {opt for param in meter_run.params for opt in param.opts}
    for arg in args:
        assert arg.split("=", 1)[0] in flags, f"`tollway meter run` has no option {arg}"
    # Outside a cluster `--auth kubernetes` needs --kube-url: the refusal names it, so the chart's
    # flags reached the console's checks (in the Pod, KUBERNETES_SERVICE_HOST is set).
    result = CliRunner().invoke(
        meter_run, [*args, "--redis", "redis://127.0.0.1:1"], env={"KUBERNETES_SERVICE_HOST": ""}
    )
    assert result.exit_code == 2 and "--kube-url" in result.output, result.output


REPORTS = [
    *METER_VALUES_SETS["meter-networkpolicy"],
    "--set",
    "meter.reports.enabled=true",
    "--set-json",
    'meter.reports.secretNamespaces=["team-a","team-b"]',
]


def _reports_container(objects: dict[tuple[str, str], dict[str, Any]]) -> dict[str, Any] | None:
    containers = pod_spec(objects[("Deployment", "tw-tollway-meter")])["containers"]
    return next((c for c in containers if c["name"] == "reports"), None)


def test_reports_are_off_by_default_with_no_rbac(helm: str) -> None:
    objects = render(helm, *METER_VALUES_SETS["meter-networkpolicy"])
    assert _reports_container(objects) is None
    assert not [name for kind, name in objects if "report" in name and kind != "CustomResourceDefinition"]


def test_reports_run_beside_the_meter_on_its_ledger_with_exactly_the_proved_rbac(helm: str) -> None:
    objects = render(helm, *REPORTS)
    container = _reports_container(objects)
    assert container is not None
    assert container["args"][:3] == ["meter", "reports", "--kubernetes"]
    assert env_of(container)["TOLLWAY_METER_DB"] == {"secretKeyRef": {"name": "ledger-dsn", "key": "dsn"}}
    assert pod_spec(objects[("Deployment", "tw-tollway-meter")])["automountServiceAccountToken"] is True
    assert objects[("ServiceAccount", "tw-tollway-meter")]["automountServiceAccountToken"] is True
    # The rules are the ones tests/kube/test_costreport_crd.py ran the scheduler under.
    proved = yaml.safe_load_all((CHART.parents[1] / "deploy" / "rbac" / "meter-reports.yaml").read_text())
    proved_roles = {d["metadata"]["name"]: d["rules"] for d in proved if d["kind"] == "ClusterRole"}
    chart_roles = {
        name.replace("tw-tollway-", "tollway-"): d["rules"]
        for (kind, name), d in objects.items()
        if kind == "ClusterRole" and "report" in name
    }
    assert chart_roles == proved_roles
    # Secrets only in the namespaces named, never through a ClusterRoleBinding.
    rendered = template(helm, *REPORTS)
    bindings = {
        (d["kind"], d["metadata"].get("namespace"), d["roleRef"]["name"])
        for d in documents(rendered.stdout)
        if d["kind"] in ("RoleBinding", "ClusterRoleBinding") and "report" in d["roleRef"]["name"]
    }
    assert bindings == {
        ("ClusterRoleBinding", None, "tw-tollway-meter-reports"),
        ("RoleBinding", "team-a", "tw-tollway-meter-report-secrets"),
        ("RoleBinding", "team-b", "tw-tollway-meter-report-secrets"),
    }
    egress = objects[("NetworkPolicy", "tw-tollway-meter")]["spec"]["egress"]
    ports = [{"port": p, "protocol": "TCP"} for p in (25, 465, 587, 443)]
    assert egress[-2:] == [
        {"ports": [{"port": 443, "protocol": "TCP"}, {"port": 6443, "protocol": "TCP"}]},
        {"ports": ports},
    ]


def test_the_reports_arguments_are_options_of_meter_reports(helm: str) -> None:
    from tollway.report_cli import meter_reports

    container = _reports_container(render(helm, *REPORTS))
    assert container is not None
    flags = {opt for param in meter_reports.params for opt in param.opts}
    for arg in container["args"][2:]:
        assert arg.split("=", 1)[0] in flags, f"`tollway meter reports` has no option {arg}"


@pytest.mark.parametrize(
    "values",
    [
        ["--set-json", 'meter.reports.secretNamespaces=["Team_A"]'],
        ["--set", "meter.reports.interval=0"],
        ["--set", "meter.reports.schedule=weekly"],
    ],
)
def test_bad_reports_values_are_refused_by_the_schema(helm: str, values: list[str]) -> None:
    result = template(helm, *METER_VALUES_SETS["meter-networkpolicy"], *values)
    assert result.returncode != 0 and "meter.reports" in result.stderr.replace("/", "."), result.stderr
