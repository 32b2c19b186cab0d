"""The sidecar's worker count: one value read by Envoy's bootstrap and the sidecar alike."""

from __future__ import annotations

from typing import Any

import pytest
from chart_env import documents, template


def _gateway(helm: str, *args: str) -> dict[str, Any]:
    result = template(helm, *args)
    assert result.returncode == 0, result.stderr
    deployment = next(
        d
        for d in documents(result.stdout)
        if d["kind"] == "Deployment" and d["metadata"]["name"].endswith("-gateway")
    )
    spec: dict[str, Any] = deployment["spec"]["template"]["spec"]
    return spec


def _workers(helm: str, *args: str) -> tuple[str, str]:
    spec = _gateway(helm, *args)
    (init,) = spec["initContainers"]
    (flag,) = [a for a in init["args"] if a.startswith("--workers=")]
    sidecar = next(c for c in spec["containers"] if c["name"] == "sidecar")
    (env,) = [e["value"] for e in sidecar["env"] if e["name"] == "TOLLWAY_WORKERS"]
    return flag.removeprefix("--workers="), env


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ((), "1"),  # no CPU limit: one worker
        (("--set", "gateway.resources.sidecar.limits.cpu=2"), "2"),
        (("--set", "gateway.resources.sidecar.limits.cpu=1500m"), "2"),  # a started core counts
        (("--set", "gateway.resources.sidecar.limits.cpu=500m"), "1"),
        (("--set", "gateway.resources.sidecar.limits.cpu=2,gateway.sidecarWorkers=3"), "3"),
    ],
)
def test_bootstrap_and_sidecar_agree_on_the_workers(helm: str, args: tuple[str, ...], expected: str) -> None:
    assert _workers(helm, *args) == (expected, expected)


def test_the_workers_metrics_folder_is_on_the_writable_volume(helm: str) -> None:
    spec = _gateway(helm)
    sidecar = next(c for c in spec["containers"] if c["name"] == "sidecar")
    (folder,) = [e["value"] for e in sidecar["env"] if e["name"] == "TOLLWAY_METRICS_DIR"]
    mounts = {m["mountPath"] for m in sidecar["volumeMounts"] if not m.get("readOnly")}
    assert any(folder.startswith(mount + "/") for mount in mounts)


def test_the_schema_refuses_zero_workers(helm: str) -> None:
    result = template(helm, "--set", "gateway.sidecarWorkers=0")
    assert result.returncode != 0
    assert "sidecarWorkers" in result.stderr
