"""The flat-rate shortcut for catalogue prices gives exactly what genai-prices' `calc_price` gives."""

from __future__ import annotations

import random
import zlib
from decimal import Decimal, localcontext

import pytest
from genai_prices import data_snapshot

from tollway_sidecar import pricing
from tollway_sidecar.providers.usage import TokenUsage


def _catalogue_prices() -> list[tuple[str, object]]:
    out = []
    for provider in data_snapshot.get_snapshot().providers:
        for model in provider.models:
            listed = model.prices if isinstance(model.prices, list) else None
            for index, entry in enumerate(listed or [model.prices]):
                out.append((f"{provider.id}/{model.id}#{index}", entry.prices if listed else entry))
    return out


PRICES = _catalogue_prices()
FLAT = [(name, p) for name, p in PRICES if pricing._flat_rates(p) is not None]


def _usages(seed: int, count: int) -> list[TokenUsage]:
    rng = random.Random(seed)
    edge = [
        TokenUsage(0, 0),
        TokenUsage(1, 1),
        TokenUsage(1000, 0, cache_read_tokens=1000),
        TokenUsage(10, 5, cache_read_tokens=50, cache_write_tokens=50),  # inconsistent: bounded
        TokenUsage(100, 10, cache_write_tokens=40, cache_write_1h_tokens=90),
        TokenUsage(100, 10, reasoning_tokens=30),
        TokenUsage(100, 10, reasoning_tokens=300),
    ]
    out = list(edge)
    for _ in range(count):
        inputs = rng.choice([0, 1, 7, 999, 12_345, 1_000_000, rng.randrange(0, 2_000_000)])
        outputs = rng.choice([0, 1, 3, 4096, rng.randrange(0, 200_000)])
        read = rng.choice([0, 0, rng.randrange(0, inputs + 2)])
        write = rng.choice([0, 0, rng.randrange(0, inputs + 2)])
        write_1h = rng.choice([0, rng.randrange(0, write + 2)])
        reasoning = rng.choice([0, 0, rng.randrange(0, outputs + 2)])
        out.append(
            TokenUsage(
                inputs,
                outputs,
                cache_read_tokens=read,
                cache_write_tokens=write,
                cache_write_1h_tokens=write_1h,
                reasoning_tokens=reasoning,
            )
        )
    return out


def _genai(prices: object, usage: TokenUsage) -> Decimal:
    with localcontext(pricing._EXACT):
        total: Decimal = prices.calc_price(pricing._catalog_usage(usage))["total_price"]  # type: ignore[attr-defined]
    return total


def test_most_catalogue_prices_are_flat() -> None:
    assert len(FLAT) > len(PRICES) // 2
    keys = {k for _, p in FLAT for k in pricing._flat_rates(p) or {}}
    # Every kind of token price the shortcut handles is exercised by some catalogue price.
    assert keys == pricing._FLAT_KEYS | pricing._UNUSED_KEYS


@pytest.mark.parametrize(("name", "prices"), FLAT, ids=[name for name, _ in FLAT])
def test_flat_cost_equals_genai_prices(name: str, prices: object) -> None:
    rates = pricing._flat_rates(prices)
    assert rates is not None
    for usage in _usages(zlib.crc32(name.encode()), 25):
        ours = pricing._flat_cost(rates, usage)
        theirs = _genai(prices, usage)
        assert ours == theirs, (name, usage)
        assert ours.as_tuple() == theirs.as_tuple(), (name, usage)  # the same digits and exponent
        assert pricing.format_usd(ours) == pricing.format_usd(theirs)


def test_tiered_and_other_prices_go_through_genai_prices() -> None:
    others = [p for _, p in PRICES if pricing._flat_rates(p) is None]
    assert others  # tiers, audio, images, requests...
    for prices in others:
        values = {k: v for k, v in vars(prices).items() if not k.startswith("_") and v is not None}
        allowed = pricing._FLAT_KEYS | pricing._UNUSED_KEYS
        assert not (set(values) <= allowed and all(type(v) is Decimal for v in values.values()))
