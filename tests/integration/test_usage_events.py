"""Usage events end to end: real Envoy, sidecar and Redis, and the real `tollway meter run` process
on a SQLite ledger. Every call the gateway settles (or refuses by budget) is one event, and so is a
call whose reservation expired before it finished (charged at its estimate); the ledger's totals
per key and per budget equal /spend to the nano-dollar, also after a replay."""

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
import redis
from httpcall import bearer, call
from quotagateway import QuotaGateway, budget_yaml, config_folder, key_value, key_yaml, start_gateway
from redisserver import RedisServer

from tollway.dev import free_port
from tollway_sidecar.contract.money import to_nano
from tollway_sidecar.contract.usage_event import USAGE_FIELD, USAGE_STREAM, UsageEvent

CHAT = "/v1/chat/completions"
MESSAGES = [{"role": "user", "content": "hi"}]
METER = [sys.executable, "-m", "tollway.cli", "meter", "run"]
EXACT = {"x-mock-prompt-tokens": "9", "x-mock-completion-tokens": "10"}  # usage = the estimate

FALLBACK_ROUTE = """\
---
apiVersion: tollway.dev/v1alpha1
kind: RouteRule
metadata: {{name: ev-fallback}}
spec:
  model: ev-fallback
  backends:
    - name: broken
      provider: openai-compatible
      model: gpt-4o-mini
      baseURL: "http://127.0.0.1:{broken}/v1"
    - name: mock
      provider: openai-compatible
      model: gpt-4o-mini
      baseURL: "http://127.0.0.1:{mock}/v1"
      priority: 1
"""


def wait_for(url: str) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(url, timeout=1).close()
            return
        except OSError:
            assert time.monotonic() < deadline, f"{url} did not answer"
            time.sleep(0.05)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[QuotaGateway, RedisServer]]:
    base = tmp_path_factory.mktemp("events")
    server = RedisServer(base / "redis")  # its own stream: other modules' events are not counted here
    server.start()
    broken_port = free_port()
    broken = subprocess.Popen(  # a provider that answers every call with a 503
        [sys.executable, "-m", "tollway", "mock-provider", "--port", str(broken_port), "--status", "503"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_for(f"http://127.0.0.1:{broken_port}/_mock/health")
    mock_port = free_port()
    resources = "".join(
        [
            budget_yaml("ev-budget", "10"),
            key_yaml("ev", "budgetRefs: [ev-budget]"),
            budget_yaml("ev-cap", "0.00000735", "period: Total"),  # exactly one 9 + 10 token call
            key_yaml("evcap", "budgetRefs: [ev-cap]"),
            FALLBACK_ROUTE.format(broken=broken_port, mock=mock_port),
        ]
    )
    folder = config_folder(base, mock_port, resources)
    gateway = start_gateway(base / "gw", folder, server.url, mock_port=mock_port)
    try:
        yield gateway, server
    finally:
        gateway.dev.stop()
        server.stop()
        broken.terminate()
        broken.wait(timeout=10)


def chat(gateway: QuotaGateway, key: str, model: str = "gpt-4o-mini", **fields: object) -> int:
    body = json.dumps({"model": model, "messages": MESSAGES, "max_tokens": 10, **fields}).encode()
    headers = {
        **bearer(key_value(key)),
        **EXACT,
        "x-tollway-session": "s-1",
        "x-tollway-property-env": "test",
    }
    return call(gateway.origin, "POST", CHAT, body, headers).status


def streamed(gateway: QuotaGateway, key: str) -> None:
    with openai.OpenAI(base_url=gateway.base_url, api_key=key_value(key), max_retries=0) as sdk:
        stream = sdk.chat.completions.create(
            model="gpt-4o-mini",
            messages=MESSAGES,  # type: ignore[arg-type]
            stream=True,
            max_tokens=10,
            extra_headers=EXACT,
        )
        assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices)


def hang_up(gateway: QuotaGateway, key: str) -> None:
    with openai.OpenAI(base_url=gateway.base_url, api_key=key_value(key), max_retries=0) as sdk:
        stream = sdk.chat.completions.create(
            model="gpt-4o-mini",
            messages=MESSAGES,  # type: ignore[arg-type]
            stream=True,
            max_tokens=40,
            extra_headers={"x-mock-completion-tokens": "40", "x-mock-chunk-delay-ms": "50"},
        )
        received = 0
        for chunk in stream:
            received += bool(chunk.choices and chunk.choices[0].delta.content)
            if received == 5:
                break
        stream.close()


def run_meter(server: RedisServer, dsn: str, log: Path) -> None:
    """`tollway meter run` until it has acknowledged (and trimmed) the whole stream."""
    client = redis.Redis.from_url(server.url)
    with log.open("ab") as out:
        meter = subprocess.Popen(
            [*METER, "--redis", server.url, "--db", dsn, "--metrics-port", "0", "--api-port", "0"],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 30
            while client.xlen(USAGE_STREAM) > 0:
                assert time.monotonic() < deadline and meter.poll() is None, log.read_text()
                time.sleep(0.1)
        finally:
            meter.send_signal(signal.SIGTERM)
            assert meter.wait(timeout=20) == 0, log.read_text()


def ledger_totals(path: Path) -> tuple[int, dict[str, int], dict[str, int], list[UsageEvent]]:
    """Events (by id), nano-USD per key and per budget charged, straight from the ledger file."""
    with sqlite3.connect(path) as db:
        rows = db.execute("SELECT id, event FROM usage_events").fetchall()
    events = [UsageEvent.from_json(text) for _id, text in rows]
    per_key: dict[str, int] = {}
    per_budget: dict[str, int] = {}
    for event in events:
        per_key[event.subject] = per_key.get(event.subject, 0) + event.data.cost_nanos
        for budget in event.data.budgets:
            per_budget[budget] = per_budget.get(budget, 0) + event.data.cost_nanos
    return len({row[0] for row in rows}), per_key, per_budget, events


def test_every_call_is_one_event_and_the_ledger_equals_spend(
    setup: tuple[QuotaGateway, RedisServer], tmp_path: Path
) -> None:
    gateway, server = setup
    statuses = [chat(gateway, "ev") for _ in range(3)]
    for _ in range(2):
        streamed(gateway, "ev")
    hang_up(gateway, "ev")
    statuses.append(chat(gateway, "ev", model="ev-fallback"))  # the broken backend first, then the mock
    statuses += [chat(gateway, "evcap"), chat(gateway, "evcap")]  # the budget admits one
    assert statuses == [200, 200, 200, 200, 200, 429]
    calls = 9
    deadline = time.monotonic() + 10
    while (spend := gateway.spend())["keys"]["default/ev"]["reserved_usd"] != "0":
        assert time.monotonic() < deadline, spend  # the hung-up call settles when Envoy closes it
        time.sleep(0.05)

    dsn_path = tmp_path / "ledger.db"
    run_meter(server, f"sqlite:///{dsn_path}", tmp_path / "meter.log")
    count, per_key, per_budget, events = ledger_totals(dsn_path)
    assert count == calls, [e.data for e in events]

    spend = gateway.spend()
    for key in ("default/ev", "default/evcap"):
        assert per_key[key] == to_nano(Decimal(spend["keys"][key]["spent_usd"])), (key, spend)
    for budget in ("default/ev-budget", "default/ev-cap"):
        assert per_budget[budget] == to_nano(Decimal(spend["budgets"][budget]["spent_usd"])), budget
    assert per_key["default/evcap"] == 7350  # the admitted call; the refused one costs nothing
    outcomes = sorted(e.data.outcome for e in events)
    assert outcomes == ["denied"] + ["ok"] * 8  # the hang-up had its 200 before the client left
    refused = next(e for e in events if e.data.outcome == "denied")
    assert (refused.data.status, refused.data.cost, refused.data.billable) == (429, "0", False)
    fallback = next(e for e in events if e.data.route and "fallback" in e.data.route)
    assert [(a.backend, a.status) for a in fallback.data.attempts][-1] == ("mock", 200)
    assert [a.backend for a in fallback.data.attempts] == ["broken", "mock"], fallback.data
    assert sum(e.data.streamed for e in events) == 3
    assert all(e.data.session_id == "s-1" for e in events if not e.data.streamed)
    assert all(e.data.properties == {"env": "test"} for e in events if not e.data.streamed)

    # Replay: every event added to the stream again changes no total.
    client = redis.Redis.from_url(server.url)
    for event in events:
        client.xadd(USAGE_STREAM, {USAGE_FIELD: event.to_json()})
    run_meter(server, f"sqlite:///{dsn_path}", tmp_path / "meter.log")
    assert ledger_totals(dsn_path)[:3] == (count, per_key, per_budget)


@pytest.fixture(scope="module")
def short_ttl(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[QuotaGateway, RedisServer]]:
    """A gateway whose reservations live 1 s, so a call the mock provider holds longer outlives its."""
    base = tmp_path_factory.mktemp("expiry")
    server = RedisServer(base / "redis")
    server.start()
    mock_port = free_port()
    resources = budget_yaml("exp-budget", "10") + key_yaml("exp", "budgetRefs: [exp-budget]")
    folder = config_folder(base, mock_port, resources)
    with pytest.MonkeyPatch.context() as env:
        env.setenv("TOLLWAY_QUOTA_RESERVATION_TTL_SECONDS", "1")  # the sidecar's environment
        gateway = start_gateway(base / "gw", folder, server.url, mock_port=mock_port)
    try:
        yield gateway, server
    finally:
        gateway.dev.stop()
        server.stop()


def test_a_call_that_outlives_its_reservation_is_one_expired_event_and_the_ledger_equals_spend(
    short_ttl: tuple[QuotaGateway, RedisServer], tmp_path: Path
) -> None:
    gateway, server = short_ttl
    assert chat(gateway, "exp") == 200  # settled in time: 9 + 10 tokens, exactly its estimate
    # Held 2.5 s by the provider: the reservation expires first, and the late settle changes nothing.
    # Had it settled, it would cost its 2 completion tokens; expired, it stays at its estimate.
    body = json.dumps({"model": "gpt-4o-mini", "messages": MESSAGES, "max_tokens": 10}).encode()
    slow = {**bearer(key_value("exp")), "x-mock-latency-ms": "2500", "x-mock-completion-tokens": "2"}
    assert call(gateway.origin, "POST", CHAT, body, slow).status == 200
    deadline = time.monotonic() + 10
    while (spend := gateway.spend())["keys"]["default/exp"]["reserved_usd"] != "0":
        assert time.monotonic() < deadline, spend  # the late settle's sweep (or this read) expires it
        time.sleep(0.05)

    dsn_path = tmp_path / "ledger.db"
    run_meter(server, f"sqlite:///{dsn_path}", tmp_path / "meter.log")
    count, per_key, per_budget, events = ledger_totals(dsn_path)
    assert count == 2, [e.data for e in events]
    assert sorted(e.data.outcome for e in events) == ["expired", "ok"]
    expired = next(e for e in events if e.data.outcome == "expired")
    # The estimate: 9 prompt tokens + max_tokens 10 at $0.15/$0.60 per million = 7350 nano-USD.
    assert (expired.data.status, expired.data.cost_nanos, expired.data.billable) == (504, 7350, True)
    assert (expired.data.tokens.input, expired.data.tokens.output) == (9, 10)
    assert expired.data.budgets == ("default/exp-budget",)
    spend = gateway.spend()
    assert per_key["default/exp"] == to_nano(Decimal(spend["keys"]["default/exp"]["spent_usd"])) == 2 * 7350
    assert per_budget["default/exp-budget"] == to_nano(
        Decimal(spend["budgets"]["default/exp-budget"]["spent_usd"])
    )
