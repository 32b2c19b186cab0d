"""Paths and `helm template` for the chart tests (a module of its own, so tests import it by a unique
name)."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "tollway"


def template(helm: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [helm, "template", "tw", str(CHART), "--namespace", "tollway-system", *args],
        capture_output=True,
        text=True,
        check=False,
    )


def documents(text: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


# Values sets of the meter's optional parts (golden renders in test_chart.py, checks in
# test_chart_meter.py). The trial database gets a fixed password so its render is the same each time.
METER_VALUES_SETS: dict[str, list[str]] = {
    "meter-bundled": [
        "--set",
        "meter.enabled=true",
        "--set",
        "meter.postgresql.bundled.enabled=true",
        "--set",
        "meter.postgresql.bundled.password=golden-trial-password",
        "--set",
        "meter.networkPolicy.enabled=true",
        "--set-json",
        'meter.networkPolicy.ingressFrom=[{"namespaceSelector":'
        '{"matchLabels":{"kubernetes.io/metadata.name":"monitoring"}}}]',
        "--set",
        "metrics.serviceMonitor.enabled=true",
    ],
    "meter-networkpolicy": [
        "--set",
        "meter.enabled=true",
        "--set",
        "meter.database.existingSecret=ledger-dsn",
        "--set",
        "meter.database.port=6432",
        "--set",
        "meter.networkPolicy.enabled=true",
        "--set",
        "redis.mode=external",
        "--set",
        "redis.external.url=rediss://redis.example.internal:6380/0",
    ],
    "meter-console": [
        "--set",
        "meter.enabled=true",
        "--set",
        "meter.database.existingSecret=ledger-dsn",
        "--set",
        "meter.networkPolicy.enabled=true",
        "--set",
        "meter.console.enabled=true",
        "--set",
        "meter.console.jaegerUrl=http://jaeger.example:16686",
    ],
}
