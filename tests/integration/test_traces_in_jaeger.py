"""One trace per call, read back from a real Jaeger; and the metrics after known traffic.

The gateway runs as `tollway dev` does, with the standard OTEL_* variables pointing at a Jaeger
built from its Go module (scripts/tools/jaeger.sh, `make tools`).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai
import pytest
from gateway_env import DEMO_KEY, ROOT, start_mock
from httpcall import bearer, call

from tollway.dev import Children, DevGateway, DevOptions, free_port

sys.path.insert(0, str(ROOT / "tests" / "kube"))  # the Jaeger harness lives with the other tool harnesses
from jaeger_harness import Jaeger

SERVICE = "tollway-gateway-under-test"
PARENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = f"00-{PARENT_TRACE}-00f067aa0ba902b7-01"
MESSAGES = [{"role": "user", "content": "Write to jo.doe@example.org about card 4242 4242 4242 4242"}]


@dataclass
class Traced:
    gateway: DevGateway
    jaeger: Jaeger
    limited: Children

    @property
    def origin(self) -> str:
        return self.gateway.base_url.removesuffix("/v1")

    def sdk(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.gateway.base_url, api_key=DEMO_KEY, max_retries=0)

    def trace(self, trace_id: str, *, spans: int, timeout: float = 15.0) -> dict[str, Any]:
        """The trace with that id once it has `spans` spans (the batch processor sends every second)."""
        deadline = time.monotonic() + timeout
        found: dict[str, Any] = {}
        while time.monotonic() < deadline:
            try:
                found = self.jaeger._get(f"/api/traces/{trace_id}")["data"][0]
            except (OSError, KeyError, IndexError):
                found = {}
            if len(found.get("spans", ())) >= spans:
                return found
            time.sleep(0.2)
        raise AssertionError(f"trace {trace_id}: {len(found.get('spans', ()))} spans, wanted {spans}")

    def metrics(self) -> str:
        url = f"http://127.0.0.1:{self.gateway.options.admin_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            return str(response.read().decode())


def tags(span: dict[str, Any]) -> dict[str, Any]:
    return {tag["key"]: tag["value"] for tag in span["tags"]}


def server_and_clients(trace: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    (server,) = [s for s in trace["spans"] if tags(s).get("span.kind") == "server"]
    clients = [s for s in trace["spans"] if tags(s).get("span.kind") == "client"]
    for client in clients:
        assert client["references"][0]["spanID"] == server["spanID"], "an attempt span is the call's child"
    return server, sorted(clients, key=lambda s: s["startTime"])


def _gateway(base: Path, otel: dict[str, str], limited_port: int) -> DevGateway:
    config = base / "config"
    shutil.copytree(ROOT / "examples" / "local", config)
    mock_port = free_port()
    extra = (ROOT / "tests" / "fixtures" / "integration" / "tracing.yaml").read_text()
    (config / "zz-tracing.yaml").write_text(extra.replace("LIMITED_PORT", str(limited_port)))
    for path in config.glob("*.yaml"):
        text = path.read_text().replace("127.0.0.1:9000", f"127.0.0.1:{mock_port}")
        path.write_text(text.replace("MOCK_PORT", str(mock_port)))
    options = DevOptions(
        config_dir=config,
        port=free_port(),
        admin_port=free_port(),
        mock_port=mock_port,
        state_dir=base / "state",
        quiet=True,
    )
    saved = {name: os.environ.get(name) for name in otel}
    os.environ.update(otel)  # the sidecar reads the standard OTEL_* variables at start-up
    try:
        gateway = DevGateway(options)
        gateway.start()
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    return gateway


@pytest.fixture(scope="module")
def traced(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Traced]:
    base = tmp_path_factory.mktemp("tracing")
    jaeger = Jaeger.start(base / "jaeger")
    limited_port = free_port()
    limited = Children(base / "mocks")
    start_mock(limited, "limited", limited_port, "--status", "429")
    gateway = None
    try:
        gateway = _gateway(
            base,
            {
                "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://{jaeger.otlp_grpc}",
                "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
                "OTEL_SERVICE_NAME": SERVICE,
            },
            limited_port,
        )
        yield Traced(gateway, jaeger, limited)
    finally:
        if gateway is not None:
            gateway.stop()
        limited.stop()
        jaeger.stop()


def test_a_call_is_one_trace_continuing_the_clients(traced: Traced) -> None:
    raw = traced.sdk().chat.completions.with_raw_response.create(
        model="gpt-4o-mini",
        messages=MESSAGES,
        temperature=0.5,
        max_tokens=64,
        extra_headers={
            "traceparent": PARENT,
            "x-tollway-session": "s-42",
            "x-tollway-user": "ann",
            "x-tollway-property-feature": "summaries",
            "helicone-property-team": "ml",
        },
    )
    trace = traced.trace(PARENT_TRACE, spans=2)
    server, (attempt,) = server_and_clients(trace)
    assert server["operationName"] == "chat gpt-4o-mini"
    assert server["references"][0]["spanID"] == "00f067aa0ba902b7"  # the client's span is the parent
    attributes = tags(server)
    usage = raw.parse().usage
    assert usage is not None
    assert attributes["gen_ai.operation.name"] == "chat"
    assert attributes["gen_ai.request.model"] == "gpt-4o-mini"
    assert attributes["gen_ai.response.model"] == "gpt-4o-mini"
    assert attributes["gen_ai.provider.name"] == "openai"
    assert attributes["gen_ai.usage.input_tokens"] == usage.prompt_tokens
    assert attributes["gen_ai.usage.output_tokens"] == usage.completion_tokens
    assert attributes["gen_ai.request.temperature"] == 0.5
    assert attributes["gen_ai.request.max_tokens"] == 64
    assert json.loads(attributes["gen_ai.response.finish_reasons"]) == ["stop"]
    assert attributes["tollway.cost_usd"] == raw.headers["x-tollway-cost-usd"]
    assert attributes["tollway.key.name"] == "demo"
    assert attributes["tollway.key.namespace"] == "default"
    assert attributes["tollway.owner.team"] == "platform"
    assert attributes["tollway.end_user"] == "ann"
    assert attributes["tollway.session"] == "s-42"
    assert attributes["tollway.property.feature"] == "summaries"
    assert attributes["tollway.property.team"] == "ml"
    assert attributes["tollway.route"] == "default/gpt-4o-mini"
    assert attributes["tollway.backend"] == "mock"
    assert attributes["tollway.budget.decision"] == "admitted"
    assert tags(attempt)["tollway.backend"] == "mock"
    assert tags(attempt)["http.response.status_code"] == 200
    text = json.dumps(trace)
    assert DEMO_KEY not in text
    assert "jo.doe@example.org" not in text  # content capture is off by default
    assert not server["logs"]


def test_a_fallback_shows_two_attempts_with_their_outcomes(traced: Traced) -> None:
    trace_id = "5bf92f3577b34da6a3ce929d0e0e4736"
    raw = traced.sdk().chat.completions.with_raw_response.create(
        model="traced-fallback",
        messages=MESSAGES,
        extra_headers={"traceparent": f"00-{trace_id}-00f067aa0ba902b7-01"},
    )
    assert raw.headers["x-tollway-attempts"] == "2"
    server, (first, second) = server_and_clients(traced.trace(trace_id, spans=3))
    assert tags(first)["tollway.backend"] == "limited"
    assert tags(first)["http.response.status_code"] == 429
    assert tags(first)["otel.status_code"] == "ERROR"
    assert tags(second)["tollway.backend"] == "healthy"
    assert tags(second)["http.response.status_code"] == 200
    assert "otel.status_code" not in tags(second) or tags(second)["otel.status_code"] != "ERROR"
    assert tags(server)["tollway.attempts"] == 2
    assert tags(server)["tollway.backend"] == "healthy"


def test_a_denied_call_is_traced_with_its_reason(traced: Traced) -> None:
    trace_id = "6bf92f3577b34da6a3ce929d0e0e4736"
    body = json.dumps({"model": "no-such-model", "messages": MESSAGES}).encode()
    answer = call(
        traced.origin,
        "POST",
        "/v1/chat/completions",
        body,
        {**bearer(DEMO_KEY), "traceparent": f"00-{trace_id}-00f067aa0ba902b7-01"},
    )
    assert answer.status == 404
    (span,) = traced.trace(trace_id, spans=1)["spans"]
    attributes = tags(span)
    assert attributes["otel.status_code"] == "ERROR"
    assert attributes["tollway.denial.reason"] == "model_not_found"
    assert attributes["http.response.status_code"] == 404
    assert attributes["tollway.key.name"] == "demo"


def test_streaming_time_to_first_token_matches_the_providers_delay(traced: Traced) -> None:
    trace_id = "7bf92f3577b34da6a3ce929d0e0e4736"
    with traced.sdk().chat.completions.create(
        model="gpt-4o-mini",
        messages=MESSAGES,
        stream=True,
        extra_headers={"traceparent": f"00-{trace_id}-00f067aa0ba902b7-01", "x-mock-ttft-ms": "300"},
    ) as stream:
        chunks = list(stream)
    assert chunks
    server, _ = server_and_clients(traced.trace(trace_id, spans=2))
    ttft = tags(server)["tollway.time_to_first_token_ms"]
    assert 300 <= ttft < 300 + 1000, ttft
    assert tags(server)["tollway.stream"] is True
    assert tags(server)["gen_ai.usage.output_tokens"] > 0
    metrics = traced.metrics()
    assert re.search(
        r'gen_ai_server_time_to_first_token_seconds_count\{[^}]*model="gpt-4o-mini"[^}]*\} [1-9]', metrics
    )


def test_content_capture_is_per_route_and_redacted(traced: Traced) -> None:
    trace_id = "8bf92f3577b34da6a3ce929d0e0e4736"
    traced.sdk().chat.completions.create(
        model="traced-capture",
        messages=MESSAGES,
        extra_headers={"traceparent": f"00-{trace_id}-00f067aa0ba902b7-01"},
    )
    trace = traced.trace(trace_id, spans=2)
    server, _ = server_and_clients(trace)
    fields = [{f["key"]: f["value"] for f in log["fields"]} for log in server["logs"]]
    events = {event["event"]: event for event in fields}
    assert "[REDACTED:email]" in events["gen_ai.user.message"]["content"]
    assert "[REDACTED:card]" in events["gen_ai.user.message"]["content"]
    assert events["gen_ai.choice"]["message"].startswith("This is a mock reply")
    text = json.dumps(trace)
    assert "jo.doe@example.org" not in text
    assert "4242 4242 4242 4242" not in text  # the whole number never leaves the process


def test_metrics_after_known_traffic(traced: Traced) -> None:
    def value(text: str, pattern: str) -> float:
        found = re.search(pattern + r" ([0-9.e+-]+)", text)
        return float(found.group(1)) if found else 0.0

    calls = 'tollway_requests_total{backend="mock",key="default/demo",model="gpt-4o",status="200"}'
    denied = 'tollway_denials_total{reason="invalid_api_key"}'
    before = traced.metrics()
    for _ in range(3):
        traced.sdk().chat.completions.create(model="gpt-4o", messages=MESSAGES)
    for _ in range(2):
        assert (
            call(traced.origin, "GET", "/v1/models", None, bearer("tw-wrong-key-000000000000")).status == 401
        )
    after = traced.metrics()
    assert value(after, re.escape(calls)) - value(before, re.escape(calls)) == 3
    assert value(after, re.escape(denied)) - value(before, re.escape(denied)) == 2
    tokens = (
        r'gen_ai_client_token_usage_count\{backend="mock",gen_ai_token_type="output",'
        r'key="default/demo",model="gpt-4o",provider="openai-compatible"\}'
    )
    assert value(after, tokens) - value(before, tokens) == 3
    assert value(after, r'tollway_cost_usd_total\{backend="mock",key="default/demo",model="gpt-4o"\}') > 0
    assert value(after, r'tollway_fallbacks_total\{route="default-traced-fallback"\}') >= 1
    assert "ann" not in after and DEMO_KEY not in after  # no end-user ids, no keys


def test_otlp_over_http_and_a_dead_collector_loses_spans_not_calls(tmp_path: Path) -> None:
    with Jaeger.start(tmp_path / "jaeger") as jaeger:
        limited_port = free_port()
        http_gateway = _gateway(
            tmp_path / "http",
            {
                "OTEL_EXPORTER_OTLP_ENDPOINT": jaeger.otlp_http,
                "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
                "OTEL_SERVICE_NAME": SERVICE + "-http",
            },
            limited_port,
        )
        try:
            sdk = openai.OpenAI(base_url=http_gateway.base_url, api_key=DEMO_KEY, max_retries=0)
            sdk.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
            sdk.close()
            (trace,) = jaeger.wait_for_traces(SERVICE + "-http")
            assert {s["operationName"] for s in trace["spans"]} == {"chat gpt-4o-mini"}
        finally:
            http_gateway.stop()
    dead = _gateway(
        tmp_path / "dead",
        {
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{free_port()}",
            "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
        },
        free_port(),
    )
    try:
        body = json.dumps({"model": "gpt-4o-mini", "messages": MESSAGES}).encode()
        origin = dead.base_url.removesuffix("/v1")
        statuses = [
            call(origin, "POST", "/v1/chat/completions", body, bearer(DEMO_KEY)).status for _ in range(20)
        ]
        assert statuses == [200] * 20
    finally:
        dead.stop()
