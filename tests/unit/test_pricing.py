"""Pricing: declared prices to the last digit, catalogue prices equal to genai-prices' own numbers."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from fractions import Fraction
from pathlib import Path

import genai_prices
import pytest

from tollway_sidecar.config.models import Backend, GatewayConfig, Pricing, Provider, Route
from tollway_sidecar.pricing import (
    BackendPrice,
    PriceBook,
    catalog_model,
    format_usd,
    has_catalog_price,
    resolve_price,
)
from tollway_sidecar.providers.usage import SseParser, TokenUsage, parse_json

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "responses"
AT = datetime(2026, 6, 1, tzinfo=UTC)


def backend(provider: str, model: str, pricing: Pricing | None = None, name: str = "b") -> Backend:
    return Backend.model_validate(
        {
            "name": name,
            "provider": provider,
            "model": model,
            "base_url": "https://example.test",
            "pricing": pricing,
        }
    )


def price(provider: str, model: str, pricing: Pricing | None = None) -> BackendPrice:
    resolved = resolve_price(backend(provider, model, pricing))
    assert resolved is not None
    return resolved


def genai_cost(body: dict[str, object], provider_id: str, api_flavor: str) -> Decimal:
    """genai-prices' own answer: its extractor on the raw body, its calc_price."""
    extracted = genai_prices.extract_usage(body, provider_id=provider_id, api_flavor=api_flavor)
    total: Decimal = extracted.calc_price(genai_request_timestamp=AT).total_price
    return total


def body(name: str) -> dict[str, object]:
    loaded: dict[str, object] = json.loads((FIXTURES / name).read_bytes())
    return loaded


# --------------------------------------------------------------------------------------------------
# Catalogue prices


def test_gpt_4o_mini_with_cached_tokens_matches_genai_prices() -> None:
    raw = (FIXTURES / "openai_cached_completion.json").read_bytes()
    parsed = parse_json("openai", raw)
    assert parsed.usage is not None and parsed.model is not None
    cost = price("openai", parsed.model).cost(parsed.usage, at=AT)
    assert cost == genai_cost(json.loads(raw), "openai", "chat")
    # 86 uncached x $0.15 + 1920 cached x $0.075 + 300 output x $0.60, per million.
    assert cost == Decimal("0.0003369")
    assert isinstance(cost, Decimal)


def test_o_series_reasoning_tokens_are_output_tokens() -> None:
    raw = (FIXTURES / "openai_reasoning_completion.json").read_bytes()
    parsed = parse_json("openai", raw)
    assert parsed.usage is not None and parsed.model is not None
    o4_mini = price("openai", parsed.model)
    assert o4_mini.catalog_id == "o4-mini"
    cost = o4_mini.cost(parsed.usage, at=AT)
    assert cost == genai_cost(json.loads(raw), "openai", "chat")
    # 86 x $1.10 + 1280 cached x $0.275 + 2186 output (1792 of them reasoning, billed once) x $4.40.
    assert cost == Decimal("0.010065")


def test_streamed_usage_prices_like_the_whole_response() -> None:
    parser = SseParser("openai", strip_usage_chunk=True)
    parser.feed((FIXTURES / "openai_reasoning_stream.sse").read_bytes())
    streamed = parser.finish()
    assert streamed.usage is not None
    assert price("openai", "o4-mini").cost(streamed.usage, at=AT) == Decimal("0.010065")


def test_claude_cache_writes_at_the_write_price() -> None:
    raw = (FIXTURES / "anthropic_message_cached.json").read_bytes()
    parsed = parse_json("anthropic", raw)
    assert parsed.usage is not None and parsed.model is not None
    cost = price("anthropic", parsed.model).cost(parsed.usage, at=AT)
    assert cost == genai_cost(json.loads(raw), "anthropic", "default")
    # 21 x $3 + 188086 written x $3.75 + 393 x $15, per million.
    assert cost == Decimal("0.7112805")


def test_claude_cache_reads_at_the_read_price() -> None:
    raw = body("anthropic_message_cached.json")
    raw["usage"] = {"input_tokens": 21, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 188086,
                    "output_tokens": 393}  # fmt: skip
    parsed = parse_json("anthropic", json.dumps(raw).encode())
    assert parsed.usage == TokenUsage(188107, 393, cache_read_tokens=188086)
    cost = price("anthropic", "claude-sonnet-4-20250514").cost(parsed.usage, at=AT)
    assert cost == genai_cost(raw, "anthropic", "default")
    # 21 x $3 + 188086 read x $0.30 + 393 x $15, per million.
    assert cost == Decimal("0.0623838")


def test_claude_one_hour_cache_writes() -> None:
    raw = body("anthropic_message_cached.json")
    raw["usage"] = {
        "input_tokens": 21,
        "cache_creation_input_tokens": 188086,
        "cache_creation": {"ephemeral_5m_input_tokens": 88086, "ephemeral_1h_input_tokens": 100000},
        "cache_read_input_tokens": 0,
        "output_tokens": 393,
    }
    parsed = parse_json("anthropic", json.dumps(raw).encode())
    assert parsed.usage is not None
    cost = price("anthropic", "claude-sonnet-4-20250514").cost(parsed.usage, at=AT)
    assert cost == genai_cost(raw, "anthropic", "default")
    # 21 x $3 + 88086 x $3.75 + 100000 x $6 (one-hour writes) + 393 x $15, per million.
    assert cost == Decimal("0.9362805")


def test_tiered_prices_follow_genai_prices() -> None:
    # claude-sonnet-4-5 charges every token at a higher rate once the prompt passes 200k tokens.
    for input_tokens in (150_000, 250_000):
        raw = {
            "model": "claude-sonnet-4-5-20250929",
            "usage": {"input_tokens": input_tokens, "cache_read_input_tokens": 1000, "output_tokens": 2000},
        }
        parsed = parse_json("anthropic", json.dumps(raw).encode())
        assert parsed.usage is not None
        cost = price("anthropic", "claude-sonnet-4-5-20250929").cost(parsed.usage, at=AT)
        assert cost == genai_cost(raw, "anthropic", "default")


def test_gemini_thought_tokens_are_billed_as_output() -> None:
    parsed = parse_json("gemini", (FIXTURES / "gemini_openai_completion.json").read_bytes())
    assert parsed.usage is not None
    gemini = price("gemini", "gemini-3-flash-preview")
    # 9 x $0.50 + (7 answer + 93 thought tokens) x $3.00, per million.
    assert gemini.cost(parsed.usage, at=AT) == Decimal("0.0003045")


def test_the_price_in_force_at_the_time_of_the_call() -> None:
    # OpenAI cut o3's prices on 2025-06-10.
    o3 = price("openai", "o3")
    usage = TokenUsage(1_000_000, 1_000_000)
    assert o3.cost(usage, at=datetime(2025, 6, 1, tzinfo=UTC)) == Decimal(50)
    assert o3.cost(usage, at=datetime(2025, 6, 11, tzinfo=UTC)) == Decimal(10)
    assert o3.cost(usage) == Decimal(10)  # now


def test_embeddings() -> None:
    parsed = parse_json("openai", (FIXTURES / "openai_embeddings.json").read_bytes())
    assert parsed.usage is not None
    assert price("openai", "text-embedding-ada-002").cost(parsed.usage, at=AT) == Decimal("0.0000008")


@pytest.mark.parametrize(
    ("provider", "model", "catalog_id"),
    [
        ("openai", "gpt-4o-mini-2024-07-18", "gpt-4o-mini"),
        ("azure-openai", "gpt-4o", "gpt-4o"),
        ("anthropic", "claude-3-7-sonnet-20250219", "claude-3-7-sonnet-latest"),
        ("gemini", "gemini-2.5-flash", "gemini-2.5-flash"),
        ("openai-compatible", "gpt-4o-mini", "gpt-4o-mini"),
    ],
)
def test_catalogue_lookup(provider: Provider, model: str, catalog_id: str) -> None:
    resolved = resolve_price(backend(provider, model))
    assert resolved is not None
    assert resolved.source == "catalog"
    assert resolved.catalog_id == catalog_id
    assert has_catalog_price(provider, model)


def test_unknown_models_have_no_price() -> None:
    assert resolve_price(backend("openai-compatible", "my-local-llama")) is None
    assert resolve_price(backend("openai", "no-such-model-xyz")) is None
    assert catalog_model("anthropic", "no-such-model-xyz") is None
    assert not has_catalog_price("openai-compatible", "my-local-llama")


# --------------------------------------------------------------------------------------------------
# Declared prices


def exact(pricing: Pricing, usage: TokenUsage) -> Fraction:
    """The declared-price formula in exact rational arithmetic."""
    cached = pricing.cached_input_per_million
    cached = pricing.input_per_million if cached is None else cached
    uncached = usage.input_tokens - usage.cache_read_tokens - usage.cache_write_tokens
    total = (
        uncached * Fraction(pricing.input_per_million)
        + usage.cache_read_tokens * Fraction(cached)
        + usage.cache_write_tokens * Fraction(pricing.input_per_million)
        + usage.output_tokens * Fraction(pricing.output_per_million)
    )
    return total / 1_000_000


def test_declared_pricing_arithmetic() -> None:
    pricing = Pricing(
        input_per_million=Decimal("2.5"),
        output_per_million=Decimal("10"),
        cached_input_per_million=Decimal("1.25"),
    )
    usage = TokenUsage(
        1_234_567, 89_123, cache_read_tokens=1_000_000, cache_write_tokens=7, reasoning_tokens=80_000
    )
    cost = price("openai", "gpt-4o", pricing).cost(usage)
    # 234,560 x 2.5 + 1,000,000 x 1.25 + 7 x 2.5 + 89,123 x 10 = 2,727,647.5 per million.
    assert cost == Decimal("2.7276475")
    assert Fraction(cost) == exact(pricing, usage)


def test_declared_pricing_is_exact_to_the_last_digit() -> None:
    # Products with more digits than Decimal's default 28-digit context holds.
    pricing = Pricing(
        input_per_million=Decimal("3.123456789012345678901234567"),
        output_per_million=Decimal("15.987654321098765432109876543"),
        cached_input_per_million=Decimal("0.000000000000000000000000001"),
    )
    usage = TokenUsage(
        987_654_321_987, 123_456_789_123, cache_read_tokens=555_555_555_555, cache_write_tokens=3
    )
    cost = price("openai", "gpt-4o", pricing).cost(usage)
    assert Fraction(cost) == exact(pricing, usage)
    text = format_usd(cost)
    assert "E" not in text and Decimal(text) == cost


def test_declared_pricing_without_a_cached_price_charges_cache_reads_as_input() -> None:
    pricing = Pricing(input_per_million=Decimal("0.4"), output_per_million=Decimal("1.6"))
    usage = TokenUsage(10_000, 1_000, cache_read_tokens=6_000)
    cost = price("openai-compatible", "my-local-llama", pricing).cost(usage)
    assert cost == Decimal("0.0056")  # (10,000 x 0.4 + 1,000 x 1.6) / 1e6
    assert Fraction(cost) == exact(pricing, usage)


def test_declared_prices_win_over_the_catalogue() -> None:
    pricing = Pricing(input_per_million=Decimal("1"), output_per_million=Decimal("2"))
    declared = price("openai", "gpt-4o-mini", pricing)
    assert declared.source == "declared"
    assert declared.declared == pricing
    assert declared.cost(TokenUsage(1_000_000, 1_000_000)) == Decimal(3)


def test_inconsistent_usage_is_bounded_not_rejected() -> None:
    # Cache counts larger than the input they are part of: priced as if they were all of it.
    usage = TokenUsage(100, 10, cache_read_tokens=300, cache_write_tokens=50)
    mini = price("openai", "gpt-4o-mini")
    assert mini.cost(usage, at=AT) == mini.cost(TokenUsage(100, 10, cache_read_tokens=100), at=AT)
    pricing = Pricing(input_per_million=Decimal("1"), output_per_million=Decimal("1"))
    assert price("openai", "x", pricing).cost(usage) == Decimal("0.00011")


# --------------------------------------------------------------------------------------------------
# The price book


def test_price_book() -> None:
    pricing = Pricing(input_per_million=Decimal("0.1"), output_per_million=Decimal("0.2"))
    config = GatewayConfig(
        routes=(
            Route(
                id="chat",
                name="chat",
                namespace="team-a",
                model="chat",
                backends=(
                    backend("openai", "gpt-4o-mini", name="primary"),
                    backend("azure-openai", "gpt-4o-mini", name="azure"),
                    backend("openai-compatible", "my-local-llama", name="local"),
                    backend("openai-compatible", "my-local-llama", pricing, name="local-priced"),
                ),
            ),
            Route(
                id="chat-b",
                name="chat-b",
                namespace="team-b",
                model="chat",
                backends=(backend("openai", "gpt-4o-mini", name="primary"),),
            ),
        )
    )
    book = PriceBook(config)
    primary = book.price_for("chat", "primary")
    assert primary is not None and primary.catalog_id == "gpt-4o-mini"
    assert book.price_for("chat-b", "primary") is primary  # resolved once per distinct backend
    azure = book.price_for("chat", "azure")
    assert azure is not None and azure.provider == "azure-openai"
    assert book.price_for("chat", "local") is None
    local_priced = book.price_for("chat", "local-priced")
    assert local_priced is not None and local_priced.source == "declared"
    assert book.price_for("chat", "missing") is None
    assert book.price_for("nope", "primary") is None
    assert book.unpriced == (("chat", "local"),)
    assert PriceBook(GatewayConfig()).unpriced == ()


# --------------------------------------------------------------------------------------------------
# Formatting


@pytest.mark.parametrize(
    ("amount", "text"),
    [
        (Decimal("0.000135"), "0.000135"),
        (Decimal("0"), "0"),
        (Decimal("0E-7"), "0"),
        (Decimal("-0.00"), "0"),
        (Decimal("1E-7"), "0.0000001"),
        (Decimal("1.35E-4"), "0.000135"),
        (Decimal("0.0003369"), "0.0003369"),
        (Decimal("1.50"), "1.5"),
        (Decimal("12.3400"), "12.34"),
        (Decimal("100"), "100"),
        (Decimal("1E+2"), "100"),
        (Decimal("2.7276475"), "2.7276475"),
        (Decimal("-0.25"), "-0.25"),
        (Decimal("0.7112805000000000000000000000000"), "0.7112805"),
    ],
)
def test_format_usd(amount: Decimal, text: str) -> None:
    assert format_usd(amount) == text
    assert Decimal(text) == amount


@pytest.mark.parametrize("amount", [Decimal("NaN"), Decimal("Infinity"), Decimal("-Infinity")])
def test_format_usd_rejects_non_finite(amount: Decimal) -> None:
    with pytest.raises(ValueError, match="finite"):
        format_usd(amount)


def test_format_usd_of_real_costs_has_no_exponent() -> None:
    tiny = price("openai", "text-embedding-3-small").cost(TokenUsage(1, 0), at=AT)
    assert tiny == Decimal("2E-8")
    assert format_usd(tiny) == "0.00000002"
