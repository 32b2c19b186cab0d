"""One OpenTelemetry trace per call: a SERVER span for the gateway call, a CLIENT span per attempt.

Spans follow the GenAI semantic conventions (`gen_ai.*`) plus `tollway.*` attributes. Export is
OTLP (gRPC or HTTP, per the standard `OTEL_*` variables) through a batch processor, so exporting
never blocks a request and a collector that is down loses spans, not calls. Nothing secret is ever
put on a span: no key, no credential; prompt and completion content only when capture is on, and then
only after redaction.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.trace import NonRecordingSpan, Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

# The span batch processor's defaults (each overridable by its standard OTEL_BSP_* variable).
EXPORT_QUEUE_SIZE = 8192
EXPORT_DELAY_MS = 100
EXPORT_BATCH_SIZE = 32

log = logging.getLogger("tollway.tracing")

_PROPAGATOR = TraceContextTextMapPropagator()
_CARD_DIGITS = re.compile(r"(?<!\d)(?:\d[ -]?){12,18}\d(?!\d)")
_EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}")


def _luhn_ok(digits: str) -> bool:
    total, double = 0, False
    for char in reversed(digits):
        value = int(char)
        if double:
            value = value * 2 - 9 if value > 4 else value * 2
        total += value
        double = not double
    return total % 10 == 0


@dataclass(frozen=True)
class Redactor:
    """Replaces e-mail addresses, payment card numbers (Luhn-checked) and configured patterns."""

    patterns: tuple[re.Pattern[str], ...] = ()

    @classmethod
    def from_strings(cls, patterns: Iterable[str]) -> Redactor:
        return cls(tuple(re.compile(p) for p in patterns))

    def __call__(self, text: str) -> str:
        text = _EMAIL.sub("[REDACTED:email]", text)

        def card(match: re.Match[str]) -> str:
            digits = re.sub(r"[ -]", "", match.group(0))
            return "[REDACTED:card]" if 13 <= len(digits) <= 19 and _luhn_ok(digits) else match.group(0)

        text = _CARD_DIGITS.sub(card, text)
        for pattern in self.patterns:
            text = pattern.sub("[REDACTED]", text)
        return text


def _exporter_from_env() -> SpanExporter | None:
    """The OTLP exporter the standard variables ask for, or None when tracing is not configured."""
    names = os.environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    endpoint = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or os.environ.get(
        "OTEL_EXPORTER_OTLP_ENDPOINT"
    )
    if names == "none" or (not names and not endpoint):
        return None
    if names and names != "otlp":
        log.warning("OTEL_TRACES_EXPORTER=%s is not supported; using otlp", names)
    protocol = (
        os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "grpc"
    )
    if protocol.startswith("http"):
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter

        return HttpExporter()
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter

    return GrpcExporter()


@dataclass
class Tracing:
    """The sidecar's tracer; a no-op when no exporter is configured."""

    provider: TracerProvider | None = None
    capture_content: bool = False
    redact: Redactor = field(default_factory=Redactor)

    def __post_init__(self) -> None:
        source = self.provider or trace.NoOpTracerProvider()
        self.tracer = source.get_tracer("tollway.sidecar")

    @classmethod
    def from_env(
        cls,
        *,
        capture_content: bool = False,
        redact_patterns: Sequence[str] = (),
        processor: SpanProcessor | None = None,
    ) -> Tracing:
        exporter = _exporter_from_env() if processor is None else None
        if processor is None and exporter is None:
            return cls(None, capture_content, Redactor.from_strings(redact_patterns))
        resource = Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", "tollway-gateway")})
        provider = TracerProvider(resource=resource)
        if processor is None:
            assert exporter is not None
            # Our defaults, unless the standard OTEL_BSP_* variables say otherwise. Small batches,
            # often: encoding a batch holds the GIL while calls wait, and the SDK's 512 spans every
            # 5 s (or our earlier 1 s) stalled every call in flight for milliseconds. Measured at
            # 250 calls/s: p99 22-42 ms with 1 s batches, 7.8 ms with these (bench/ANALYSIS.md).
            processor = BatchSpanProcessor(
                exporter,
                max_queue_size=int(os.environ.get("OTEL_BSP_MAX_QUEUE_SIZE", str(EXPORT_QUEUE_SIZE))),
                schedule_delay_millis=float(os.environ.get("OTEL_BSP_SCHEDULE_DELAY", str(EXPORT_DELAY_MS))),
                max_export_batch_size=int(
                    os.environ.get("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", str(EXPORT_BATCH_SIZE))
                ),
            )
        provider.add_span_processor(processor)
        return cls(provider, capture_content, Redactor.from_strings(redact_patterns))

    @property
    def enabled(self) -> bool:
        return self.provider is not None

    def shutdown(self) -> None:
        if self.provider is not None:
            self.provider.shutdown()

    # -- spans ----------------------------------------------------------------------------------

    def start_call(self, headers: Mapping[str, str]) -> Span:
        """The SERVER span of one call, continuing the client's `traceparent` when it sent one."""
        if self.provider is None:
            return trace.INVALID_SPAN
        parent = _PROPAGATOR.extract(carrier=dict(headers))
        return self.tracer.start_span("chat", context=parent, kind=SpanKind.SERVER)

    def start_attempt(self, call: Span, name: str) -> Span:
        if self.provider is None or not call.is_recording():
            return trace.INVALID_SPAN
        return self.tracer.start_span(name, context=trace.set_span_in_context(call), kind=SpanKind.CLIENT)

    @staticmethod
    def traceparent(span: Span) -> dict[str, str]:
        """Headers that carry `span` to the provider (empty when not tracing)."""
        if not span.get_span_context().is_valid:
            return {}
        carrier: dict[str, str] = {}
        _PROPAGATOR.inject(carrier, context=trace.set_span_in_context(span, Context()))
        return carrier

    # -- content --------------------------------------------------------------------------------

    def add_prompt_events(self, span: Span, body: Mapping[str, Any]) -> None:
        """Prompt messages as GenAI events, redacted (only called when capture is on)."""
        for message in body.get("messages") or ():
            if not isinstance(message, Mapping):
                continue
            role = str(message.get("role", "user"))
            content = message.get("content")
            text = content if isinstance(content, str) else json.dumps(content, separators=(",", ":"))
            span.add_event(
                f"gen_ai.{role}.message", {"gen_ai.system": "tollway", "content": self.redact(text)}
            )

    def add_completion_event(self, span: Span, text: str, finish_reason: str | None) -> None:
        span.add_event(
            "gen_ai.choice",
            {"index": 0, "finish_reason": finish_reason or "", "message": self.redact(text)},
        )


def set_error(span: Span, description: str) -> None:
    if span.is_recording():
        span.set_status(Status(StatusCode.ERROR, description))


def is_noop(span: Span) -> bool:
    return isinstance(span, NonRecordingSpan) or not span.is_recording()
