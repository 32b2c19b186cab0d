"""Stored Responses through `RouterCall` itself: a created response is recorded for the key that
made it, and `GET`/`DELETE /v1/responses/{id}`, `…/input_items` and `previous_response_id` reach
exactly the backend that stored it, for that key only."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest
from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as ep

from tollway_sidecar.config.models import Backend, GatewayConfig, Route, VirtualKey
from tollway_sidecar.extproc.response_store import MemoryResponseStore, RedisResponseStore, StoredResponse
from tollway_sidecar.extproc.router import RouterCall
from tollway_sidecar.routing.plan import pinned_cluster
from tollway_sidecar.runtime import CompiledConfig, Runtime
from tollway_sidecar.xds import CLUSTER_HEADER, ROUTE_HEADER, clusters

APP, OTHER, FOREIGN = (f"tw-stored-test-{name}-000000000000000000" for name in ("app", "other", "foreign"))


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _openai(name: str, port: int, credential: str) -> Backend:
    return Backend(
        name=name,
        provider="openai",
        model="gpt-4o-mini",
        base_url=f"http://up-{name}:{port}/v1",
        credential=credential,
    )


PAIR = Route(
    id="pair",
    name="pair",
    namespace="team-a",
    model="pair",
    backends=(_openai("first", 1001, "sk-first"), _openai("second", 1002, "sk-second")),
)
MINI = Route(
    id="mini", name="mini", namespace="team-a", model="mini", backends=(_openai("only", 1003, "sk-only"),)
)
AZURE = Route(
    id="az",
    name="az",
    namespace="team-a",
    model="az",
    backends=(
        Backend(
            name="azure",
            provider="azure-openai",
            model="dep",
            base_url="https://res.openai.azure.com/openai/deployments/dep",
            credential="az-secret",
            api_version="2024-10-21",
        ),
    ),
)
TRANSLATED = Route(
    id="chat",
    name="chat",
    namespace="team-a",
    model="chat-only",
    backends=(
        Backend(name="compat", provider="openai-compatible", model="m", base_url="http://compat:1/v1"),
    ),
)
MIXED = Route(
    id="mixed",
    name="mixed",
    namespace="team-a",
    model="mixed",
    backends=(
        Backend(name="compat", provider="openai-compatible", model="m", base_url="http://compat:1/v1"),
        _openai("keeper", 1004, "sk-keeper"),
    ),
)
KEYS = (
    VirtualKey(name="app", namespace="team-a", key_sha256=_digest(APP)),
    VirtualKey(name="other", namespace="team-a", key_sha256=_digest(OTHER)),
    VirtualKey(name="foreign", namespace="team-b", key_sha256=_digest(FOREIGN)),
)
CONFIG = GatewayConfig(keys=KEYS, routes=(PAIR, MINI, AZURE, TRANSLATED, MIXED)).with_checksum()


def _runtime() -> Runtime:
    return Runtime(CompiledConfig.build(CONFIG), max_request_bytes=1 << 20, responses=MemoryResponseStore())


def _headers(path: str, method: str = "GET", secret: str | None = APP, **extra: str) -> ep.HttpHeaders:
    pairs = {":method": method, ":path": path, **extra}
    if secret is not None:
        pairs["authorization"] = f"Bearer {secret}"
    return ep.HttpHeaders(
        headers=base_pb2.HeaderMap(
            headers=[base_pb2.HeaderValue(key=k, raw_value=v.encode()) for k, v in pairs.items()]
        ),
        end_of_stream=method != "POST",
    )


def _status(*pairs: tuple[str, str]) -> ep.HttpHeaders:
    return ep.HttpHeaders(
        headers=base_pb2.HeaderMap(
            headers=[base_pb2.HeaderValue(key=k, raw_value=v.encode()) for k, v in pairs]
        )
    )


async def _headers_reply(call: RouterCall, headers: ep.HttpHeaders) -> ep.ProcessingResponse:
    reply = call.on_request_headers(headers)
    return reply if isinstance(reply, ep.ProcessingResponse) else await reply


def _refusal(reply: ep.ProcessingResponse) -> tuple[int, dict[str, Any]]:
    assert reply.HasField("immediate_response"), f"expected a refusal, the call went on: {reply}"
    return reply.immediate_response.status.code, json.loads(reply.immediate_response.body)["error"]


def _mutation(common: ep.CommonResponse) -> tuple[dict[str, str], set[str]]:
    mutation = common.header_mutation
    return (
        {h.header.key: h.header.raw_value.decode() for h in mutation.set_headers},
        set(mutation.remove_headers),
    )


async def _store(
    runtime: Runtime, response_id: str, route: Route, backend: str, key: str = "team-a/app"
) -> None:
    await runtime.responses.put(
        "team-a", response_id, StoredResponse(key=key, route=route.id, backend=backend)
    )


async def test_no_key_is_401_before_any_lookup() -> None:
    reply = await _headers_reply(RouterCall(_runtime()), _headers("/v1/responses/resp_1", secret=None))
    assert _refusal(reply)[0] == 401 and _refusal(reply)[1]["code"] == "missing_api_key"


async def test_a_wrong_key_is_401() -> None:
    reply = await _headers_reply(RouterCall(_runtime()), _headers("/v1/responses/resp_1", secret="tw-nope"))
    assert _refusal(reply)[1]["code"] == "invalid_api_key"


@pytest.mark.parametrize("path", ["/v1/responses/resp_unknown", "/v1/responses/resp_unknown/input_items"])
async def test_an_unknown_id_is_openais_404(path: str) -> None:
    status, error = _refusal(await _headers_reply(RouterCall(_runtime()), _headers(path)))
    assert status == 404
    assert error == {
        "message": "Response with id 'resp_unknown' not found.",
        "type": "invalid_request_error",
        "param": None,
        "code": "response_not_found",
    }


@pytest.mark.parametrize("secret", [OTHER, FOREIGN])
@pytest.mark.parametrize("method", ["GET", "DELETE"])
async def test_another_keys_response_is_the_same_404(secret: str, method: str) -> None:
    runtime = _runtime()
    await _store(runtime, "resp_mine", PAIR, "second")
    reply = await _headers_reply(RouterCall(runtime), _headers("/v1/responses/resp_mine", method, secret))
    status, error = _refusal(reply)
    assert (status, error["message"]) == (404, "Response with id 'resp_mine' not found.")
    assert await runtime.responses.get("team-a", "resp_mine") is not None  # not deleted either


@pytest.mark.parametrize(
    ("path", "method"), [("/v1/responses/resp_1", "POST"), ("/v1/responses/resp_1/input_items", "DELETE")]
)
async def test_a_method_a_stored_path_does_not_take_is_405(path: str, method: str) -> None:
    reply = await _headers_reply(RouterCall(_runtime()), _headers(path, method))
    assert _refusal(reply)[0] == 405


@pytest.mark.parametrize(
    ("path", "upstream"),
    [
        ("/v1/responses/resp_1", "/v1/responses/resp_1"),
        (
            "/v1/responses/resp_1/input_items?limit=2&order=asc",
            "/v1/responses/resp_1/input_items?limit=2&order=asc",
        ),
    ],
)
async def test_a_known_id_goes_to_the_backend_that_stored_it_only(path: str, upstream: str) -> None:
    runtime = _runtime()
    await _store(runtime, "resp_1", PAIR, "second")
    call = RouterCall(runtime)
    reply = await _headers_reply(call, _headers(path))
    assert reply.HasField("request_headers"), reply
    common = reply.request_headers.response
    assert common.clear_route_cache
    set_headers, removed = _mutation(common)
    assert set_headers[ROUTE_HEADER] == "pair"
    assert set_headers[CLUSTER_HEADER] == pinned_cluster(PAIR, 1) == "tollway_route_pair_pin_1"
    assert set_headers[":path"] == upstream
    assert set_headers["authorization"] == "Bearer sk-second"  # the storing backend's credential
    assert "x-api-key" in removed
    assert call.state.quota is None and call.state.backend is PAIR.backends[1]


def test_the_pinned_cluster_reaches_that_backend_alone_without_the_upstream_filter() -> None:
    by_name = {cluster["name"]: cluster for cluster in clusters(CONFIG)}
    pinned = by_name[pinned_cluster(PAIR, 1)]
    (priority,) = pinned["load_assignment"]["endpoints"]
    assert priority["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]["address"] == "up-second"
    assert (
        "http_filters"
        not in pinned["typed_extension_protocol_options"][
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
        ]
    )
    assert pinned_cluster(MINI, 0) in by_name  # a one-backend route's own cluster
    assert not any(name.startswith("tollway_route_chat_pin") for name in by_name)  # translated: none


async def test_azure_is_asked_on_its_v1_api_with_its_key() -> None:
    runtime = _runtime()
    await _store(runtime, "resp_az", AZURE, "azure")
    reply = await _headers_reply(RouterCall(runtime), _headers("/v1/responses/resp_az", "DELETE"))
    set_headers, _ = _mutation(reply.request_headers.response)
    assert set_headers[":path"] == "/openai/v1/responses/resp_az"
    assert set_headers["api-key"] == "az-secret"


async def test_a_delete_that_worked_forgets_the_record_and_costs_nothing() -> None:
    runtime = _runtime()
    await _store(runtime, "resp_1", MINI, "only")
    call = RouterCall(runtime)
    await _headers_reply(call, _headers("/v1/responses/resp_1", "DELETE"))
    reply = call.on_response_headers(_status((":status", "200"), ("content-type", "application/json")))
    set_headers, _ = _mutation(reply.response_headers.response)
    assert set_headers["x-tollway-cost-usd"] == "0"
    assert set_headers["x-tollway-backend"] == "only"
    assert call.state.finished and call.state.usage is None and call.state.unpriced is None
    await runtime.drain_responses()
    assert await runtime.responses.get("team-a", "resp_1") is None


async def test_a_retrieve_keeps_the_record() -> None:
    runtime = _runtime()
    await _store(runtime, "resp_1", MINI, "only")
    call = RouterCall(runtime)
    await _headers_reply(call, _headers("/v1/responses/resp_1"))
    call.on_response_headers(_status((":status", "200"), ("content-type", "application/json")))
    await runtime.drain_responses()
    assert await runtime.responses.get("team-a", "resp_1") is not None


async def _create(
    runtime: Runtime, body: dict[str, Any], answer: bytes, content_type: str = "application/json"
) -> RouterCall:
    call = RouterCall(runtime)
    await _headers_reply(call, _headers("/v1/responses", "POST", **{"content-type": "application/json"}))
    reply = await call.on_request_body(ep.HttpBody(body=json.dumps(body).encode(), end_of_stream=True))
    assert not reply.HasField("immediate_response"), reply
    call.on_response_headers(_status((":status", "200"), ("content-type", content_type)))
    call.on_response_body(ep.HttpBody(body=answer, end_of_stream=True))
    await runtime.drain_responses()
    return call


def _response(response_id: str) -> dict[str, Any]:
    return {
        "id": response_id,
        "object": "response",
        "model": "gpt-4o-mini",
        "status": "completed",
        "output": [],
        "usage": {"input_tokens": 3, "output_tokens": 2, "total_tokens": 5},
    }


async def test_a_created_response_is_recorded_for_its_key_route_and_backend() -> None:
    runtime = _runtime()
    await _create(runtime, {"model": "mini", "input": "hi"}, json.dumps(_response("resp_new")).encode())
    assert await runtime.responses.get("team-a", "resp_new") == StoredResponse("team-a/app", "mini", "only")


async def test_store_false_is_not_recorded() -> None:
    runtime = _runtime()
    await _create(
        runtime, {"model": "mini", "input": "hi", "store": False}, json.dumps(_response("resp_x")).encode()
    )
    assert await runtime.responses.get("team-a", "resp_x") is None


async def test_a_streamed_response_is_recorded_from_its_created_event() -> None:
    runtime = _runtime()
    created = {"type": "response.created", "response": {**_response("resp_s"), "status": "in_progress"}}
    completed = {"type": "response.completed", "response": _response("resp_s")}
    stream = (
        f"event: response.created\ndata: {json.dumps(created)}\n\n"
        f"event: response.completed\ndata: {json.dumps(completed)}\n\n"
    ).encode()
    await _create(runtime, {"model": "mini", "input": "hi", "stream": True}, stream, "text/event-stream")
    assert await runtime.responses.get("team-a", "resp_s") == StoredResponse("team-a/app", "mini", "only")


async def _continue(runtime: Runtime, model: str, previous: str) -> tuple[RouterCall, ep.ProcessingResponse]:
    call = RouterCall(runtime)
    await _headers_reply(call, _headers("/v1/responses", "POST"))
    body = {"model": model, "input": "more", "previous_response_id": previous}
    return call, await call.on_request_body(ep.HttpBody(body=json.dumps(body).encode(), end_of_stream=True))


async def test_previous_response_id_is_pinned_to_the_backend_that_stored_it() -> None:
    runtime = _runtime()
    await _store(runtime, "resp_prev", PAIR, "second")
    call, reply = await _continue(runtime, "pair", "resp_prev")
    set_headers, _ = _mutation(reply.request_body.response)
    assert set_headers[CLUSTER_HEADER] == "tollway_route_pair_pin_1"
    assert set_headers[":path"] == "/v1/responses" and set_headers["authorization"] == "Bearer sk-second"
    assert call.state.order == ("second",) and call.state.quota is not None  # a priced call, reserved


@pytest.mark.parametrize("key", ["team-a/other", None])
async def test_an_unknown_or_another_keys_previous_response_is_404_before_admission(key: str | None) -> None:
    runtime = _runtime()
    if key is not None:
        await _store(runtime, "resp_prev", PAIR, "second", key=key)
    call, reply = await _continue(runtime, "pair", "resp_prev")
    status, error = _refusal(reply)
    assert (status, error["param"], error["code"]) == (404, "previous_response_id", "response_not_found")
    assert call.state.quota is None


async def test_a_previous_response_of_another_model_is_400_naming_it() -> None:
    runtime = _runtime()
    await _store(runtime, "resp_prev", MINI, "only")
    _, reply = await _continue(runtime, "pair", "resp_prev")
    status, error = _refusal(reply)
    assert status == 400 and error["param"] == "previous_response_id" and "'mini'" in error["message"]


async def test_a_record_that_cannot_be_written_is_counted_and_the_answer_goes_on() -> None:
    runtime = Runtime(
        CompiledConfig.build(CONFIG),
        max_request_bytes=1 << 20,
        responses=RedisResponseStore("redis://127.0.0.1:1", timeout_s=0.5),  # nothing listens
    )
    call = await _create(
        runtime, {"model": "mini", "input": "hi"}, json.dumps(_response("resp_lost")).encode()
    )
    assert call.state.status == 200 and call.state.cost is not None and call.state.cost > 0
    assert runtime.metrics.response_store_errors.labels("put")._value.get() == 1


async def test_a_lookup_that_cannot_be_made_is_503_not_404() -> None:
    runtime = Runtime(
        CompiledConfig.build(CONFIG),
        max_request_bytes=1 << 20,
        responses=RedisResponseStore("redis://127.0.0.1:1", timeout_s=0.5),
    )
    status, error = _refusal(await _headers_reply(RouterCall(runtime), _headers("/v1/responses/resp_1")))
    assert (status, error["code"]) == (503, "response_store_unavailable")


async def test_on_a_route_with_a_translated_backend_too_the_pinned_backend_alone_is_asked() -> None:
    runtime = _runtime()
    await _store(runtime, "resp_prev", MIXED, "keeper")
    call, reply = await _continue(runtime, "mixed", "resp_prev")
    set_headers, _ = _mutation(reply.request_body.response)  # not the translator's 400
    assert set_headers[CLUSTER_HEADER] == "tollway_route_mixed_pin_1" and call.state.order == ("keeper",)


async def test_a_route_that_stores_nothing_refuses_previous_response_id_naming_it() -> None:
    _, reply = await _continue(_runtime(), "chat-only", "resp_prev")
    status, error = _refusal(reply)
    assert (status, error["param"]) == (400, "previous_response_id")


async def test_a_stored_call_with_a_body_is_400() -> None:
    runtime = _runtime()
    await _store(runtime, "resp_1", MINI, "only")
    headers = _headers("/v1/responses/resp_1")
    headers.end_of_stream = False
    status, error = _refusal(await _headers_reply(RouterCall(runtime), headers))
    assert (status, error["code"]) == (400, "unexpected_body")


async def test_a_stream_without_event_names_is_recorded_from_its_typed_data() -> None:
    runtime = _runtime()
    created = {"type": "response.created", "response": {**_response("resp_n"), "status": "in_progress"}}
    completed = {"type": "response.completed", "response": _response("resp_n")}
    sep = (",", ":")
    stream = (
        f"data: {json.dumps(created, separators=sep)}\n\ndata: {json.dumps(completed, separators=sep)}\n\n"
    ).encode()
    await _create(runtime, {"model": "mini", "input": "hi", "stream": True}, stream, "text/event-stream")
    assert await runtime.responses.get("team-a", "resp_n") == StoredResponse("team-a/app", "mini", "only")
