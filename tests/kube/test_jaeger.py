"""The Jaeger in jaeger_harness.py: one span over OTLP HTTP, read back from /api/traces."""

from __future__ import annotations

from pathlib import Path

from jaeger_harness import Jaeger
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor


def test_a_span_sent_over_otlp_http_is_served_by_the_query_api(tmp_path: Path) -> None:
    with Jaeger.start(tmp_path) as jaeger:
        provider = TracerProvider(resource=Resource.create({"service.name": "tollway-harness-test"}))
        provider.add_span_processor(
            SimpleSpanProcessor(OTLPSpanExporter(endpoint=f"{jaeger.otlp_http}/v1/traces", timeout=10))
        )
        with provider.get_tracer("harness").start_as_current_span("hello", attributes={"llm.model": "m1"}):
            pass
        provider.shutdown()

        (trace,) = jaeger.wait_for_traces("tollway-harness-test")
        (span,) = trace["spans"]
        assert span["operationName"] == "hello"
        assert {"key": "llm.model", "type": "string", "value": "m1"} in span["tags"]
        assert trace["processes"][span["processID"]]["serviceName"] == "tollway-harness-test"
        assert "tollway-harness-test" in jaeger.services()
