"""The router filter's answers to requests it cannot serve as sent: paths, encodings, its own failures."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as ep

from tollway_sidecar.config.models import Backend, GatewayConfig, Route, VirtualKey
from tollway_sidecar.extproc import router
from tollway_sidecar.extproc.router import RouterCall
from tollway_sidecar.extproc.server import ExternalProcessor
from tollway_sidecar.runtime import CompiledConfig, Runtime

KEY = "tw-router-test-key-000000000000000"
CONFIG = GatewayConfig(
    keys=(VirtualKey(name="app", namespace="n", key_sha256=hashlib.sha256(KEY.encode()).hexdigest()),),
    routes=(
        Route(
            id="chat",
            name="chat",
            namespace="n",
            model="gpt-4o-mini",
            backends=(Backend(name="b", provider="openai", model="gpt-4o-mini", base_url="http://x:9/v1"),),
        ),
        Route(
            id="claude",
            name="claude",
            namespace="n",
            model="claude",
            backends=(Backend(name="a", provider="anthropic", model="claude-x", base_url="http://y:9"),),
        ),
    ),
).with_checksum()
BODY = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}).encode()
MESSAGES_BODY = json.dumps(
    {"model": "claude", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
).encode()


def _runtime() -> Runtime:
    return Runtime(CompiledConfig.build(CONFIG), max_request_bytes=1 << 20)


def _headers(path: str, method: str = "POST", **extra: str) -> ep.HttpHeaders:
    pairs = {":method": method, ":path": path, "authorization": f"Bearer {KEY}", **extra}
    return ep.HttpHeaders(
        headers=base_pb2.HeaderMap(
            headers=[base_pb2.HeaderValue(key=k, raw_value=v.encode()) for k, v in pairs.items()]
        )
    )


def _immediate(reply: ep.ProcessingResponse) -> tuple[int, dict[str, Any]]:
    assert reply.HasField("immediate_response"), reply
    return reply.immediate_response.status.code, json.loads(reply.immediate_response.body)


def _upstream_path(reply: ep.ProcessingResponse) -> str:
    mutation = reply.request_body.response.header_mutation
    return {h.header.key: h.header.raw_value.decode() for h in mutation.set_headers}[":path"]


@pytest.mark.parametrize(
    ("path", "body", "upstream"),
    [
        ("/v1/chat/completions/", BODY, "/v1/chat/completions"),
        ("/v1/chat/completions//?x=1", BODY, "/v1/chat/completions"),
        ("/v1/messages/", MESSAGES_BODY, "/v1/messages"),
    ],
)
async def test_a_trailing_slash_is_served_as_the_path_without_it(
    path: str, body: bytes, upstream: str
) -> None:
    call = RouterCall(_runtime())
    assert not call.on_request_headers(_headers(path)).HasField("immediate_response")
    reply = await call.on_request_body(ep.HttpBody(body=body, end_of_stream=True))
    assert not reply.HasField("immediate_response"), reply
    assert _upstream_path(reply) == upstream


def test_a_trailing_slash_on_models_lists_them() -> None:
    status, payload = _immediate(RouterCall(_runtime()).on_request_headers(_headers("/v1/models/", "GET")))
    assert status == 200 and payload["object"] == "list"


@pytest.mark.parametrize("path", ["/v1/chat/completion", "/chat/completions", "/v1//chat/completions", "/"])
def test_unknown_paths_get_the_gateways_own_404(path: str) -> None:
    status, payload = _immediate(RouterCall(_runtime()).on_request_headers(_headers(path)))
    assert status == 404
    assert payload["error"]["code"] == "unknown_url"
    assert path in payload["error"]["message"]


@pytest.mark.parametrize("encoding", ["gzip", "br", "deflate", "gzip, identity"])
def test_a_content_encoding_other_than_identity_is_415(encoding: str) -> None:
    reply = RouterCall(_runtime()).on_request_headers(
        _headers("/v1/chat/completions", **{"content-encoding": encoding})
    )
    status, payload = _immediate(reply)
    assert status == 415
    assert payload["error"]["code"] == "unsupported_content_encoding"
    assert encoding in payload["error"]["message"]


def test_identity_encoding_is_accepted() -> None:
    reply = RouterCall(_runtime()).on_request_headers(
        _headers("/v1/chat/completions", **{"content-encoding": "identity"})
    )
    assert not reply.HasField("immediate_response")


class _Stream:
    """The grpc.aio servicer context of one ext_proc stream: reads the given messages, keeps writes."""

    def __init__(self, requests: list[ep.ProcessingRequest]) -> None:
        self.requests: Iterator[ep.ProcessingRequest] = iter(requests)
        self.written: list[ep.ProcessingResponse] = []

    def invocation_metadata(self) -> tuple[()]:
        return ()

    async def read(self) -> Any:
        return next(self.requests, grpc.aio.EOF)

    async def write(self, reply: ep.ProcessingResponse) -> None:
        self.written.append(reply)


@pytest.mark.parametrize(("path", "body"), [("/v1/chat/completions", BODY), ("/v1/messages", MESSAGES_BODY)])
async def test_a_failure_in_the_filter_is_logged_and_answered_naming_the_stage(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, path: str, body: bytes
) -> None:
    def broken(operation: str, body: dict[str, Any]) -> str:
        raise RuntimeError("injected fault")

    monkeypatch.setattr(router, "validate", broken)  # stands for any bug in the request-body phase
    stream = _Stream(
        [
            ep.ProcessingRequest(request_headers=_headers(path)),
            ep.ProcessingRequest(request_body=ep.HttpBody(body=body, end_of_stream=True)),
        ]
    )
    with caplog.at_level(logging.ERROR, logger="tollway.extproc"):
        await ExternalProcessor(_runtime()).Process(iter(()), stream)  # type: ignore[arg-type]
    status, payload = _immediate(stream.written[-1])
    assert status == 500
    error = payload["error"]
    assert "request body" in error["message"] and "RuntimeError" in error["message"]
    if path == "/v1/messages":
        assert payload["type"] == "error" and error["type"] == "api_error"
    else:
        assert error["code"] == "gateway_error" and error["type"] == "api_error"
    (record,) = [r for r in caplog.records if r.name == "tollway.extproc"]
    line = record.getMessage()
    assert "request_body" in line and path in line and "key app" in line and "RuntimeError" in line
    call_id = error["message"].rsplit("call ", 1)[1].rstrip(".")
    assert call_id in line
    assert KEY not in line and KEY not in caplog.text
    assert record.exc_info is not None  # the traceback is logged with it
