"""Helm for the chart tests: the binary `scripts/tools/helm.sh` provides (make tools)."""

from __future__ import annotations

import os
import subprocess

import pytest
from chart_env import ROOT


@pytest.fixture(scope="session")
def helm() -> str:
    result = subprocess.run(
        ["bash", str(ROOT / "scripts" / "tools" / "helm.sh")],
        capture_output=True,
        text=True,
        env={**os.environ, "TOLLWAY_TOOLS_NO_BUILD": "1"},
        check=False,
    )
    if result.returncode != 0:
        pytest.fail(f"helm is needed for the chart tests: run `make tools`.\n{result.stderr}")
    return result.stdout.splitlines()[0]
