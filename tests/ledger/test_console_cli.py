"""The console as a user starts it: `tollway console` on loopback, and `tollway meter run --console`
(off without the flag, so the meter's port exposes no console by default)."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from ledger_events import spread
from redisserver import RedisServer
from test_meter_cli import free_port

from tollway_meter.ledger import Ledger

TOLLWAY = [sys.executable, "-m", "tollway.cli"]
WINDOW = "since=2026-11-01T00:00:00Z&until=2026-12-01T00:00:00Z"


def fetch(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as failed:
        return failed.code, failed.read().decode()


def wait_up(port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    for _ in range(200):
        if process.poll() is not None:
            raise AssertionError(f"exited {process.returncode}:\n{log.read_text()}")
        try:
            fetch(port, "/")
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"not listening on {port}:\n{log.read_text()}")


def listening_addresses(port: int) -> set[str]:
    """The local IPv4 addresses with a listening TCP socket on `port` (Linux /proc/net/tcp)."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, port_hex = local.split(":")
        if state == "0A" and int(port_hex, 16) == port:
            found.add(".".join(str(int(address[i : i + 2], 16)) for i in (6, 4, 2, 0)))
    return found


def test_tollway_console_serves_the_ledger_on_loopback_only(tmp_path: Path) -> None:
    dsn = f"sqlite:///{tmp_path / 'ledger.db'}"
    ledger = Ledger.open(dsn)
    ledger.migrate()
    events = spread(12)
    ledger.ingest(events)
    ledger.close()
    port = free_port()
    log = tmp_path / "console.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [*TOLLWAY, "console", "--db", dsn, "--port", str(port)], stdout=out, stderr=subprocess.STDOUT
        )
    try:
        wait_up(port, process, log)
        assert listening_addresses(port) == {"127.0.0.1"}
        status, html = fetch(port, f"/console/requests?{WINDOW}")
        assert status == 200
        assert all(str(e.id) in html for e in events)
        status, html = fetch(port, "/")  # redirected to the console
        assert status == 200 and "<h1>Overview</h1>" in html
    finally:
        process.terminate()
        process.wait(timeout=20)
    assert f"console: http://127.0.0.1:{port}/console/" in log.read_text()


def run_meter(redis_server: RedisServer, dsn: str, tmp_path: Path, *extra: str) -> tuple[int, int, str]:
    """Start `tollway meter run`, GET /console/ on its API port, stop it: (status, exit code, log)."""
    port = free_port()
    log = tmp_path / f"meter{len(extra)}.log"
    argv = [*TOLLWAY, "meter", "run", "--redis", redis_server.url, "--db", dsn, "--metrics-port", "0"]
    with log.open("wb") as out:
        process = subprocess.Popen(
            [*argv, "--api-host", "127.0.0.1", "--api-port", str(port), *extra],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_up(port, process, log)
        status, _ = fetch(port, "/console/")
    finally:
        process.terminate()
        code = process.wait(timeout=20)
    return status, code, log.read_text()


def test_the_meter_serves_the_console_only_with_the_flag(redis_server: RedisServer, tmp_path: Path) -> None:
    dsn = f"sqlite:///{tmp_path / 'ledger.db'}"
    status, code, log = run_meter(redis_server, dsn, tmp_path)
    assert (status, code) == (404, 0), log
    status, code, log = run_meter(
        redis_server, dsn, tmp_path, "--console", "--jaeger-url", "http://127.0.0.1:16686"
    )
    assert (status, code) == (200, 0), log
    refused = subprocess.run(
        [*TOLLWAY, "meter", "run", "--redis", redis_server.url, "--db", dsn, "--api-port", "0", "--console"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert refused.returncode == 2 and "--api-port" in refused.stderr
