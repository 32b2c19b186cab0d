"""Secrets: client keys (good and wrong) and the provider key never appear in a log line, a metric, a
span or any answer — over successes, streams, every kind of refusal and upstream failures, with the
sidecar logging at DEBUG and its spans exported over OTLP to a receiver in this test."""

from __future__ import annotations

import asyncio
import http.server
import secrets
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from quotagateway import SECRET_AND_KEY
from reliability_env import (
    Client,
    QuotaGateway,
    RedisServer,
    Reply,
    budget_yaml,
    chat_body,
    config_folder,
    env_overrides,
    get_json,
    provider_key,
    record,
    routes_yaml,
)

from tollway.dev import DevGateway, DevOptions, free_port


def client_key(name: str) -> str:
    return f"tw-{name}-" + secrets.token_hex(16)


@dataclass
class Receiver:
    """An OTLP/HTTP endpoint that keeps every export's raw bytes (protobuf carries strings as-is)."""

    bodies: list[bytes] = field(default_factory=list)

    def __post_init__(self) -> None:
        bodies = self.bodies

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                bodies.append(self.rfile.read(int(self.headers.get("content-length") or 0)))
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = int(self.server.server_address[1])
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclass
class Stage:
    gateway: QuotaGateway
    receiver: Receiver
    state_dir: Path
    mock_url: str
    keys: dict[str, str]  # what → secret


@pytest.fixture(scope="module")
def stage(tmp_path_factory: pytest.TempPathFactory, redis_server: RedisServer) -> Iterator[Stage]:
    base = tmp_path_factory.mktemp("secrets")
    mock_port = free_port()
    keys = {
        "client key": client_key("secret"),
        "exhausted client key": client_key("spent"),
        "wrong client key": client_key("secret"),
        "provider key": provider_key(),
    }
    resources = routes_yaml(mock_port, keys["provider key"])
    resources += SECRET_AND_KEY.format(name="secret", value=keys["client key"], spec="")
    resources += budget_yaml("tiny", "0.000000001")
    resources += SECRET_AND_KEY.format(
        name="spent", value=keys["exhausted client key"], spec="  budgetRefs: [tiny]"
    )
    receiver = Receiver()
    otlp = {
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": f"http://127.0.0.1:{receiver.port}/v1/traces",
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf",
        "OTEL_EXPORTER_OTLP_COMPRESSION": "none",
        "OTEL_BSP_SCHEDULE_DELAY": "100",
    }
    options = DevOptions(
        config_dir=config_folder(base, mock_port, resources),
        port=free_port(),
        admin_port=free_port(),
        mock_port=mock_port,
        redis_url=redis_server.url,
        meter=False,  # no dev meter draining the usage stream (test_dev_meter.py runs one)
        state_dir=base / "state",
        log_level="DEBUG",
        quiet=True,
    )
    dev = DevGateway(options)
    try:
        with env_overrides(otlp):
            dev.start()
        yield Stage(QuotaGateway(dev), receiver, base / "state", f"http://127.0.0.1:{mock_port}", keys)
    finally:
        dev.stop()
        receiver.stop()


def needles(secret: str) -> list[bytes]:
    """The secret, and each half of its random part: a prefix or suffix shown is a leak too."""
    random_part = secret.rsplit("-", 1)[1]
    half = len(random_part) // 2
    return [secret.encode(), random_part[:half].encode(), random_part[half:].encode()]


async def provoke(stage: Stage) -> list[tuple[str, Reply]]:
    """Every path a key travels: success, stream, each refusal, each upstream failure."""
    key, spent, wrong = (
        stage.keys["client key"],
        stage.keys["exhausted client key"],
        stage.keys["wrong client key"],
    )
    chat = "/v1/chat/completions"
    json_type = {"content-type": "application/json"}

    def bearer(value: str, **extra: str) -> dict[str, str]:
        return {"authorization": f"Bearer {value}", **json_type, **extra}

    calls: list[tuple[str, str, bytes, dict[str, str], int]] = [
        ("chat", chat, chat_body(), bearer(key), 200),
        ("stream", chat, chat_body(stream=True), bearer(key), 200),
        ("embeddings", "/v1/embeddings", b'{"model": "rel-embed", "input": "hi"}', bearer(key), 200),
        (
            "messages",
            "/v1/messages",
            b'{"model": "rel-claude", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}',
            {"x-api-key": key, **json_type},
            200,
        ),
        ("x-api-key on chat", chat, chat_body(), {"x-api-key": key, **json_type}, 200),
        ("bad JSON", chat, b"{nope", bearer(key), 400),
        ("unknown model", chat, chat_body("gpt-9"), bearer(key), 404),
        ("wrong key", chat, chat_body(), bearer(wrong), 401),
        ("wrong x-api-key", "/v1/messages", b"{}", {"x-api-key": wrong, **json_type}, 401),
        ("malformed authorization", chat, chat_body(), {"authorization": f"Token {key}", **json_type}, 401),
        ("budget spent", chat, chat_body(), bearer(spent), 429),
        ("provider 401", chat, chat_body(), bearer(key, **{"x-mock-status": "401"}), 401),
        ("provider 500", chat, chat_body(), bearer(key, **{"x-mock-status": "500"}), 500),
        ("provider garbage", chat, chat_body(), bearer(key, **{"x-mock-fail": "garbage"}), 502),
        ("provider reset", chat, chat_body(), bearer(key, **{"x-mock-fail": "reset"}), 503),
        (
            "cut stream",
            chat,
            chat_body(stream=True),
            bearer(key, **{"x-mock-fail": "broken-stream", "x-mock-chunk-delay-ms": "5"}),
            200,
        ),
    ]
    out = []
    async with Client(stage.gateway.origin) as client:
        for name, path, body, headers, expected in calls:
            reply = await client.send(
                "POST", path, body, headers, stream_events=[] if b'"stream": true' in body else None
            )
            assert reply.status == expected, (name, reply.status, reply.body[:300])
            out.append((name, reply))
    return out


@pytest.mark.timeout(60)
async def test_keys_never_appear_in_logs_metrics_spans_or_answers(stage: Stage) -> None:
    replies = await provoke(stage)
    # The provider key was in use: the mock received it on the rewritten calls.
    seen = await asyncio.to_thread(get_json, f"{stage.mock_url}/_mock/requests")
    assert any(
        stage.keys["provider key"]
        in r["headers"].get("authorization", "") + r["headers"].get("x-api-key", "")
        for r in seen
    )
    metrics = (await read_text(f"{stage.gateway.admin_url}/metrics")).encode()
    spend = (await read_text(f"{stage.gateway.admin_url}/spend")).encode()
    await wait_for_spans(stage.receiver)
    logs = {
        path.name: path.read_bytes()
        for path in stage.state_dir.glob("*.log")
        if path.name != "mock-provider.log"
    }
    places: dict[str, bytes] = {
        **{f"log {name}": text for name, text in logs.items()},
        "metrics": metrics,
        "/spend": spend,
        "spans": b"\n".join(stage.receiver.bodies),
        **{f"answer to {name}": repr(reply.headers).encode() + reply.body for name, reply in replies},
    }
    leaks = [
        f"{what} in {place}"
        for what, secret in stage.keys.items()
        for place, text in places.items()
        if any(needle in text for needle in needles(secret))
    ]
    record(
        "secrets",
        calls=len(replies),
        log_bytes=sum(len(text) for text in logs.values()),
        span_exports=len(stage.receiver.bodies),
        span_bytes=len(places["spans"]),
        metric_bytes=len(metrics),
        leaks=len(leaks),
    )
    assert b"DEBUG" in logs.get("sidecar.log", b""), (
        "the sidecar logged at DEBUG (the search had text to read)"
    )
    assert b"gen_ai" in places["spans"] and b"tollway" in metrics
    assert not leaks, leaks


async def read_text(url: str) -> str:
    def read() -> str:
        with urllib.request.urlopen(url, timeout=5) as response:
            return str(response.read().decode())

    return await asyncio.to_thread(read)


async def wait_for_spans(receiver: Receiver, seconds: float = 10) -> None:
    """Until an export carrying GenAI spans arrived, then one batch delay more for the last ones."""
    deadline = time.monotonic() + seconds
    while not any(b"gen_ai." in body for body in receiver.bodies):
        assert time.monotonic() < deadline, f"no spans reached the OTLP receiver within {seconds:.0f} s"
        await asyncio.sleep(0.2)
    await asyncio.sleep(1.0)
