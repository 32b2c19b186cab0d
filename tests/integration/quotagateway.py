"""Gateways for the quota tests: the demo resources plus keys and budgets made for each test, sharing
one redis-server; a second gateway (its own sidecar and Envoy, no mock provider) may join the first."""

from __future__ import annotations

import json
import shutil
import urllib.error
import urllib.request
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

from tollway.dev import DevGateway, DevOptions, free_port

ROOT = Path(__file__).resolve().parents[2]

SECRET_AND_KEY = """\
---
apiVersion: v1
kind: Secret
metadata: {{name: {name}-key}}
stringData: {{key: {value}}}
---
apiVersion: tollway.dev/v1alpha1
kind: VirtualKey
metadata: {{name: {name}}}
spec:
  secretRef: {{name: {name}-key, key: key}}
  owner: {{team: qa}}
{spec}
"""

BUDGET = """\
---
apiVersion: tollway.dev/v1alpha1
kind: Budget
metadata: {{name: {name}}}
spec:
  limit: "{limit}"
{spec}
"""


def key_value(name: str) -> str:
    return f"tw-{name}-" + "0123456789abcdef" * 2


def key_yaml(name: str, spec: str = "") -> str:
    indented = "\n".join("  " + line for line in spec.strip().splitlines())
    return SECRET_AND_KEY.format(name=name, value=key_value(name), spec=indented)


def budget_yaml(name: str, limit: Decimal | str, spec: str = "") -> str:
    indented = "\n".join("  " + line for line in spec.strip().splitlines())
    return BUDGET.format(name=name, limit=limit, spec=indented)


def config_folder(base: Path, mock_port: int, extra: str) -> Path:
    folder = base / "config"
    shutil.copytree(ROOT / "examples" / "local", folder)
    for path in folder.glob("*.yaml"):
        path.write_text(path.read_text().replace("127.0.0.1:9000", f"127.0.0.1:{mock_port}"))
    (folder / "zz-quota.yaml").write_text(extra)
    return folder


@dataclass
class QuotaGateway:
    dev: DevGateway

    @property
    def origin(self) -> str:
        return self.dev.base_url.removesuffix("/v1")

    @property
    def base_url(self) -> str:
        return self.dev.base_url

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.dev.options.admin_port}"

    def spend(self, user: str | None = None) -> dict[str, Any]:
        url = f"{self.admin_url}/spend" + (f"?user={user}" if user else "")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return dict(json.loads(response.read()))
        except urllib.error.HTTPError as exc:
            return {"status": exc.code, **json.loads(exc.read())}


def start_gateway(
    base: Path,
    config_dir: Path,
    redis_url: str | None,
    *,
    mock_port: int,
    mock_provider: bool = True,
    workers: int = 1,
) -> QuotaGateway:
    options = DevOptions(
        config_dir=config_dir,
        port=free_port(),
        admin_port=free_port(),
        mock_port=mock_port,
        mock_provider=mock_provider,
        redis_url=redis_url,
        meter=False,  # no dev meter draining the usage stream (test_dev_meter.py runs one)
        state_dir=base,
        quiet=True,
        workers=workers,
    )
    dev = DevGateway(options)
    try:
        dev.start()
    except BaseException:
        dev.stop()
        raise
    return QuotaGateway(dev)
