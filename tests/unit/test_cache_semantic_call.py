"""`cache_call.look_up` on a Semantic route: after an exact miss the last user message is embedded
(by the mock provider, over HTTP), a paraphrase is served as SEMANTIC_HIT with its similarity on the
span, the embeddings call is charged to the key, and every failure leaves exact matching."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import pytest_asyncio
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tollway.mockprovider import MockSettings, base_url, serve
from tollway_sidecar.cache import Coalescer
from tollway_sidecar.cache.redis_store import RedisCacheStore
from tollway_sidecar.config.models import (
    Backend,
    CacheSettings,
    GatewayConfig,
    Limits,
    Pricing,
    Route,
    SemanticCache,
    VirtualKey,
)
from tollway_sidecar.extproc import cache_call
from tollway_sidecar.extproc.state import RequestState
from tollway_sidecar.providers.usage import TokenUsage
from tollway_sidecar.quota.spend import spend_snapshot
from tollway_sidecar.runtime import CompiledConfig, Runtime

KEY = VirtualKey(name="a", namespace="default", key_sha256="a" * 64)
ANSWER = (
    b'{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"gpt-4o-mini","choices":'
    b'[{"index":0,"message":{"role":"assistant","content":"Paris."},"finish_reason":"stop"}],'
    b'"usage":{"prompt_tokens":9,"completion_tokens":2,"total_tokens":11}}'
)
BODY: dict[str, Any] = {
    "model": "chat",
    "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "what is the capital of france"},
    ],
}


@pytest_asyncio.fixture(scope="module")
async def mock_url() -> AsyncIterator[str]:
    runner = await serve(MockSettings(port=0, embedding_dimensions=256))
    try:
        yield base_url(runner)
    finally:
        await runner.cleanup()


def config(mock_url: str, *, embed_url: str | None = None, key: VirtualKey = KEY) -> GatewayConfig:
    embed = Route(
        id="embed",
        name="embed",
        namespace="default",
        model="text-embedding-3-small",
        backends=(
            Backend(
                name="mock",
                provider="openai-compatible",
                model="text-embedding-3-small",
                base_url=f"{embed_url or mock_url}/v1",
                pricing=Pricing(input_per_million=Decimal("0.02"), output_per_million=Decimal(0)),
            ),
        ),
    )
    chat = Route(
        id="chat",
        name="chat",
        namespace="default",
        model="chat",
        backends=(
            Backend(
                name="mock", provider="openai-compatible", model="gpt-4o-mini", base_url=f"{mock_url}/v1"
            ),
        ),
        cache=CacheSettings(
            mode="Semantic", semantic=SemanticCache(embedding_route="embed", threshold=Decimal("0.9"))
        ),
    )
    return GatewayConfig(keys=(key,), routes=(chat, embed))


class Call:
    def __init__(self, runtime: Runtime, key: VirtualKey = KEY) -> None:
        self.runtime = runtime
        self.key = key
        self.exported = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(self.exported))
        self.tracer = provider.get_tracer("test")

    async def ask(self, text: str, rid: str, headers: dict[str, str] | None = None) -> cache_call.CacheCall:
        body = copy.deepcopy(BODY)
        body["messages"][-1]["content"] = text
        state = RequestState(request_id=rid, operation="chat", path="/v1/chat/completions", key=self.key)
        state.client_model = "chat"
        state.span = self.tracer.start_span("call")
        route = self.runtime.compiled.routes_by_model["chat"]
        found = await cache_call.look_up(self.runtime, state, route, headers or {}, body)
        assert found is not None
        state.span.end()
        state.cache, state.status, state.usage, state.cost = found, 200, TokenUsage(9, 2), Decimal("0.000003")
        if found.lookup.fill is not None:
            found.answer_body = ANSWER
            cache_call.end(self.runtime, state)
            await self.runtime.drain_cache()
        return found

    def similarity(self) -> Any:
        return self.exported.get_finished_spans()[-1].attributes.get("tollway.cache.similarity")  # type: ignore[union-attr]


def runtime(cfg: GatewayConfig) -> Runtime:
    return Runtime(CompiledConfig.build(cfg), max_request_bytes=1 << 20)


async def test_a_paraphrase_is_served_from_its_partition(mock_url: str) -> None:
    rt = runtime(config(mock_url))
    call = Call(rt)
    first = await call.ask("what is the capital of france", "r1")
    assert first.lookup.outcome == "MISS" and first.semantic is not None and first.semantic.vector is not None
    assert call.similarity() is None  # nothing stored yet to compare with
    hit = await call.ask("What is the capital city of France?", "r2")
    assert hit.lookup.outcome == "SEMANTIC_HIT"
    assert hit.entry is not None and b"Paris." in hit.entry.to_json()
    assert 0.9 <= call.similarity() < 1.0
    unrelated = await call.ask("how do I bake sourdough bread at home", "r3")
    assert unrelated.lookup.outcome == "MISS"
    assert call.similarity() < 0.5  # compared, and below the threshold
    await rt.quota.drain()
    spend = await spend_snapshot(rt.quota, rt.compiled.config)
    used = spend["keys"]["default/a"]
    assert used["requests"] == 3  # the three embeddings calls (the chat calls were never admitted here)
    assert Decimal(used["spent_usd"]) > 0
    await rt.cache.close()


async def test_an_exact_repeat_is_an_exact_hit_without_embedding(mock_url: str) -> None:
    rt = runtime(config(mock_url))
    call = Call(rt)
    await call.ask("what is the capital of france", "r1")
    again = await call.ask("what is the capital of france", "r2")
    assert again.lookup.outcome == "HIT" and again.semantic is None
    await rt.cache.close()


async def test_a_refresh_embeds_for_the_store_but_never_serves(mock_url: str) -> None:
    rt = runtime(config(mock_url))
    call = Call(rt)
    await call.ask("what is the capital of france", "r1")
    fresh = await call.ask("What is the capital city of France?", "r2", {"x-tollway-cache": "refresh"})
    assert fresh.lookup.outcome == "REFRESH" and fresh.entry is None
    assert fresh.semantic is not None and fresh.semantic.vector is not None  # indexed when filled
    await rt.cache.close()


async def test_an_embeddings_backend_that_fails_leaves_exact_matching(mock_url: str) -> None:
    rt = runtime(config(mock_url, embed_url="http://127.0.0.1:9"))  # nothing listens on port 9
    call = Call(rt)
    await call.ask("what is the capital of france", "r1")
    second = await call.ask("What is the capital city of France?", "r2")
    assert second.lookup.outcome == "MISS" and second.semantic is not None and second.semantic.vector is None
    await rt.quota.drain()
    spend = await spend_snapshot(rt.quota, rt.compiled.config)
    assert Decimal(spend["keys"]["default/a"]["spent_usd"]) == 0  # nothing reached: nothing charged
    await rt.cache.close()


async def test_a_key_over_its_limits_is_matched_exactly_only(mock_url: str) -> None:
    limited = KEY.model_copy(update={"limits": Limits(requests_per_minute=1)})
    rt = runtime(config(mock_url, key=limited))
    call = Call(rt, limited)
    await call.ask("what is the capital of france", "r1")  # its embeddings call is the one request
    second = await call.ask("What is the capital city of France?", "r2")
    assert second.lookup.outcome == "MISS" and second.semantic is not None and second.semantic.vector is None
    await rt.cache.close()


async def test_a_store_that_is_down_embeds_nothing(mock_url: str) -> None:
    store = RedisCacheStore("redis://127.0.0.1:9/0")  # nothing listens on port 9: the store is down
    rt = Runtime(CompiledConfig.build(config(mock_url)), max_request_bytes=1 << 20, cache=Coalescer(store))
    call = Call(rt)
    found = await call.ask("what is the capital of france", "r1")
    assert found.lookup.outcome == "BYPASS" and found.lookup.unavailable and found.semantic is None
    await rt.quota.drain()
    spend = await spend_snapshot(rt.quota, rt.compiled.config)
    assert spend["keys"]["default/a"]["requests"] == 0  # no embeddings call was made or charged
    await rt.cache.close()


async def test_a_call_that_waited_for_a_fill_is_not_embedded(mock_url: str) -> None:
    rt = runtime(config(mock_url))
    route = rt.compiled.routes_by_model["chat"]

    async def look(rid: str) -> cache_call.CacheCall:
        state = RequestState(request_id=rid, operation="chat", path="/v1/chat/completions", key=KEY)
        state.client_model = "chat"
        found = await cache_call.look_up(rt, state, route, {}, copy.deepcopy(BODY))
        assert found is not None
        return found

    leader = await look("r1")  # leads the fill of the exact key, and is embedded
    assert leader.lookup.fill is not None and leader.semantic is not None
    waiter = asyncio.create_task(look("r2"))
    await asyncio.sleep(0.05)
    await leader.lookup.fill.abandon()  # the leader's call failed: the waiter goes upstream
    waited = await waiter
    assert waited.lookup.waited and waited.lookup.outcome == "MISS" and waited.semantic is None
    await rt.quota.drain()
    spend = await spend_snapshot(rt.quota, rt.compiled.config)
    assert spend["keys"]["default/a"]["requests"] == 1  # the leader's embeddings call only
    await rt.cache.close()
