"""The operator on a fresh cluster: its config Secret's namespace does not exist yet.

A person sees why nothing is published (every resource's `Ready` condition and a Warning Event name
the missing namespace), creates the namespace, and the config is published within seconds — not at
the next resync (300 s by default).
"""

from __future__ import annotations

import json
import re
import secrets
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from conftest import Plane
from redisserver import RedisServer
from stack import CONFIG_SECRET, OperatorProcess, mock_route, wait_for

pytestmark = pytest.mark.timeout(120)

PUBLISHED_WITHIN_S = 8.0  # the retry backoff is capped at 5 s while the namespace is missing


def failed_passes(operator: OperatorProcess) -> float:
    url = f"http://127.0.0.1:{operator.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=2) as response:
        text = response.read().decode()
    match = re.search(r'^tollway_operator_reconciles_total\{result="temporary_error"\} (\S+)$', text, re.M)
    return float(match[1]) if match else 0.0


def test_a_missing_config_namespace_is_named_then_published_seconds_after_it_appears(
    plane: Plane, tmp_path: Path
) -> None:
    cp = plane.cp
    suffix = secrets.token_hex(3)
    apps, target = f"fresh-apps-{suffix}", f"fresh-system-{suffix}"
    cp.create_namespace(apps)
    rule = {**mock_route("fresh", "fresh-model", 9), "metadata": {"name": "fresh", "namespace": apps}}
    cp.kubectl("apply", "-f", "-", input=json.dumps(rule))

    redis = RedisServer(tmp_path / "redis")
    redis.start()
    operator = OperatorProcess(
        cp.kubeconfig,  # the admin: this test is about the namespace, RBAC has its own tests
        redis.url,
        tmp_path,
        extra_env={
            "TOLLWAY_OPERATOR_CONFIG_SECRET": f"{target}/{CONFIG_SECRET}",
            "TOLLWAY_OPERATOR_RETRY_SECONDS": "0.5",
        },
        args=("--namespace", apps),
    )
    try:
        operator.start()

        def ready_condition() -> dict[str, Any] | None:
            operator.check_alive()
            found = cp.kubectl("get", "routerule", "fresh", "-n", apps, "-o", "json").stdout
            status = json.loads(found).get("status") or {}
            ready = {c["type"]: c for c in status.get("conditions") or ()}.get("Ready")
            return ready if ready and ready.get("reason") == "PublishFailed" else None

        ready = wait_for(ready_condition, 30, "Ready=False PublishFailed on the RouteRule")
        assert ready["status"] == "False"
        assert target in ready["message"], ready["message"]

        def event() -> dict[str, Any] | None:
            path = f"/api/v1/namespaces/{apps}/events?fieldSelector=involvedObject.name%3Dfresh"
            items = [e for e in cp.api("GET", path)["items"] if e.get("reason") == "PublishFailed"]
            return items[0] if items else None

        warning = wait_for(event, 15, "a PublishFailed Event on the RouteRule")
        assert warning["type"] == "Warning"
        assert f"namespace {target} does not exist" in warning["message"]
        assert f"kubectl create namespace {target}" in warning["message"]
        assert warning["involvedObject"]["kind"] == "RouteRule"

        # Let the backoff grow (0.5, 1, 2, 4 s…): the namespace appears while the operator waits longest.
        wait_for(lambda: failed_passes(operator) >= 4 or None, 30, "four failed passes", interval=0.2)
        created = time.monotonic()
        cp.create_namespace(target)

        def published() -> dict[str, Any] | None:
            operator.check_alive()
            result = cp.kubectl("get", "secret", CONFIG_SECRET, "-n", target, "-o", "json", check=False)
            return json.loads(result.stdout) if result.returncode == 0 else None

        wait_for(published, 60, f"Secret {target}/{CONFIG_SECRET}", interval=0.2)
        elapsed = time.monotonic() - created
        assert elapsed < PUBLISHED_WITHIN_S, f"published {elapsed:.1f} s after the namespace appeared"

        def ready_again() -> bool | None:
            found = cp.kubectl("get", "routerule", "fresh", "-n", apps, "-o", "json").stdout
            status = json.loads(found).get("status") or {}
            ready = {c["type"]: c for c in status.get("conditions") or ()}.get("Ready") or {}
            return True if ready.get("status") == "True" else None

        wait_for(ready_again, 15, "Ready=True once published")
        # It retried while the namespace was missing, and said so once.
        path = f"/api/v1/namespaces/{apps}/events?fieldSelector=involvedObject.name%3Dfresh"
        reported = [e for e in cp.api("GET", path)["items"] if e.get("reason") == "PublishFailed"]
        assert len(reported) == 1, [e["message"] for e in reported]
    finally:
        operator.stop()
        redis.stop()
        cp.kubectl("delete", "routerule", "fresh", "-n", apps, "--wait=false", check=False)
