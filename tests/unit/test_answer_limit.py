"""The router filter refuses a buffered answer over the answer limit, whatever Envoy let through."""

from __future__ import annotations

import json

from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as ep

from tollway_sidecar.config.models import Backend, GatewayConfig, Route
from tollway_sidecar.extproc.router import RouterCall
from tollway_sidecar.runtime import CompiledConfig, Runtime

BACKEND = Backend(name="mock", provider="openai-compatible", model="m", base_url="http://127.0.0.1:9/v1")
ROUTE = Route(id="r", name="r", namespace="team", model="m", backends=(BACKEND,))
CONFIG = GatewayConfig(routes=(ROUTE,)).with_checksum()


def _answer(size: int) -> tuple[ep.ProcessingResponse, RouterCall]:
    runtime = Runtime(CompiledConfig.build(CONFIG), max_request_bytes=100, max_response_bytes=1000)
    call = RouterCall(runtime)
    call.state.operation, call.state.route, call.state.backend, call.state.status = (
        "chat",
        ROUTE,
        BACKEND,
        200,
    )
    body = json.dumps({"object": "list", "data": "x" * size}).encode()
    return call.on_response_body(ep.HttpBody(body=body, end_of_stream=True)), call


def test_an_answer_over_the_limit_becomes_a_502_naming_it() -> None:
    reply, call = _answer(2000)
    assert reply.WhichOneof("response") == "immediate_response"
    assert reply.immediate_response.status.code == 502
    error = json.loads(reply.immediate_response.body)["error"]
    assert error["code"] == "response_too_large" and "1000 bytes" in error["message"]
    assert call.state.finished


def test_an_answer_announcing_more_than_the_limit_is_refused_before_its_body() -> None:
    runtime = Runtime(CompiledConfig.build(CONFIG), max_request_bytes=100, max_response_bytes=1000)
    call = RouterCall(runtime)
    call.state.operation, call.state.route, call.state.backend = "chat", ROUTE, BACKEND
    headers = ep.HttpHeaders(
        headers=base_pb2.HeaderMap(
            headers=[
                base_pb2.HeaderValue(key=":status", raw_value=b"200"),
                base_pb2.HeaderValue(key="content-type", raw_value=b"application/json"),
                base_pb2.HeaderValue(key="content-length", raw_value=b"1001"),
            ]
        )
    )
    reply = call.on_response_headers(headers)
    assert reply.immediate_response.status.code == 502
    assert b"response_too_large" in reply.immediate_response.body
    assert call.state.finished


def test_an_answer_within_the_limit_passes() -> None:
    reply, _ = _answer(500)
    assert reply.WhichOneof("response") == "response_body"
    assert not reply.response_body.response.body_mutation.body
