"""The router filter refuses a buffered answer over the answer limit, whatever Envoy let through."""

from __future__ import annotations

import json

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


def _status_and_body(reply: ep.ProcessingResponse) -> tuple[str | None, bytes]:
    common = reply.response_body.response
    headers = {h.header.key: h.header.raw_value.decode() for h in common.header_mutation.set_headers}
    return headers.get(":status"), common.body_mutation.body


def test_an_answer_over_the_limit_becomes_a_502_naming_it() -> None:
    reply, call = _answer(2000)
    status, body = _status_and_body(reply)
    assert status == "502"
    error = json.loads(body)["error"]
    assert error["code"] == "response_too_large" and "1000 bytes" in error["message"]
    assert call.state.finished


def test_an_answer_within_the_limit_passes() -> None:
    reply, _ = _answer(500)
    status, body = _status_and_body(reply)
    assert status is None and body == b""
