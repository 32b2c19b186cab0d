"""Who the router filter lets through: each rule that decides access, through `RouterCall` itself.

Every test here fails when its rule is broken in the filter (a key check skipped, an expiry always
false, a model glob ignored, another namespace's route reachable): the Envoy tier is not the only
place that notices.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as ep

from tollway_sidecar.config.models import Backend, Budget, GatewayConfig, Route, VirtualKey
from tollway_sidecar.extproc.router import RouterCall
from tollway_sidecar.runtime import CompiledConfig, Runtime

SECRET = "tw-access-test-key-0000000000000001"


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _route(model: str, namespace: str = "team-a", **extra: Any) -> Route:
    slug = model.replace(".", "-")
    backend = Backend(name="b", provider="openai", model=model, base_url="http://upstream:9/v1")
    return Route(id=slug, name=slug, namespace=namespace, model=model, backends=(backend,), **extra)


ROUTES = (
    _route("gpt-4o-mini"),
    _route("claude-x"),
    _route("private-model", namespace="team-b"),
    _route("shared-model", namespace="team-b", allowed_namespaces=("team-a",)),
)


def _runtime(key: VirtualKey | None = None, budgets: tuple[Budget, ...] = ()) -> Runtime:
    key = key or VirtualKey(name="app", namespace="team-a", key_sha256=_digest(SECRET))
    config = GatewayConfig(keys=(key,), routes=ROUTES, budgets=budgets).with_checksum()
    return Runtime(CompiledConfig.build(config), max_request_bytes=1 << 20)


def _headers(**pairs: str) -> ep.HttpHeaders:
    pairs = {":method": "POST", ":path": "/v1/chat/completions", **pairs}
    return ep.HttpHeaders(
        headers=base_pb2.HeaderMap(
            headers=[base_pb2.HeaderValue(key=k, raw_value=v.encode()) for k, v in pairs.items()]
        )
    )


def _bearer(secret: str = SECRET) -> dict[str, str]:
    return {"authorization": f"Bearer {secret}"}


def _body(model: str = "gpt-4o-mini") -> ep.HttpBody:
    payload = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
    return ep.HttpBody(body=json.dumps(payload).encode(), end_of_stream=True)


def _refusal(reply: ep.ProcessingResponse) -> tuple[int, str]:
    assert reply.HasField("immediate_response"), f"expected a refusal, the call went on: {reply}"
    error = json.loads(reply.immediate_response.body)["error"]
    return reply.immediate_response.status.code, error["code"]


async def _call(runtime: Runtime, model: str = "gpt-4o-mini", **headers: str) -> ep.ProcessingResponse:
    """The headers' reply if it refused the call, else the body's."""
    call = RouterCall(runtime)
    reply = call.on_request_headers(_headers(**headers))
    if reply.HasField("immediate_response"):
        return reply
    return await call.on_request_body(_body(model))


def _removed(reply: ep.ProcessingResponse) -> set[str]:
    return set(reply.request_body.response.header_mutation.remove_headers)


async def test_a_valid_key_goes_on_upstream_without_its_credential() -> None:
    reply = await _call(_runtime(), **_bearer())
    assert not reply.HasField("immediate_response"), reply
    assert {"authorization", "x-api-key"} <= _removed(reply)


async def test_the_key_is_accepted_as_x_api_key_too() -> None:
    reply = await _call(_runtime(), **{"x-api-key": SECRET})
    assert not reply.HasField("immediate_response"), reply


async def test_no_key_is_401_missing_api_key() -> None:
    assert _refusal(await _call(_runtime())) == (401, "missing_api_key")
    assert _refusal(await _call(_runtime(), authorization="Bearer   ")) == (401, "missing_api_key")
    assert _refusal(await _call(_runtime(), authorization=f"Basic {SECRET}")) == (401, "missing_api_key")


async def test_a_key_the_gateway_did_not_issue_is_401_invalid_api_key() -> None:
    assert _refusal(await _call(_runtime(), **_bearer(SECRET + "x"))) == (401, "invalid_api_key")
    assert _refusal(await _call(_runtime(), **_bearer(_digest(SECRET)))) == (401, "invalid_api_key")


async def test_a_disabled_key_is_401_key_disabled() -> None:
    key = VirtualKey(name="app", namespace="team-a", key_sha256=_digest(SECRET), disabled=True)
    assert _refusal(await _call(_runtime(key), **_bearer())) == (401, "key_disabled")


@pytest.mark.parametrize("ago", [timedelta(seconds=1), timedelta(days=400)])
async def test_an_expired_key_is_401_key_expired(ago: timedelta) -> None:
    expired = datetime.now(UTC) - ago
    key = VirtualKey(name="app", namespace="team-a", key_sha256=_digest(SECRET), expires_at=expired)
    assert _refusal(await _call(_runtime(key), **_bearer())) == (401, "key_expired")


async def test_a_key_that_expires_later_is_let_through() -> None:
    later = datetime.now(UTC) + timedelta(hours=1)
    key = VirtualKey(name="app", namespace="team-a", key_sha256=_digest(SECRET), expires_at=later)
    reply = await _call(_runtime(key), **_bearer())
    assert not reply.HasField("immediate_response"), reply


async def test_a_naive_expiry_is_read_as_utc() -> None:
    expired = (datetime.now(UTC) - timedelta(minutes=5)).replace(tzinfo=None)
    key = VirtualKey(name="app", namespace="team-a", key_sha256=_digest(SECRET), expires_at=expired)
    assert _refusal(await _call(_runtime(key), **_bearer())) == (401, "key_expired")


async def test_a_key_limited_to_some_models_is_403_for_the_others() -> None:
    key = VirtualKey(name="app", namespace="team-a", key_sha256=_digest(SECRET), models=("gpt-*",))
    runtime = _runtime(key)
    assert not (await _call(runtime, "gpt-4o-mini", **_bearer())).HasField("immediate_response")
    assert _refusal(await _call(runtime, "claude-x", **_bearer())) == (403, "model_not_allowed")


async def test_an_unknown_model_is_404_model_not_found() -> None:
    assert _refusal(await _call(_runtime(), "gpt-9", **_bearer())) == (404, "model_not_found")


async def test_another_namespaces_route_is_refused_unless_it_allows_the_keys_namespace() -> None:
    runtime = _runtime()
    assert _refusal(await _call(runtime, "private-model", **_bearer())) == (403, "model_not_allowed")
    assert not (await _call(runtime, "shared-model", **_bearer())).HasField("immediate_response")


async def test_a_spent_budget_refuses_the_next_call_with_429() -> None:
    budget = Budget(name="tiny", namespace="team-a", limit_usd=Decimal("0.000000001"))
    key = VirtualKey(name="app", namespace="team-a", key_sha256=_digest(SECRET), budgets=(budget.id,))
    status, code = _refusal(await _call(_runtime(key, (budget,)), **_bearer()))
    assert status == 429 and "budget" in code


def test_models_lists_only_what_the_key_may_call() -> None:
    key = VirtualKey(name="app", namespace="team-a", key_sha256=_digest(SECRET), models=("gpt-*", "shared-*"))
    reply = RouterCall(_runtime(key)).on_request_headers(
        _headers(**{":method": "GET", ":path": "/v1/models"}, **_bearer())
    )
    assert reply.HasField("immediate_response")
    listed = {model["id"] for model in json.loads(reply.immediate_response.body)["data"]}
    assert listed == {"gpt-4o-mini", "shared-model"}
