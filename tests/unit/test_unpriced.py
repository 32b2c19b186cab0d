"""Why a successful answer was charged without provider usage: the reason label and the span."""

from __future__ import annotations

import pytest
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tollway_sidecar.extproc import spans
from tollway_sidecar.extproc.accounting import unpriced_reason
from tollway_sidecar.extproc.state import RequestState
from tollway_sidecar.providers.usage import SseParser, parse_json
from tollway_sidecar.tracing import Tracing


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"", "bad_body"),
        (b"<html><body>We'll be back soon</body></html>", "bad_body"),
        (b'{"id":"chatcmpl-1","choices":[{"ind', "bad_body"),  # truncated
        (b"[1, 2]", "bad_body"),
        (b'{"choices":[]}', "no_usage"),
        (b'{"usage":{"prompt_tokens":-5,"completion_tokens":3}}', "invalid_usage"),
        (b'{"usage":{"completion_tokens":3}}', "invalid_usage"),
    ],
)
def test_the_reason_for_a_whole_body(body: bytes, reason: str) -> None:
    parsed = parse_json("openai", body)
    assert parsed.usage is None
    assert unpriced_reason(parsed.error) == reason


def test_the_reason_for_streams() -> None:
    cut = SseParser("openai")
    cut.feed(b'data: {"choices":[{"delta":{"content":"Hi"}}]}\n\n')
    parsed = cut.finish()
    assert unpriced_reason(parsed.error, complete=parsed.complete) == "stream_cut"
    whole = SseParser("openai")
    whole.feed(b'data: {"choices":[{"delta":{"content":"Hi"}}]}\n\ndata: [DONE]\n\n')
    parsed = whole.finish()
    assert unpriced_reason(parsed.error, complete=parsed.complete) == "no_usage"


def test_the_calls_span_says_why_it_was_charged_without_usage() -> None:
    exported = InMemorySpanExporter()
    tracing = Tracing.from_env(processor=SimpleSpanProcessor(exported))
    state = RequestState(request_id="r1")
    spans.start_call(tracing, state, {})
    state.status, state.unpriced = 200, "bad_body"
    spans.finished(tracing, state)
    (span,) = exported.get_finished_spans()
    assert span.attributes is not None and span.attributes["tollway.unpriced_reason"] == "bad_body"
