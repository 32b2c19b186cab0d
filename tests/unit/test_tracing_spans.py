"""Span building, trace-context propagation and redaction, with an in-memory exporter."""

from __future__ import annotations

import pytest
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from tollway_sidecar.tracing import Redactor, Tracing

PARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@pytest.fixture
def exported() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def tracing(exported: InMemorySpanExporter) -> Tracing:
    return Tracing.from_env(
        capture_content=True, redact_patterns=[r"proj-\d+"], processor=SimpleSpanProcessor(exported)
    )


def test_call_continues_the_clients_trace_and_attempts_are_children(
    tracing: Tracing, exported: InMemorySpanExporter
) -> None:
    call = tracing.start_call({"traceparent": PARENT})
    attempt = tracing.start_attempt(call, "chat gpt-4o-mini")
    headers = tracing.traceparent(attempt)
    attempt.end()
    call.end()
    attempt_span, call_span = exported.get_finished_spans()
    assert call_span.context.trace_id == int("0af7651916cd43dd8448eb211c80319c", 16)
    assert call_span.parent is not None
    assert call_span.parent.span_id == int("b7ad6b7169203331", 16)
    assert call_span.kind == SpanKind.SERVER
    assert attempt_span.kind == SpanKind.CLIENT
    assert attempt_span.parent is not None
    assert attempt_span.parent.span_id == call_span.context.span_id
    assert headers["traceparent"].split("-")[1] == "0af7651916cd43dd8448eb211c80319c"
    assert headers["traceparent"].split("-")[2] == f"{attempt_span.context.span_id:016x}"


def test_without_an_exporter_tracing_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OTEL_TRACES_EXPORTER", "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    tracing = Tracing.from_env()
    assert not tracing.enabled
    span = tracing.start_call({"traceparent": PARENT})
    assert not span.is_recording()
    assert tracing.traceparent(span) == {}


def test_prompt_events_are_redacted(tracing: Tracing, exported: InMemorySpanExporter) -> None:
    call = tracing.start_call({})
    body = {
        "messages": [
            {"role": "system", "content": "You help proj-4411 only."},
            {
                "role": "user",
                "content": "Mail ann.lee@example.com, card 4111 1111 1111 1111, order 1234567890123",
            },
        ]
    }
    tracing.add_prompt_events(call, body)
    tracing.add_completion_event(call, "Sent to ann.lee@example.com", "stop")
    call.end()
    (span,) = exported.get_finished_spans()
    events = {event.name: dict(event.attributes or {}) for event in span.events}
    assert events["gen_ai.system.message"]["content"] == "You help [REDACTED] only."
    user = events["gen_ai.user.message"]["content"]
    assert "example.com" not in user
    assert "4111" not in user
    assert "[REDACTED:email]" in user
    assert "[REDACTED:card]" in user
    assert "1234567890123" in user  # not a valid card number (Luhn): left alone
    assert events["gen_ai.choice"]["message"] == "Sent to [REDACTED:email]"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("5500-0000-0000-0004", "[REDACTED:card]"),
        ("378282246310005", "[REDACTED:card]"),
        ("call 555-0100", "call 555-0100"),
        ("a.b+c@d.co", "[REDACTED:email]"),
    ],
)
def test_redactor(text: str, expected: str) -> None:
    assert Redactor()(text) == expected


def _batch_settings(monkeypatch: pytest.MonkeyPatch, **env: str) -> tuple[int, float, int]:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")  # never reached
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    tracing = Tracing.from_env()
    try:
        assert tracing.provider is not None
        (processor,) = tracing.provider._active_span_processor._span_processors
        batch = processor._batch_processor  # type: ignore[attr-defined]
        return batch._max_export_batch_size, batch._schedule_delay_millis, batch._max_queue_size
    finally:
        tracing.shutdown()


def test_spans_are_exported_in_small_frequent_batches_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    # A big batch holds the GIL while it is encoded, and every call in flight waits (bench/ANALYSIS.md).
    assert _batch_settings(monkeypatch) == (32, 100.0, 8192)


def test_the_standard_batch_variables_win(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = _batch_settings(
        monkeypatch,
        OTEL_BSP_MAX_EXPORT_BATCH_SIZE="512",
        OTEL_BSP_SCHEDULE_DELAY="5000",
        OTEL_BSP_MAX_QUEUE_SIZE="2048",
    )
    assert settings == (512, 5000.0, 2048)
