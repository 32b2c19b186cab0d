"""The commands as a user runs them: `tollway meter run` as a process, then close, usage, invoice."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import click
import pytest
import redis
from ledger_events import make_event, spread
from redisserver import RedisServer

from tollway.meter_cli import parse_since
from tollway.ports import free_port
from tollway_meter.ledger import Ledger
from tollway_sidecar.contract.usage_event import USAGE_FIELD, USAGE_STREAM, Content, UsageEvent

TOLLWAY = [sys.executable, "-m", "tollway.cli"]


def scrape(port: int) -> str:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as answer:
            return str(answer.read().decode())
    except OSError:
        return ""


def get(port: int, path: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as failed:
        return failed.code, json.loads(failed.read())


def check_api(port: int, events: list[UsageEvent]) -> None:
    """The JSON API on the running meter: the same numbers as the ledger, precise errors."""
    window = "since=2026-11-01T00:00:00Z&until=2026-12-01T00:00:00Z"
    status, body = get(port, f"/v1/usage?by=team&granularity=month&{window}")
    assert status == 200
    assert {r["team"] for r in body["rows"]} == {"ops", "research", "sales"}
    assert sum(Decimal(r["cost_usd"]) for r in body["rows"]) * 10**9 == sum(e.data.cost_nanos for e in events)
    status, body = get(port, f"/v1/requests/top?n=2&{window}")
    assert status == 200
    top_id = body["requests"][0]["id"]
    status, body = get(port, f"/v1/requests/{top_id}")
    assert (status, body["event"]["id"], body["adjustment"]) == (200, top_id, False)
    status, body = get(port, "/v1/invoices/2026-11?by=team")
    assert (status, body["closed"], len(body["lines"])) == (200, False, 3)
    for path, param in (
        ("/v1/usage?by=colour", "by"),
        ("/v1/usage?granularity=week", "granularity"),
        ("/v1/usage?since=yesterday", "since"),
        ("/v1/requests/top?n=0", "n"),
        ("/v1/requests/not-a-uuid", "id"),
        ("/v1/invoices/2026-13", "period"),
    ):
        status, body = get(port, path)
        assert (status, body["error"]["param"], body["error"]["type"]) == (
            400,
            param,
            "invalid_request_error",
        ), path
        assert body["error"]["message"]
    status, body = get(port, "/v1/requests/0192f2a0-0000-7000-8000-000000000000")
    assert (status, body["error"]["code"]) == (404, "not_found")


def tollway(*args: str) -> str:
    done = subprocess.run([*TOLLWAY, *args], capture_output=True, text=True, check=False, timeout=60)
    assert done.returncode == 0, f"tollway {' '.join(args)} failed:\n{done.stderr}"
    return done.stdout


def test_meter_run_then_close_usage_and_invoice(
    redis_server: RedisServer, ledger_dsn: str, tmp_path: Path
) -> None:
    client = redis.Redis.from_url(redis_server.url)
    client.flushdb()
    events = spread(30)
    # One call's captured content, expired long ago: the meter's expiry job deletes it at start.
    old = Content(prompt="user: hi", completion="hello", retention_days=1)
    events[0] = dataclasses.replace(events[0], data=dataclasses.replace(events[0].data, content=old))
    for event in events:
        client.xadd(USAGE_STREAM, {USAGE_FIELD: event.to_json()})
    metrics_port, api_port = free_port(), free_port()
    log = (tmp_path / "meter.log").open("wb")
    meter = subprocess.Popen(
        [
            *TOLLWAY,
            "meter",
            "run",
            "--redis",
            redis_server.url,
            "--db",
            ledger_dsn,
            "--consumer",
            "cli",
            "--metrics-host",
            "127.0.0.1",
            "--metrics-port",
            str(metrics_port),
            "--api-host",
            "127.0.0.1",
            "--api-port",
            str(api_port),
            "--content-expiry-every",
            "0.2",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        for _ in range(300):
            if client.xlen(USAGE_STREAM) == 0:  # all acknowledged, then trimmed
                break
            time.sleep(0.05)
        assert client.xlen(USAGE_STREAM) == 0, (tmp_path / "meter.log").read_text()
        # The stream delivered again: nothing new in the ledger, every entry counted as a duplicate.
        for event in events[:12]:
            client.xadd(USAGE_STREAM, {USAGE_FIELD: event.to_json()})
        client.xadd(USAGE_STREAM, {USAGE_FIELD: "{}"})
        for _ in range(300):
            metrics = scrape(metrics_port)
            if 'tollway_meter_events_total{result="dead_lettered"} 1.0' in metrics:
                break
            time.sleep(0.05)
        assert 'tollway_meter_events_total{result="inserted"} 30.0' in metrics, metrics
        assert 'tollway_meter_events_total{result="duplicate"} 12.0' in metrics, metrics
        # Lag and period state, refreshed every few seconds by the meter's maintenance task.
        for _ in range(300):
            metrics = scrape(metrics_port)
            if 'tollway_meter_period_closed{period="2026-11"} 0.0' in metrics:
                break
            time.sleep(0.05)
        assert 'tollway_meter_period_closed{period="2026-11"} 0.0' in metrics, metrics
        assert 'tollway_meter_lag_entries{state="pending"} 0.0' in metrics, metrics
        assert "tollway_meter_lag_seconds " in metrics, metrics
        for _ in range(300):
            metrics = scrape(metrics_port)
            if "tollway_meter_content_expired_total 1.0" in metrics:
                break
            time.sleep(0.05)
        assert "tollway_meter_content_expired_total 1.0" in metrics, metrics
        check_api(api_port, events)
    finally:
        meter.send_signal(signal.SIGTERM)
        assert meter.wait(timeout=20) == 0, (tmp_path / "meter.log").read_text()
        log.close()
        client.close()

    assert tollway("meter", "close", "2026-11", "--db", ledger_dsn).strip() == "period 2026-11 closed"
    table = tollway(
        "usage", "--by", "team,model", "--since", "2026-11-01", "--until", "2026-12-01", "--db", ledger_dsn
    )
    header, _rule, *rows = table.splitlines()
    assert header.split() == ["team", "model", "requests", "cost_usd", "input", "output", "cached"]
    assert len(rows) == 6
    assert (
        sum(Decimal(row.split()[3]) for row in rows)
        == Decimal(sum(e.data.cost_nanos for e in events)) / 10**9
    )

    invoice = tollway(
        "meter", "invoice", "--period", "2026-11", "--by", "team", "--format", "csv", "--db", ledger_dsn
    )
    parsed = list(csv.DictReader(io.StringIO(invoice)))
    lines = [r for r in parsed if r["kind"] == "line"]
    [total] = [r for r in parsed if r["kind"] == "total"]
    assert sorted(r["team"] for r in lines) == ["ops", "research", "sales"]
    assert sum(Decimal(r["cost_usd"]) for r in lines) == Decimal(total["cost_usd"])
    body = json.loads(
        tollway("meter", "invoice", "--period", "2026-11", "--format", "json", "--db", ledger_dsn)
    )
    assert body["closed"] is True
    assert body["total_usd"] == total["cost_usd"]

    top = tollway("usage", "--top", "1", "--since", "2026-11-01", "--until", "2026-12-01", "--db", ledger_dsn)
    top_id = top.splitlines()[2].split()[0]
    one = json.loads(tollway("usage", "--request", top_id, "--db", ledger_dsn))
    assert one["id"] == top_id
    assert one["data"]["cost"] == max((e.data.cost for e in events), key=Decimal)

    closing_again = subprocess.run(
        [*TOLLWAY, "meter", "close", "2026-11", "--db", ledger_dsn],
        capture_output=True,
        text=True,
        check=False,
    )
    assert closing_again.returncode == 1
    assert "period 2026-11 is already closed" in closing_again.stderr
    ledger = Ledger.open(ledger_dsn)
    assert ledger.closed_periods() == frozenset({"2026-11"})
    ledger.close()


def test_since_takes_durations_and_dates() -> None:
    now = datetime(2026, 12, 2, 12, tzinfo=UTC)
    assert parse_since("7d", now) == datetime(2026, 11, 25, 12, tzinfo=UTC)
    assert parse_since("12h", now) == datetime(2026, 12, 2, 0, tzinfo=UTC)
    assert parse_since("2w", now) == datetime(2026, 11, 18, 12, tzinfo=UTC)
    assert parse_since("2026-11-01", now) == datetime(2026, 11, 1, tzinfo=UTC)
    with pytest.raises(click.BadParameter, match=r"expected e\.g\. 7d"):
        parse_since("7 days", now)


def test_usage_prints_costs_as_plain_decimals_even_when_zero(tmp_path: Path) -> None:
    dsn = f"sqlite:///{tmp_path / 'ledger.db'}"
    ledger = Ledger.open(dsn)
    try:
        ledger.migrate()
        ledger.ingest([make_event(cost="0", model="refused-model"), make_event(cost="0.000001")])
    finally:
        ledger.close()
    table = tollway("usage", "--by", "model", "--since", "2026-11-01", "--until", "2026-12-01", "--db", dsn)
    costs = {row.split()[0]: row.split()[2] for row in table.splitlines()[2:]}
    assert costs == {"refused-model": "0.000000000", "gpt-4o-mini": "0.000001000"}, table
    top = tollway("usage", "--top", "2", "--since", "2026-11-01", "--until", "2026-12-01", "--db", dsn)
    assert "0E-9" not in top and "0.000000000" in top, top
