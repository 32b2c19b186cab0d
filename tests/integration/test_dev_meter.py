"""`tollway dev --redis` runs the meter as one of its children: the calls reach a SQLite ledger in
the state folder, and the `tollway usage` command the banner prints shows them, equal to /spend."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import openai
import pytest
from gateway_env import DEMO_KEY
from redisserver import RedisServer
from test_lifecycle import dev_process, local_config, wait_for

from tollway.dev import DevError, DevGateway, DevOptions, free_port, usage_lines

MESSAGES = [{"role": "user", "content": "What does a toll road cost?"}]
COST_COMMENT = ": x-tollway-cost-usd="
NO_REDIS = "  usage ledger: needs --redis for now (the in-memory store's usage events are not consumed yet)"


def ledger_events(path: Path) -> int:
    if not path.exists():
        return 0
    try:
        with sqlite3.connect(path) as db:
            return int(db.execute("SELECT count(*) FROM usage_events").fetchone()[0])
    except sqlite3.OperationalError:  # not migrated yet
        return 0


def three_calls(sdk: openai.OpenAI) -> Decimal:
    """Two JSON calls and one stream; the sum of the costs the gateway told the client."""
    total = Decimal(0)
    for _ in range(2):
        raw = sdk.chat.completions.with_raw_response.create(
            model="gpt-4o-mini",
            messages=MESSAGES,  # type: ignore[arg-type]
        )
        total += Decimal(raw.headers["x-tollway-cost-usd"])
    with sdk.chat.completions.with_streaming_response.create(
        model="gpt-4o-mini",
        messages=MESSAGES,  # type: ignore[arg-type]
        stream=True,
        extra_headers={"x-tollway-stream-cost": "comment"},  # the stream's cost, before [DONE]
    ) as response:
        lines = list(response.iter_lines())
    (cost,) = [line.removeprefix(COST_COMMENT) for line in lines if line.startswith(COST_COMMENT)]
    return total + Decimal(cost)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis")
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_dev_with_redis_meters_the_calls_into_the_ledger_the_banner_names(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    mock_port, port, admin_port, state = free_port(), free_port(), free_port(), tmp_path / "state"
    options = ("--admin-port", str(admin_port), "--state-dir", str(state), "--redis", redis_server.url)
    with dev_process(tmp_path, mock_port, port, *options) as (dev, lines):
        ledger = (state / "ledger.db").resolve()
        command = f"tollway usage --db sqlite:///{ledger} --by model"
        assert f"  usage:  {command}\n" in lines, "".join(lines)

        with openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=DEMO_KEY, max_retries=0) as sdk:
            told = three_calls(sdk)
        assert wait_for(lambda: ledger_events(ledger) == 3, timeout=30), (
            f"{ledger_events(ledger)} events in {ledger}; meter.log:\n"
            + ((state / "meter.log").read_text() if (state / "meter.log").exists() else "(none)")
        )
        with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/spend", timeout=5) as response:
            spent = Decimal(json.loads(response.read())["keys"]["default/demo"]["spent_usd"])

        # The printed command, run as the user would.
        shown = subprocess.run(
            [sys.executable, "-m", "tollway", *command.split()[1:]],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        )
        header, _rule, *rows = shown.stdout.splitlines()
        assert header.split() == ["model", "requests", "cost_usd", "input", "output", "cached"], shown.stdout
        (row,) = [row.split() for row in rows]
        model, requests, cost = row[:3]
        assert (model, requests) == ("gpt-4o-mini", "3"), shown.stdout
        assert Decimal(cost) == spent == told > 0
        assert dev.poll() is None, "".join(lines)


def test_the_banner_says_the_ledger_needs_redis_without_it(tmp_path: Path) -> None:
    gateway = DevGateway(DevOptions(config_dir=tmp_path, state_dir=tmp_path / "state"))
    assert usage_lines(gateway) == [NO_REDIS]
    metered = DevGateway(DevOptions(config_dir=tmp_path, redis_url="redis://x", state_dir=tmp_path / "s"))
    assert usage_lines(metered)[0] == f"  usage:  tollway usage --db {metered.ledger_dsn} --by model"
    off = DevGateway(DevOptions(config_dir=tmp_path, redis_url="redis://x", meter=False))
    assert "off (--no-meter)" in usage_lines(off)[0]


def test_meter_without_redis_is_refused_before_anything_starts(tmp_path: Path) -> None:
    gateway = DevGateway(DevOptions(config_dir=tmp_path, meter=True, state_dir=tmp_path / "state"))
    with pytest.raises(DevError, match="--meter needs --redis"):
        gateway.start()
    assert gateway.processes == []


def test_without_redis_the_printed_banner_says_so(tmp_path: Path) -> None:
    mock_port = free_port()
    argv = [
        *(sys.executable, "-m", "tollway", "dev", "--config", str(local_config(tmp_path, mock_port))),
        *("--port", str(free_port()), "--admin-port", str(free_port()), "--mock-port", str(mock_port)),
        *("--state-dir", str(tmp_path / "state")),
    ]
    dev = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert dev.stdout is not None
        banner: list[str] = []
        deadline = time.monotonic() + 60
        for line in dev.stdout:
            banner.append(line)
            if line.startswith("Press Ctrl-C") or time.monotonic() > deadline:
                break
        assert NO_REDIS + "\n" in banner, "".join(banner)
        assert not (tmp_path / "state" / "ledger.db").exists()
    finally:
        if dev.poll() is None:
            dev.send_signal(signal.SIGTERM)
            dev.wait(timeout=20)
        if dev.stdout:
            dev.stdout.close()
