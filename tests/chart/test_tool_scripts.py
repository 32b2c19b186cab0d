"""scripts/tools/helm.sh and kubectl.sh with TOLLWAY_HELM and TOLLWAY_KUBECTL: the way to run the
helm tiers where the layer's linux/amd64 binaries cannot (arm64)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from chart_env import ROOT

TOOLS = ROOT / "scripts" / "tools"


def run(script: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k not in ("TOLLWAY_HELM", "TOLLWAY_KUBECTL")}
    return subprocess.run(
        ["bash", str(TOOLS / script)],
        env={**clean, "TOLLWAY_TOOLS_NO_BUILD": "1", **env},
        capture_output=True,
        text=True,
        check=False,
    )


@pytest.fixture(scope="module")
def kubectl(helm: str) -> str:
    return run("helm.sh").stdout.splitlines()[1]


def test_given_helm_and_kubectl_are_what_both_scripts_print(helm: str, kubectl: str, tmp_path: Path) -> None:
    # Copies elsewhere, so that the answer cannot be the cache's own paths.
    for name, source in (("helm", helm), ("kubectl", kubectl)):
        (tmp_path / name).symlink_to(source)
    given = {"TOLLWAY_HELM": str(tmp_path / "helm"), "TOLLWAY_KUBECTL": str(tmp_path / "kubectl")}
    result = run("helm.sh", **given)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [given["TOLLWAY_HELM"], given["TOLLWAY_KUBECTL"]]
    assert run("kubectl.sh", **given).stdout.splitlines() == [given["TOLLWAY_KUBECTL"]]


def test_one_of_the_two_alone_is_refused_naming_the_other(helm: str) -> None:
    result = run("helm.sh", TOLLWAY_HELM=helm)
    assert result.returncode != 0
    assert "TOLLWAY_KUBECTL='' is not an executable file" in result.stderr


def test_a_helm_that_is_not_helm_4_is_refused(kubectl: str, tmp_path: Path) -> None:
    old = tmp_path / "helm"
    old.write_text("#!/bin/sh\necho v3.17.3\n")
    old.chmod(0o755)
    result = run("helm.sh", TOLLWAY_HELM=str(old), TOLLWAY_KUBECTL=kubectl)
    assert result.returncode != 0
    assert "is helm v3.17.3; the tests need helm 4" in result.stderr
