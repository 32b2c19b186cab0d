"""The metering chaos test's parts: a Redis that keeps its data across a kill (AOF), the private
PostgreSQL of the ledger tier, `tollway meter run` as a process that can be killed and restarted,
and the ledger read back as events.

Redis runs with `appendfsync always`: Redis then fsyncs the AOF before it replies, so a write it
acknowledged survives any kill. `everysec` writes the AOF buffer to the kernel before replying in
the common case, but postpones that write (up to 2 s, still replying) while a background fsync is
slow, so a SIGKILL on a busy disk can lose acknowledged writes — not what "nothing acknowledged is
lost" may depend on.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from reliability_env import RedisServer

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT / "tests" / "ledger") not in sys.path:
    sys.path.insert(0, str(ROOT / "tests" / "ledger"))

from ledger_events import spread  # noqa: E402  (valid v1 events, as the ledger tier makes them)
from pgserver import PostgresServer  # noqa: E402
from redisserver import stop_child  # noqa: E402

from tollway.dev import free_port  # noqa: E402
from tollway_sidecar.contract.usage_event import UsageEvent  # noqa: E402

__all__ = [
    "AOF",
    "LedgerView",
    "Meter",
    "PostgresServer",
    "aof_redis",
    "envoy_counter",
    "kill_redis",
    "read_ledger",
    "spread",
]

AOF = {"appendonly": "yes", "appendfsync": "always"}


def aof_redis(workdir: Path) -> RedisServer:
    return RedisServer(workdir, config=AOF)


def kill_redis(redis: RedisServer) -> None:
    """SIGKILL: no SHUTDOWN, no final fsync; what survives is what the AOF already held."""
    assert redis.process is not None
    os.kill(redis.process.pid, signal.SIGKILL)
    redis.process.wait()
    redis.process = None


def envoy_counter(state_dir: Path, name: str) -> int:
    """One of the gateway's Envoy counters, from its admin port (in the bootstrap `tollway dev` wrote)."""
    bootstrap = json.loads((state_dir / "envoy.json").read_text())
    port = bootstrap["admin"]["address"]["socket_address"]["port_value"]
    url = f"http://127.0.0.1:{port}/stats?format=json&filter=^{name}$"
    with urllib.request.urlopen(url, timeout=5) as response:
        stats = json.loads(response.read())["stats"]
    return sum(int(stat["value"]) for stat in stats if stat.get("name") == name)


@dataclass
class Meter:
    """`tollway meter run` as a child process, always the same consumer name, so a restarted meter
    reads its own pending entries first (what a Pod restarted under its name does)."""

    redis_url: str
    dsn: str
    log: Path
    consumer: str = "chaos-meter"
    metrics_port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0

    def start(self) -> None:
        argv = [sys.executable, "-m", "tollway.cli", "meter", "run", "--redis", self.redis_url]
        argv += ["--db", self.dsn, "--consumer", self.consumer, "--api-port", "0"]
        argv += ["--metrics-port", str(self.metrics_port), "--metrics-host", "127.0.0.1"]
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
        self.starts += 1
        deadline = time.monotonic() + 30
        while self.metrics() is None:
            assert self.process.poll() is None, f"the meter exited:\n{self.log_tail()}"
            assert time.monotonic() < deadline, f"the meter's /metrics did not answer:\n{self.log_tail()}"
            time.sleep(0.05)

    def signal(self, sig: signal.Signals) -> None:
        assert self.process is not None
        os.kill(self.process.pid, sig)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        assert self.process is not None
        self.process.wait()
        self.process = None

    def stop(self) -> None:
        if self.process is None:
            return
        stop_child(self.process, timeout_s=20)
        self.process = None

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def metrics(self) -> dict[str, float] | None:
        """The meter's counters since its last start (`tollway_meter_events_total{result="…"}`, …)."""
        try:
            url = f"http://127.0.0.1:{self.metrics_port}/metrics"
            with urllib.request.urlopen(url, timeout=2) as response:
                text = response.read().decode()
        except OSError:
            return None
        values: dict[str, float] = {}
        for line in text.splitlines():
            if line.startswith("tollway_meter_") and " " in line:
                name, value = line.rsplit(" ", 1)
                values[name] = float(value)
        return values

    def log_tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""


@dataclass(frozen=True)
class LedgerView:
    """What the PostgreSQL ledger holds, read back from its rows."""

    events: list[UsageEvent]
    rows: int
    distinct_ids: int
    gate_ids: int  # rows of the `event_ids` dedupe gate

    def per_key(self) -> dict[str, int]:
        totals: Counter[str] = Counter()
        for event in self.events:
            totals[event.subject] += event.data.cost_nanos
        return dict(totals)

    def per_budget(self) -> dict[str, int]:
        totals: Counter[str] = Counter()
        for event in self.events:
            for budget in event.data.budgets:
                totals[budget] += event.data.cost_nanos
        return dict(totals)

    def per_call(self, name: str = "call") -> Counter[str]:
        """How many events carry each value of the `x-tollway-property-<name>` header."""
        return Counter(event.data.properties.get(name, "") for event in self.events)


def read_ledger(dsn: str) -> LedgerView:
    import psycopg

    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT id::text, event::text FROM usage_events").fetchall()
        distinct = conn.execute("SELECT count(DISTINCT id) FROM usage_events").fetchone()
        gate = conn.execute("SELECT count(*) FROM event_ids").fetchone()
    assert distinct is not None and gate is not None
    events = [UsageEvent.from_json(str(text)) for _id, text in rows]
    return LedgerView(events, len(rows), int(distinct[0]), int(gate[0]))
