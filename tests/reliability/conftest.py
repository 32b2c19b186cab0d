"""The reliability tier: one Redis and one gateway shared by the fuzzing, fault and secret tests;
the outage, kill and two-replica tests start their own. Figures go to `reliability-figures.json`
under the session's temporary folder (or `$TOLLWAY_RELIABILITY_FIGURES`) and into a table at the
end of the run."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT / "tests" / "integration") not in sys.path:
    sys.path.insert(0, str(ROOT / "tests" / "integration"))

from redisserver import redis_server_fixture  # noqa: E402, F401  (the shared fixture)
from reliability_env import (  # noqa: E402
    FIGURES,
    FIGURES_FILE,
    FaultyProvider,
    RedisServer,
    Shared,
    config_folder,
    key_yaml,
    provider_key,
    routes_yaml,
    start_gateway,
)

from tollway.dev import free_port  # noqa: E402

# The keys of the shared gateway (no limits and no budget: nothing but the request decides).
SHARED_KEYS = ("fuzz", "faults")


@pytest.fixture(scope="session", autouse=True)
def figures_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # TOLLWAY_RELIABILITY_FIGURES keeps them somewhere pytest does not rotate old temp folders away.
    chosen = os.environ.get("TOLLWAY_RELIABILITY_FIGURES")
    path = Path(chosen) if chosen else tmp_path_factory.getbasetemp() / "reliability-figures.json"
    FIGURES_FILE[:] = [path]
    return path


@pytest.fixture(scope="session")
def shared(tmp_path_factory: pytest.TempPathFactory, redis_server: RedisServer) -> Iterator[Shared]:
    base = tmp_path_factory.mktemp("shared")
    mock_port = free_port()
    secret = provider_key()
    faulty = FaultyProvider()
    resources = routes_yaml(mock_port, secret, faulty.port) + "".join(key_yaml(name) for name in SHARED_KEYS)
    try:
        gateway = start_gateway(
            base / "state", config_folder(base, mock_port, resources), redis_server.url, mock_port=mock_port
        )
        try:
            yield Shared(gateway, redis_server, f"http://127.0.0.1:{mock_port}", secret, base / "state")
        finally:
            gateway.dev.stop()
    finally:
        faulty.stop()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not FIGURES:
        return
    terminalreporter.section("reliability figures")
    for section in sorted(FIGURES):
        terminalreporter.write_line(f"{section}:")
        for name, value in sorted(FIGURES[section].items()):
            terminalreporter.write_line(f"    {name:<40} {value}")
    for path in FIGURES_FILE or []:
        terminalreporter.write_line(f"(also in {path})")
