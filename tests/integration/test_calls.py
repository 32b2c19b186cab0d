"""Calls through the real gateway with the official openai SDK: answers, headers, cost, spend."""

from __future__ import annotations

import base64
from collections.abc import Callable
from decimal import Decimal

import openai
import pytest
from gateway_env import DEMO_KEY, RESTRICTED_KEY, Gateway
from genai_prices import Usage, calc_price

MESSAGES = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Say hello to the gateway"},
]


def catalogue_cost(model: str, prompt: int, completion: int, cached: int = 0) -> Decimal:
    """The price genai-prices itself gives, to check the gateway's arithmetic independently."""
    usage = Usage(input_tokens=prompt, output_tokens=completion, cache_read_tokens=cached)
    return Decimal(calc_price(usage, model, provider_id="openai").total_price)


def test_chat_completion_is_priced_to_the_token(
    gateway: Gateway, sdk_for: Callable[..., openai.OpenAI]
) -> None:
    raw = sdk_for().chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MESSAGES)
    completion = raw.parse()
    assert completion.object == "chat.completion"
    assert completion.choices[0].message.content
    usage = completion.usage
    assert usage is not None and usage.prompt_tokens > 0 and usage.completion_tokens > 0
    expected = catalogue_cost("gpt-4o-mini", usage.prompt_tokens, usage.completion_tokens)
    assert Decimal(raw.headers["x-tollway-cost-usd"]) == expected
    assert raw.headers["x-tollway-backend"] == "mock"
    assert len(raw.headers["x-request-id"]) >= 16


def test_cached_and_reasoning_tokens_are_priced_as_billed(
    gateway: Gateway, sdk_for: Callable[..., openai.OpenAI]
) -> None:
    raw = sdk_for().chat.completions.with_raw_response.create(
        model="gpt-4o-mini",
        messages=MESSAGES,
        extra_headers={
            "x-mock-prompt-tokens": "1000",
            "x-mock-cached-tokens": "600",
            "x-mock-completion-tokens": "50",
            "x-mock-reasoning-tokens": "30",
        },
    )
    usage = raw.parse().usage
    assert usage is not None and usage.prompt_tokens == 1000 and usage.completion_tokens == 50
    # 400 fresh input tokens at $0.15/M, 600 cached at $0.075/M, 50 output (reasoning included) at $0.60/M.
    expected = (
        Decimal(400) * Decimal("0.15") + Decimal(600) * Decimal("0.075") + Decimal(50) * Decimal("0.6")
    ) / (Decimal(1_000_000))
    assert (
        Decimal(raw.headers["x-tollway-cost-usd"]) == expected == catalogue_cost("gpt-4o-mini", 1000, 50, 600)
    )


def test_credentials_and_model_are_rewritten_and_the_client_key_never_leaves(
    gateway: Gateway, sdk_for: Callable[..., openai.OpenAI]
) -> None:
    gateway.clear_mock_requests()
    completion = sdk_for().chat.completions.create(model="smart", messages=MESSAGES)
    assert completion.choices[0].message.content
    seen = [r for r in gateway.mock_requests() if r["path"].endswith("/chat/completions")]
    assert len(seen) == 1
    upstream = seen[0]
    headers = {k.lower(): v for k, v in upstream["headers"].items()}
    assert headers["authorization"] == "Bearer sk-upstream-test-credential"
    assert upstream["body"]["model"] == "gpt-4o-mini"
    assert upstream["path"] == "/v1/chat/completions"
    assert DEMO_KEY not in repr(upstream)
    assert not any(name.startswith("x-tollway") for name in headers)


async def test_stream_hides_the_usage_chunk_it_asked_for(
    gateway: Gateway, sdk_for: Callable[..., openai.OpenAI], async_sdk: openai.AsyncOpenAI
) -> None:
    gateway.clear_mock_requests()
    stream = await async_sdk.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)
    chunks = [chunk async for chunk in stream]
    assert chunks and all(chunk.choices for chunk in chunks)
    assert all(chunk.usage is None for chunk in chunks)
    streamed_text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks)
    plain = sdk_for().chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert streamed_text == plain.choices[0].message.content
    upstream = next(r for r in gateway.mock_requests() if r["body"].get("stream"))
    assert upstream["body"]["stream_options"] == {"include_usage": True}


async def test_stream_keeps_the_usage_chunk_the_client_asked_for(
    gateway: Gateway, async_sdk: openai.AsyncOpenAI
) -> None:
    stream = await async_sdk.chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    )
    chunks = [chunk async for chunk in stream]
    assert chunks[-1].usage is not None and chunks[-1].choices == []
    assert chunks[-1].usage.completion_tokens > 0


def test_streamed_and_plain_calls_cost_the_same(
    gateway: Gateway, sdk_for: Callable[..., openai.OpenAI]
) -> None:
    def spent() -> Decimal:
        return Decimal(gateway.spend()["keys"]["default/demo"]["spent_usd"])

    before = spent()
    raw = sdk_for().chat.completions.with_raw_response.create(model="gpt-4o", messages=MESSAGES)
    plain_cost = Decimal(raw.headers["x-tollway-cost-usd"])
    assert spent() - before == plain_cost > 0

    before = spent()
    with sdk_for().chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True) as stream:
        for _chunk in stream:
            pass
    assert spent() - before == plain_cost


def test_embeddings_through_the_gateway(gateway: Gateway, sdk_for: Callable[..., openai.OpenAI]) -> None:
    sdk = sdk_for()
    default = sdk.embeddings.create(model="text-embedding-3-small", input=["one", "two words"])
    assert [item.index for item in default.data] == [0, 1]
    assert all(len(item.embedding) > 0 for item in default.data)
    raw = sdk.embeddings.with_raw_response.create(
        model="text-embedding-3-small", input="hello", encoding_format="base64"
    )
    payload = raw.parse()
    assert payload.usage.prompt_tokens > 0
    expected = Decimal(payload.usage.prompt_tokens) * Decimal("0.02") / Decimal(1_000_000)
    assert Decimal(raw.headers["x-tollway-cost-usd"]) == expected
    assert base64.b64decode(raw.http_response.json()["data"][0]["embedding"])


def test_models_lists_what_the_key_may_use(gateway: Gateway, sdk_for: Callable[..., openai.OpenAI]) -> None:
    demo = {model.id for model in sdk_for().models.list()}
    assert {"gpt-4o-mini", "gpt-4o", "text-embedding-3-small", "smart"} <= demo
    restricted = {model.id for model in sdk_for(RESTRICTED_KEY).models.list()}
    assert restricted == {"gpt-4o-mini"}


def test_spend_reports_exact_totals_per_key_and_budget(
    gateway: Gateway, sdk_for: Callable[..., openai.OpenAI]
) -> None:
    before = gateway.spend()
    costs = []
    for _ in range(3):
        raw = sdk_for(RESTRICTED_KEY).chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=MESSAGES
        )
        costs.append(Decimal(raw.headers["x-tollway-cost-usd"]))
    after = gateway.spend()
    key_before, key_after = before["keys"]["default/restricted"], after["keys"]["default/restricted"]
    assert Decimal(key_after["spent_usd"]) - Decimal(key_before["spent_usd"]) == sum(costs)
    assert key_after["requests"] - key_before["requests"] == 3
    assert "demo-monthly" in "".join(after["budgets"])
    budget = after["budgets"]["default/demo-monthly"]
    assert Decimal(budget["limit_usd"]) == Decimal("10")
    assert Decimal(budget["remaining_usd"]) == Decimal("10") - Decimal(budget["spent_usd"])


@pytest.mark.parametrize("model", ["gpt-4o-mini", "smart"])
def test_metrics_count_calls(gateway: Gateway, sdk_for: Callable[..., openai.OpenAI], model: str) -> None:
    sdk_for().chat.completions.create(model=model, messages=MESSAGES)
    text = gateway.metrics()
    assert 'tollway_requests_total{backend="' in text
    assert f'model="{model}"' in text
    assert DEMO_KEY not in text


async def test_async_chat_completion(gateway: Gateway, async_sdk: openai.AsyncOpenAI) -> None:
    raw = await async_sdk.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MESSAGES)
    completion = raw.parse()
    assert completion.choices[0].finish_reason == "stop"
    usage = completion.usage
    assert usage is not None
    assert Decimal(raw.headers["x-tollway-cost-usd"]) == catalogue_cost(
        "gpt-4o-mini", usage.prompt_tokens, usage.completion_tokens
    )
