"""Captured content end to end: real Envoy, sidecar, mock provider and Redis, and the real `tollway
meter run` on a SQLite ledger. A call on a route with `spec.capture` ends with its redacted prompt
and answer (JSON and streamed) in the ledger's captured_content, expiring after the route's
retentionDays; the usage row carries no content, and a route that does not capture writes none."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import openai
import pytest
import redis
from httpcall import bearer, call
from quotagateway import QuotaGateway, config_folder, key_value, key_yaml, start_gateway
from redisserver import RedisServer

from tollway.dev import free_port
from tollway_sidecar.contract.usage_event import USAGE_STREAM

METER = [sys.executable, "-m", "tollway.cli", "meter", "run"]
PROMPT = "mail ana@example.com about the plan"

CAPTURING_ROUTE = """\
---
apiVersion: tollway.dev/v1alpha1
kind: RouteRule
metadata: {{name: cap-chat}}
spec:
  model: cap-chat
  capture: {{content: true, retentionDays: 3}}
  backends:
    - name: mock
      provider: openai-compatible
      model: gpt-4o-mini
      baseURL: "http://127.0.0.1:{mock}/v1"
"""


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[QuotaGateway, RedisServer]]:
    base = tmp_path_factory.mktemp("capture")
    server = RedisServer(base / "redis")  # its own stream
    server.start()
    mock_port = free_port()
    folder = config_folder(base, mock_port, key_yaml("cap") + CAPTURING_ROUTE.format(mock=mock_port))
    started = start_gateway(base / "gw", folder, server.url, mock_port=mock_port)
    try:
        yield started, server
    finally:
        started.dev.stop()
        server.stop()


def chat(gateway: QuotaGateway, model: str) -> dict[str, object]:
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": PROMPT}], "max_tokens": 12})
    answer = call(gateway.origin, "POST", "/v1/chat/completions", body.encode(), bearer(key_value("cap")))
    assert answer.status == 200, answer.body
    return dict(json.loads(answer.body))


def streamed(gateway: QuotaGateway) -> str:
    with openai.OpenAI(base_url=gateway.base_url, api_key=key_value("cap"), max_retries=0) as sdk:
        stream = sdk.chat.completions.create(
            model="cap-chat",
            messages=[{"role": "user", "content": PROMPT}],
            stream=True,
            max_tokens=12,
        )
        return "".join(c.choices[0].delta.content or "" for c in stream if c.choices)


def run_meter(server: RedisServer, dsn: str, log: Path) -> None:
    client = redis.Redis.from_url(server.url)
    with log.open("ab") as out:
        meter = subprocess.Popen(
            [*METER, "--redis", server.url, "--db", dsn, "--metrics-port", "0", "--api-port", "0"],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 60
            while client.xlen(USAGE_STREAM) > 0:
                assert time.monotonic() < deadline and meter.poll() is None, log.read_text()
                time.sleep(0.1)
        finally:
            meter.send_signal(signal.SIGTERM)
            assert meter.wait(timeout=30) == 0, log.read_text()


def test_a_capturing_routes_calls_end_with_their_redacted_content_in_the_ledger(
    gateway: tuple[QuotaGateway, RedisServer], tmp_path: Path
) -> None:
    gw, server = gateway
    answer = chat(gw, "cap-chat")
    text = answer["choices"][0]["message"]["content"]  # type: ignore[index]
    assert "ana@example.com" in text  # the mock echoes the prompt: the answer has the address too
    streamed_text = streamed(gw)
    assert "ana@example.com" in streamed_text
    chat(gw, "gpt-4o-mini")  # the demo route does not capture
    deadline = time.monotonic() + 30
    while redis.Redis.from_url(server.url).xlen(USAGE_STREAM) < 3:
        assert time.monotonic() < deadline, "the gateway did not append three usage events"
        time.sleep(0.05)

    path = tmp_path / "ledger.db"
    run_meter(server, f"sqlite:///{path}", tmp_path / "meter.log")
    with sqlite3.connect(path) as db:
        routes = dict(db.execute("SELECT id, route FROM usage_events").fetchall())
        stored = [json.loads(row[0]) for row in db.execute("SELECT event FROM usage_events")]
        rows = db.execute(
            "SELECT event_id, namespace, event_time, expires_at, prompt, completion FROM captured_content"
        ).fetchall()
    assert len(routes) == 3
    assert all("content" not in event["data"] for event in stored)
    assert sorted(routes[row[0]] for row in rows) == ["default-cap-chat", "default-cap-chat"]
    want = {
        text.replace("ana@example.com", "[REDACTED:email]"),
        streamed_text.replace("ana@example.com", "[REDACTED:email]"),
    }
    assert {row[5] for row in rows} == want
    for _id, namespace, at, expires, prompt, _completion in rows:
        assert namespace == "default"
        assert prompt == "user: mail [REDACTED:email] about the plan"
        assert datetime.fromisoformat(expires) - datetime.fromisoformat(at) == timedelta(days=3)
