"""Which ext_proc phases an upstream attempt asks for, and who records its answer."""

from __future__ import annotations

import json

from envoy.config.core.v3 import base_pb2
from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as ep
from google.protobuf import struct_pb2

from tollway_sidecar.config.models import Backend, Fallback, GatewayConfig, Route
from tollway_sidecar.extproc import final_attempt
from tollway_sidecar.extproc.dispatch import attach_call_id
from tollway_sidecar.extproc.state import RequestState
from tollway_sidecar.extproc.upstream import UpstreamAttempt
from tollway_sidecar.runtime import CompiledConfig, Runtime

Mode = processing_mode_pb2.ProcessingMode


def _route(route_id: str, model: str, *, max_attempts: int, provider: str = "openai") -> Route:
    return Route(
        id=route_id,
        name=route_id,
        namespace="team",
        model="chat",
        # Two backends: a one-backend route has no upstream filter (the router rewrites its calls).
        backends=(
            Backend(name="a", provider=provider, model=model, base_url="http://127.0.0.1:9/v1"),  # type: ignore[arg-type]
            Backend(name="b", provider=provider, model=model, base_url="http://127.0.0.1:10/v1"),  # type: ignore[arg-type]
        ),
        fallback=Fallback(max_attempts=max_attempts),
    )


SAME = _route("same", "chat", max_attempts=1)  # no rewrite, never retries
RENAMED = _route("renamed", "upstream-model", max_attempts=2)  # rewrite, may retry
TRANSLATED = _route("translated", "claude", max_attempts=1, provider="anthropic")
CONFIG = GatewayConfig(routes=(SAME, RENAMED, TRANSLATED)).with_checksum()


def _runtime() -> Runtime:
    return Runtime(CompiledConfig.build(CONFIG), max_request_bytes=1 << 20)


def _call(runtime: Runtime, route: Route, rid: str) -> RequestState:
    body = {"model": "chat", "messages": [{"role": "user", "content": "hi"}]}
    state = RequestState(request_id=rid, operation="chat", path="/v1/chat/completions", route=route)
    state.body, state.body_length = body, 57
    runtime.inflight.add(state)
    return state


def _headers_request(rid: str, backend: str, attempt: int = 1) -> ep.ProcessingRequest:
    request = ep.ProcessingRequest(
        request_headers=ep.HttpHeaders(
            headers=base_pb2.HeaderMap(
                headers=[base_pb2.HeaderValue(key=":path", raw_value=b"/v1/chat/completions")]
            )
        )
    )
    holder = ep.ProcessingResponse()
    attach_call_id(holder, rid)
    request.metadata_context.CopyFrom(_metadata(holder))
    attrs = struct_pb2.Struct()
    attrs.fields["xds.upstream_host_metadata"].string_value = (
        'filter_metadata { key: "tollway" value { fields { key: "backend" value { string_value: "'
        + backend
        + '" } } } }'
    )
    attrs.fields["upstream.request_attempt_count"].number_value = attempt
    request.attributes["envoy.filters.http.ext_proc.upstream"].CopyFrom(attrs)
    return request


def _metadata(holder: ep.ProcessingResponse) -> base_pb2.Metadata:
    metadata = base_pb2.Metadata()
    for namespace, struct in holder.dynamic_metadata.fields.items():
        metadata.filter_metadata[namespace].CopyFrom(struct.struct_value)
    return metadata


def _set_headers(reply: ep.ProcessingResponse) -> dict[str, str]:
    mutation = reply.request_headers.response.header_mutation
    return {h.header.key: h.header.raw_value.decode() for h in mutation.set_headers}


def test_no_rewrite_skips_the_body_and_sets_the_original_length() -> None:
    runtime = _runtime()
    _call(runtime, SAME, "r1")
    attempt = UpstreamAttempt(runtime)
    reply = attempt.on_request_headers(_headers_request("r1", "a"))
    assert reply.mode_override.request_body_mode == Mode.NONE
    # A route that never retries: the router filter records the answer instead.
    assert reply.mode_override.response_header_mode == Mode.SKIP
    assert reply.mode_override.request_header_mode == Mode.SEND
    assert reply.mode_override.response_body_mode == Mode.NONE
    # Whatever an earlier attempt set, this one sends the router's body, at its length.
    assert _set_headers(reply)["content-length"] == "57"


def test_a_rename_keeps_the_body_phase_and_a_retrying_route_watches_the_answer() -> None:
    runtime = _runtime()
    _call(runtime, RENAMED, "r2")
    attempt = UpstreamAttempt(runtime)
    reply = attempt.on_request_headers(_headers_request("r2", "a"))
    assert reply.mode_override.request_body_mode == Mode.BUFFERED
    assert reply.mode_override.response_header_mode == Mode.SEND
    assert "content-length" not in _set_headers(reply)
    body_reply = attempt.on_request_body(ep.HttpBody(body=b"ignored"))
    common = body_reply.request_body.response
    sent = json.loads(common.body_mutation.body)
    assert sent["model"] == "upstream-model"
    lengths = {h.header.key: h.header.raw_value for h in common.header_mutation.set_headers}
    assert lengths["content-length"] == str(len(common.body_mutation.body)).encode()


def test_a_translation_keeps_the_body_phase() -> None:
    runtime = _runtime()
    _call(runtime, TRANSLATED, "r3")
    attempt = UpstreamAttempt(runtime)
    reply = attempt.on_request_headers(_headers_request("r3", "a"))
    assert reply.mode_override.request_body_mode == Mode.BUFFERED
    body = json.loads(attempt.on_request_body(ep.HttpBody()).request_body.response.body_mutation.body)
    assert body["model"] == "claude" and "max_tokens" in body


def test_the_router_records_an_unwatched_attempts_answer() -> None:
    runtime = _runtime()
    state = _call(runtime, SAME, "r4")
    upstream = UpstreamAttempt(runtime)
    upstream.on_request_headers(_headers_request("r4", "a"))
    upstream.on_stream_closed()  # the stream may close before the answer: nothing recorded yet
    attempt = state.attempt_log[-1]
    assert attempt.status == 0 and attempt.ended is None
    final_attempt.record(runtime, state, {":status": "429", "retry-after": "3"}, final_attempt.VIA_UPSTREAM)
    assert attempt.status == 429 and attempt.retry_after_s == 3 and attempt.ended is not None
    counted = runtime.metrics.attempts.labels("same", "a", "429")._value.get()
    assert counted == 1
    # Recorded once only.
    final_attempt.record(runtime, state, {":status": "500"}, final_attempt.VIA_UPSTREAM)
    assert attempt.status == 429


def test_an_answer_envoy_made_itself_is_no_response() -> None:
    runtime = _runtime()
    state = _call(runtime, SAME, "r5")
    UpstreamAttempt(runtime).on_request_headers(_headers_request("r5", "a"))
    final_attempt.record(runtime, state, {":status": "503"}, "upstream_reset_before_response_started")
    assert state.attempt_log[-1].status == 0
    assert runtime.metrics.attempts.labels("same", "a", "no_response")._value.get() == 1


def test_a_watched_attempt_is_left_to_the_upstream_filter() -> None:
    runtime = _runtime()
    state = _call(runtime, RENAMED, "r6")
    UpstreamAttempt(runtime).on_request_headers(_headers_request("r6", "a"))
    final_attempt.record(runtime, state, {":status": "200"}, final_attempt.VIA_UPSTREAM)
    assert state.attempt_log[-1].status == 0
