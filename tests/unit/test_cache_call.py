"""`extproc.cache_call`: a Responses call is looked up only when it asks not to be stored, and a
call's fill is ended once — stored with the priced cost when the answer can be replayed, abandoned
(its lease released) otherwise."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import pytest

from tollway_sidecar.cache import CacheDecision, decide, wall_ms
from tollway_sidecar.config.models import Backend, CacheSettings, GatewayConfig, Route, VirtualKey
from tollway_sidecar.extproc import cache_call
from tollway_sidecar.extproc.state import RequestState
from tollway_sidecar.providers.usage import TokenUsage
from tollway_sidecar.runtime import CompiledConfig, Runtime

SETTINGS = CacheSettings(mode="Exact")
ANSWER = json.dumps(
    {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": "gpt-4o-mini",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 20, "total_tokens": 25},
    }
).encode()


async def missed(runtime: Runtime, decision: CacheDecision, cost: Decimal | None) -> RequestState:
    lookup = await runtime.cache.lookup("k", decision, wait_s=0.1)
    assert lookup.fill is not None and lookup.outcome == "MISS"
    state = RequestState(request_id="r", status=200, usage=TokenUsage(5, 20), cost=cost)
    state.cache = cache_call.CacheCall(decision, SETTINGS, "chat", lookup, answer_body=ANSWER)
    return state


def runtime() -> Runtime:
    return Runtime(CompiledConfig.build(GatewayConfig()), max_request_bytes=1 << 20)


async def test_a_priced_answer_is_stored_once_with_its_cost_in_nano_usd() -> None:
    rt, decision = runtime(), decide(SETTINGS, {})
    state = await missed(rt, decision, Decimal("0.00001275"))
    cache_call.end(rt, state)
    cache_call.end(rt, state)  # the second end is a no-op
    await rt.drain_cache()
    entry = await rt.cache.store.get("k", wall_ms())
    assert entry is not None and entry.cost_nano == 12_750 and entry.usage == TokenUsage(5, 20)
    assert (await rt.cache.lookup("k", decision, wait_s=0.1)).outcome == "HIT"


async def test_an_unpriced_answer_is_abandoned_and_frees_the_key() -> None:
    rt, decision = runtime(), decide(SETTINGS, {})
    state = await missed(rt, decision, None)
    cache_call.end(rt, state)
    await rt.drain_cache()
    assert await rt.cache.store.get("k", wall_ms()) is None
    again = await rt.cache.lookup("k", decision, wait_s=0.1)
    assert again.fill is not None and not again.waited  # the lease was released: no one waits for it


KEY = VirtualKey(name="a", namespace="default", key_sha256="a" * 64)
ROUTE = Route(
    id="r",
    name="r",
    namespace="default",
    model="mini",
    backends=(
        Backend(name="mock", provider="openai", model="gpt-4o-mini", base_url="http://127.0.0.1:1/v1"),
    ),
    cache=SETTINGS,
)


async def responses_lookup(rt: Runtime, body: dict[str, Any]) -> cache_call.CacheCall | None:
    state = RequestState(request_id="r", operation="responses", path="/v1/responses", key=KEY)
    state.client_model = "mini"
    return await cache_call.look_up(rt, state, ROUTE, {}, {"model": "mini", "input": "hi", **body})


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"store": True},
        {"store": False, "background": True},
        {"store": False, "previous_response_id": "x"},
    ],
)
async def test_a_responses_call_the_provider_stores_is_a_bypass(body: dict[str, Any]) -> None:
    rt = runtime()
    call = await responses_lookup(rt, body)
    assert call is not None and call.lookup.fill is None and call.entry is None
    assert call.headers == {"x-tollway-cache": "BYPASS"}


async def test_a_responses_call_that_asks_not_to_be_stored_fills_an_entry() -> None:
    rt = runtime()
    call = await responses_lookup(rt, {"store": False})
    assert call is not None and call.api == "responses" and call.lookup.fill is not None
    assert call.headers == {"x-tollway-cache": "MISS"}
