"""The operator's end-to-end stack: a real kube-apiserver (tests/kube/harness.py), the CRDs, the RBAC
from deploy/rbac/, Redis, the operator as its own process under its ServiceAccount token, and a
gateway (Envoy + sidecar + mock provider, `tollway dev`'s own class) whose sidecar watches the
GatewayConfig Secret under the gateway's ServiceAccount token.

The API server writes an audit log of every request the two ServiceAccounts make, which is how the
tests show that the RBAC rules are enough (no 403) and no broader than needed (every rule used).
Also used by bench/propagation.py.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
for folder in ("kube", "integration"):
    if str(ROOT / "tests" / folder) not in sys.path:
        sys.path.insert(0, str(ROOT / "tests" / folder))

from harness import ControlPlane, free_port, wait_for  # noqa: E402
from redisserver import RedisServer  # noqa: E402

from tollway.dev import DevGateway, DevOptions  # noqa: E402

SYSTEM_NS = "tollway-system"
CONFIG_SECRET = "tollway-gateway-config"
OPERATOR_SA = "tollway-operator"
GATEWAY_SA = "tollway-gateway"
SPEND_INTERVAL = 1.0  # seconds; the default is 15

AUDIT_POLICY = f"""\
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
  - level: Metadata
    users:
      - system:serviceaccount:{SYSTEM_NS}:{OPERATOR_SA}
      - system:serviceaccount:{SYSTEM_NS}:{GATEWAY_SA}
  - level: None
"""


@dataclass
class OperatorProcess:
    """`tollway operator` as a child process, authenticated by a ServiceAccount kubeconfig."""

    kubeconfig: Path
    redis_url: str
    workdir: Path
    extra_env: dict[str, str] = field(default_factory=dict)
    args: tuple[str, ...] = ("--all-namespaces",)
    health_port: int = field(default_factory=free_port)
    metrics_port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0

    @property
    def log(self) -> Path:
        return self.workdir / "operator.log"

    def start(self) -> None:
        self.starts += 1
        env = {
            **os.environ,
            "PYTHONUNBUFFERED": "1",
            "KUBECONFIG": str(self.kubeconfig),
            "TOLLWAY_OPERATOR_CONFIG_SECRET": f"{SYSTEM_NS}/{CONFIG_SECRET}",
            "TOLLWAY_OPERATOR_REDIS_URL": self.redis_url,
            "TOLLWAY_OPERATOR_SPEND_INTERVAL": str(SPEND_INTERVAL),
            "TOLLWAY_OPERATOR_HEALTH_PORT": str(self.health_port),
            "TOLLWAY_OPERATOR_METRICS_PORT": str(self.metrics_port),
            "TOLLWAY_OPERATOR_WEBHOOK_BACKOFF_SECONDS": "0.2",
            "TOLLWAY_OPERATOR_RETRY_SECONDS": "0.5",
            **self.extra_env,
        }
        with self.log.open("ab") as out:
            out.write(f"\n=== start {self.starts} ===\n".encode())
            self.process = subprocess.Popen(
                [sys.executable, "-m", "tollway", "operator", *self.args],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    def probe(self) -> dict[str, Any]:
        """Kopf's liveness endpoint: our probe reports the version of the last compiled config."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.health_port}/healthz", timeout=2) as response:
            return dict(json.loads(response.read()))

    def wait_compiled(self, version: str | None = None, timeout: float = 30.0) -> str:
        """Until a pass has compiled (the given config version, when said); return the version."""

        def check() -> str | None:
            self.check_alive()
            got = str(self.probe().get("config", ""))
            ok = got != "not compiled yet" and (version is None or got == version)
            return got if ok else None

        return wait_for(check, timeout, f"operator compiled {version or 'a config'}", interval=0.1)

    def check_alive(self) -> None:
        if self.process is not None and self.process.poll() is not None:
            raise RuntimeError(f"the operator exited with {self.process.returncode}:\n{self.tail()}")

    def tail(self, lines: int = 60) -> str:
        with suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def stop(self) -> int | None:
        if self.process is None:
            return None
        if self.process.poll() is None:
            with suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                with suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        code = self.process.returncode
        self.process = None
        return code


@dataclass
class Stack:
    cp: ControlPlane
    redis: RedisServer
    operator: OperatorProcess
    gateway: DevGateway
    workdir: Path
    audit_log: Path

    # -- cluster ------------------------------------------------------------------------------------

    def apply(self, manifest: str | list[dict[str, Any]] | dict[str, Any]) -> None:
        if isinstance(manifest, dict):
            manifest = [manifest]
        text = manifest if isinstance(manifest, str) else "\n---\n".join(json.dumps(m) for m in manifest)
        self.cp.kubectl("apply", "-f", "-", input=text)

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        result = self.cp.kubectl("get", kind, name, "-n", namespace, "-o", "json", check=False)
        if result.returncode != 0:
            if "NotFound" in result.stderr:
                return None
            raise RuntimeError(result.stderr)
        return dict(json.loads(result.stdout))

    def namespace(self, name: str) -> str:
        self.cp.create_namespace(name)
        return name

    def conditions(self, kind: str, namespace: str, name: str) -> dict[str, dict[str, Any]]:
        obj = self.get(kind, namespace, name) or {}
        return {c["type"]: c for c in (obj.get("status") or {}).get("conditions") or ()}

    def config_secret(self) -> dict[str, Any] | None:
        return self.get("secret", SYSTEM_NS, CONFIG_SECRET)

    def published(self) -> dict[str, Any]:
        secret = self.config_secret() or {}
        return dict(json.loads(base64.b64decode(secret["data"]["config.json"])))

    def events(self, namespace: str, name: str) -> list[dict[str, Any]]:
        path = f"/api/v1/namespaces/{namespace}/events?fieldSelector=involvedObject.name%3D{name}"
        return list(self.cp.api("GET", path)["items"])

    # -- gateway ------------------------------------------------------------------------------------

    def call(self, key: str, model: str, max_tokens: int = 20) -> tuple[int, dict[str, Any]]:
        body = json.dumps(
            {"model": model, "messages": [{"role": "user", "content": "Hello"}], "max_tokens": max_tokens}
        ).encode()
        request = urllib.request.Request(
            f"{self.gateway.base_url}/chat/completions",
            data=body,
            headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, dict(json.loads(response.read()))
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            try:
                return exc.code, dict(json.loads(raw))
            except ValueError:
                return exc.code, {"raw": raw.decode(errors="replace")}

    def wait_status(self, key: str, model: str, status: int, timeout: float = 15.0) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            got, body = self.call(key, model)
            return (body or {"ok": True}) if got == status else None

        return wait_for(check, timeout, f"a call for {model} answered {status}")

    # -- the audit log -------------------------------------------------------------------------------

    def audit(self, service_account: str) -> list[dict[str, Any]]:
        user = f"system:serviceaccount:{SYSTEM_NS}:{service_account}"
        entries = []
        for line in self.audit_log.read_text().splitlines():
            entry = json.loads(line)
            if entry.get("user", {}).get("username") == user:
                entries.append(entry)
        return entries


def mock_route(name: str, model: str, port: int, **spec: Any) -> dict[str, Any]:
    """A RouteRule to the mock provider, priced high enough that a few calls cross thresholds."""
    backend = {
        "name": "mock",
        "provider": "openai-compatible",
        "model": "gpt-4o-mini",
        "baseURL": f"http://127.0.0.1:{port}/v1",
        "pricing": {"inputPerMillion": "10000", "outputPerMillion": "10000"},
    }
    return {
        "apiVersion": "tollway.dev/v1alpha1",
        "kind": "RouteRule",
        "metadata": {"name": name},
        "spec": {"model": model, "backends": [backend], **spec},
    }


def resource(kind: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "tollway.dev/v1alpha1", "kind": kind, "metadata": {"name": name}, "spec": spec}


def key_secret(name: str, value: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "stringData": {"key": value}}


def in_namespace(namespace: str, *manifests: dict[str, Any]) -> list[dict[str, Any]]:
    return [{**m, "metadata": {**m["metadata"], "namespace": namespace}} for m in manifests]


def start_control_plane(workdir: Path) -> tuple[ControlPlane, Path]:
    """An API server with the audit log on, the CRDs, the tollway-system namespace and the RBAC."""
    cp, audit_log = ControlPlane.start_audited(workdir, AUDIT_POLICY)
    try:
        cp.kubectl("apply", "-f", str(ROOT / "crds"))
        for crd in ("virtualkeys", "budgets", "routerules"):
            cp.kubectl("wait", "--for=condition=Established", "--timeout=60s", f"crd/{crd}.tollway.dev")
        cp.create_namespace(SYSTEM_NS)
        cp.kubectl("apply", "-f", str(ROOT / "deploy" / "rbac"))
    except BaseException:
        cp.stop()
        raise
    return cp, audit_log


@contextmanager
def running_stack(cp: ControlPlane, audit_log: Path, workdir: Path) -> Iterator[Stack]:
    """Redis, the operator and the gateway on a started control plane; everything stopped after."""
    workdir.mkdir(parents=True, exist_ok=True)
    redis = RedisServer(workdir / "redis")
    redis.start()
    operator: OperatorProcess | None = None
    gateway: DevGateway | None = None
    try:
        operator = OperatorProcess(
            cp.service_account_kubeconfig(SYSTEM_NS, OPERATOR_SA, workdir / "operator.kubeconfig"),
            redis.url,
            workdir,
        )
        operator.start()
        options = DevOptions(
            config_dir=workdir,
            port=free_port(),
            admin_port=free_port(),
            mock_port=free_port(),
            state_dir=workdir / "gateway",
            redis_url=redis.url,
            meter=False,  # no dev meter draining the usage stream (test_dev_meter.py runs one)
            quiet=True,
            config_secret=f"{SYSTEM_NS}/{CONFIG_SECRET}",
            kubeconfig=cp.service_account_kubeconfig(SYSTEM_NS, GATEWAY_SA, workdir / "gateway.kubeconfig"),
        )
        gateway = DevGateway(options)
        gateway.start()
        yield Stack(cp, redis, operator, gateway, workdir, audit_log)
    finally:
        if gateway is not None:
            gateway.stop()
        if operator is not None:
            operator.stop()
        redis.stop()
