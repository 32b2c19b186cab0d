"""`tollway dev` runs the meter as one of its children — on the Redis usage stream with --redis, on
the in-memory store's outbox (the sidecar's admin port) without: the calls reach a SQLite ledger in
the state folder, and the `tollway usage` command the banner prints shows them, equal to /spend.
A meter killed mid-run is restarted and loses nothing."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import openai
import pytest
from gateway_env import DEMO_KEY
from redisserver import RedisServer
from test_lifecycle import _named, _processes_of, dev_process, wait_for

from tollway.dev import DevGateway, DevOptions, free_port, usage_lines

MESSAGES = [{"role": "user", "content": "What does a toll road cost?"}]
COST_COMMENT = ": x-tollway-cost-usd="


def ledger_events(path: Path) -> int:
    if not path.exists():
        return 0
    try:
        with sqlite3.connect(path) as db:
            return int(db.execute("SELECT count(*) FROM usage_events").fetchone()[0])
    except sqlite3.OperationalError:  # not migrated yet
        return 0


def spent(admin_port: int) -> Decimal:
    with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/spend", timeout=5) as response:
        return Decimal(json.loads(response.read())["keys"]["default/demo"]["spent_usd"])


def usage_by_model(command: str) -> tuple[str, int, Decimal]:
    """The printed `tollway usage` command, run as the user would: its one row (model, requests, cost)."""
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
    return row[0], int(row[1]), Decimal(row[2])


def meter_log(state: Path) -> str:
    return (state / "meter.log").read_text() if (state / "meter.log").exists() else "(no meter.log)"


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
        # The printed command, run as the user would.
        assert usage_by_model(command) == ("gpt-4o-mini", 3, spent(admin_port))
        assert spent(admin_port) == told > 0
        assert dev.poll() is None, "".join(lines)


def one_call(sdk: openai.OpenAI) -> Decimal:
    raw = sdk.chat.completions.with_raw_response.create(
        model="gpt-4o-mini",
        messages=MESSAGES,  # type: ignore[arg-type]
    )
    return Decimal(raw.headers["x-tollway-cost-usd"])


def test_dev_without_redis_meters_the_outbox_and_a_killed_meter_loses_nothing(tmp_path: Path) -> None:
    mock_port, port, admin_port, state = free_port(), free_port(), free_port(), tmp_path / "state"
    options = ("--admin-port", str(admin_port), "--state-dir", str(state))
    with dev_process(tmp_path, mock_port, port, *options) as (dev, lines):
        ledger = (state / "ledger.db").resolve()
        command = f"tollway usage --db sqlite:///{ledger} --by model"
        assert f"  usage:  {command}\n" in lines, "".join(lines)

        with openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=DEMO_KEY, max_retries=0) as sdk:
            told = three_calls(sdk)
            assert wait_for(lambda: ledger_events(ledger) == 3, timeout=30), meter_log(state)
            assert usage_by_model(command) == ("gpt-4o-mini", 3, told)
            assert spent(admin_port) == told > 0

            # Calls keep coming while the meter is SIGKILLed and `tollway dev` restarts it.
            (meter,) = _named([pid for pid in _processes_of(state) if pid != dev.pid], b"meter")
            costs: list[Decimal] = []
            caller = threading.Thread(target=lambda: costs.extend(one_call(sdk) for _ in range(20)))
            caller.start()
            assert wait_for(lambda: len(costs) >= 5, timeout=30)
            os.kill(meter, signal.SIGKILL)
            caller.join(timeout=60)
            assert len(costs) == 20
            assert wait_for(lambda: ledger_events(ledger) == 23, timeout=30), (
                f"{ledger_events(ledger)} of 23 events; meter.log:\n{meter_log(state)}"
            )
            # The banner's reader thread may not have taken the restart line yet.
            restarted = "tollway dev: meter exited with code -9; restarting it now"
            assert wait_for(lambda: restarted in "".join(lines), timeout=10), "".join(lines)
            assert usage_by_model(command) == ("gpt-4o-mini", 23, told + sum(costs))
            assert spent(admin_port) == told + sum(costs)

            # The last call's event is taken even when the gateway is stopped right after it.
            last = one_call(sdk)
        dev.send_signal(signal.SIGTERM)
        assert dev.wait(timeout=30) == 0
    assert ledger_events(ledger) == 24, meter_log(state)
    assert usage_by_model(command) == ("gpt-4o-mini", 24, told + sum(costs) + last)
    assert "dropped" not in meter_log(state)


def test_the_banner_prints_the_usage_command_with_or_without_redis(tmp_path: Path) -> None:
    memory = DevGateway(DevOptions(config_dir=tmp_path, state_dir=tmp_path / "state"))
    assert usage_lines(memory)[0] == f"  usage:  tollway usage --db {memory.ledger_dsn} --by model"
    metered = DevGateway(DevOptions(config_dir=tmp_path, redis_url="redis://x", state_dir=tmp_path / "s"))
    assert usage_lines(metered)[0] == f"  usage:  tollway usage --db {metered.ledger_dsn} --by model"
    off = DevGateway(DevOptions(config_dir=tmp_path, redis_url="redis://x", meter=False))
    assert usage_lines(off) == [
        "  usage ledger: off (--no-meter); the calls' events wait in the Redis stream tollway:usage"
    ]
    memory_off = DevGateway(DevOptions(config_dir=tmp_path, admin_port=9999, meter=False))
    assert usage_lines(memory_off) == [
        "  usage ledger: off (--no-meter); the calls' events wait in the sidecar's outbox "
        "(http://127.0.0.1:9999/usage/outbox, the last 10,000 kept)"
    ]


def test_the_dev_meter_reads_the_outbox_without_redis_and_the_stream_with_it(tmp_path: Path) -> None:
    memory = DevGateway(DevOptions(config_dir=tmp_path, admin_port=9999, state_dir=tmp_path / "m"))
    env = memory._meter_env({"TOLLWAY_REDIS_URL": "redis://from-the-shell", "PATH": "/bin"})
    assert env == {"TOLLWAY_METER_OUTBOX": "http://127.0.0.1:9999", "PATH": "/bin"}
    redis = DevGateway(DevOptions(config_dir=tmp_path, redis_url="redis://r", state_dir=tmp_path / "r"))
    assert redis._meter_env({"TOLLWAY_METER_OUTBOX": "http://x"}) == {"TOLLWAY_REDIS_URL": "redis://r"}


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        ([], {}, "give exactly one source: --redis URL"),
        (["--outbox", "http://127.0.0.1:1"], {"TOLLWAY_REDIS_URL": "redis://x"}, "both are set"),
        (["--outbox", "127.0.0.1:1"], {}, "Invalid value for --outbox: expected http://host:port"),
    ],
)
def test_meter_run_takes_exactly_one_source(
    tmp_path: Path, argv: list[str], env: dict[str, str], message: str
) -> None:
    clean = {k: v for k, v in os.environ.items() if k not in ("TOLLWAY_REDIS_URL", "TOLLWAY_METER_OUTBOX")}
    shown = subprocess.run(
        [sys.executable, "-m", "tollway", "meter", "run", "--db", f"sqlite:///{tmp_path / 'l.db'}", *argv],
        capture_output=True,
        text=True,
        env={**clean, **env},
        timeout=60,
        check=False,
    )
    assert shown.returncode == 2, shown.stderr
    assert message in shown.stderr, shown.stderr
    assert not (tmp_path / "l.db").exists()  # refused before anything was opened


def test_meter_run_against_a_sidecar_on_redis_exits_saying_why(tmp_path: Path) -> None:
    """A meter pointed at a sidecar whose store is Redis: the 409 is final, not retried forever."""
    import asyncio

    from aiohttp import web

    from tollway_sidecar.admin import create_admin_app
    from tollway_sidecar.config.models import GatewayConfig
    from tollway_sidecar.quota.gate import QuotaGate
    from tollway_sidecar.quota.redis_store import RedisStore
    from tollway_sidecar.runtime import CompiledConfig, Runtime

    port = free_port()
    ready = threading.Event()

    def serve() -> None:
        """The sidecar's real admin app over a Redis store (never connected: the outbox needs none)."""
        loop = asyncio.new_event_loop()
        runtime = Runtime(
            CompiledConfig.build(GatewayConfig().with_checksum()),
            max_request_bytes=1 << 20,
            quota=QuotaGate(RedisStore("redis://127.0.0.1:1")),
        )
        runner = web.AppRunner(create_admin_app(runtime))
        loop.run_until_complete(runner.setup())
        loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", port).start())
        ready.set()
        loop.run_forever()

    threading.Thread(target=serve, daemon=True).start()
    assert ready.wait(10)
    shown = subprocess.run(
        [
            *(sys.executable, "-m", "tollway", "meter", "run", "--outbox", f"http://127.0.0.1:{port}"),
            *("--db", f"sqlite:///{tmp_path / 'l.db'}", "--metrics-port", "0", "--api-port", "0"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert shown.returncode == 1, shown.stderr
    assert "the sidecar has no outbox to read" in shown.stderr and "Redis stream" in shown.stderr
