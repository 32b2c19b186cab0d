"""Prices for backends: `genai-prices` catalogue lookups, or the prices a backend declares.

A backend's price is resolved once, when a config is loaded (`PriceBook`); pricing a call is then pure
`Decimal` arithmetic, exact to the last digit, never a float.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Context, Decimal, localcontext
from typing import Any, Final, Literal

from genai_prices import Usage as CatalogUsage

from tollway_sidecar.config.models import Backend, GatewayConfig, Pricing, Provider
from tollway_sidecar.contract.catalog import GENAI_PROVIDER_IDS, catalog_model, has_catalog_price
from tollway_sidecar.contract.money import format_usd
from tollway_sidecar.providers.usage import TokenUsage

__all__ = [
    "GENAI_PROVIDER_IDS",
    "BackendPrice",
    "PriceBook",
    "catalog_model",
    "format_usd",
    "has_catalog_price",
    "resolve_price",
]

_MILLION: Final = Decimal(1_000_000)
# Wide enough that no product or sum of token counts and per-million prices is ever rounded.
_EXACT: Final = Context(prec=100)


@dataclass(frozen=True, slots=True)
class BackendPrice:
    """How one backend's calls are priced: its declared `Pricing`, or a genai-prices catalogue model.

    Build it with `resolve_price`. `cost` is exact USD.
    """

    provider: Provider
    model: str
    source: Literal["declared", "catalog"]
    declared: Pricing | None = None
    catalog: Any = field(default=None, compare=False, repr=False)  # genai_prices.types.ModelInfo
    catalog_id: str | None = None  # the catalogue's model id, e.g. "gpt-4o-mini"

    def cost(self, usage: TokenUsage, *, at: datetime | None = None) -> Decimal:
        """The USD price of `usage`. `at` (default: now) selects the catalogue price in force then."""
        if self.declared is not None:
            return _declared_cost(self.declared, usage)
        prices = self.catalog.get_prices(at or datetime.now(tz=UTC))
        rates = _flat_rates(prices)
        if rates is not None:
            return _flat_cost(rates, usage)
        with localcontext(_EXACT):
            total: Decimal = prices.calc_price(_catalog_usage(usage))["total_price"]
        return total


def _declared_cost(pricing: Pricing, usage: TokenUsage) -> Decimal:
    """Uncached input at the input price, cache reads at the cached price (the input price if none is
    declared), cache writes at the input price, output (reasoning included) at the output price."""
    read, write = _cache_parts(usage)
    uncached = usage.input_tokens - read - write
    cached_price = pricing.cached_input_per_million
    if cached_price is None:
        cached_price = pricing.input_per_million
    with localcontext(_EXACT):
        total = (
            uncached * pricing.input_per_million
            + read * cached_price
            + write * pricing.input_per_million
            + usage.output_tokens * pricing.output_per_million
        )
        return total / _MILLION


def _cache_parts(usage: TokenUsage) -> tuple[int, int]:
    """Cache reads and writes, bounded so that they never exceed the input they are part of."""
    read = min(usage.cache_read_tokens, usage.input_tokens)
    write = min(usage.cache_write_tokens, usage.input_tokens - read)
    return read, write


# The catalogue's per-million token prices a flat price may have; any other (tiers, audio, images,
# requests, searches) goes through genai-prices itself.
_FLAT_KEYS: Final = frozenset(
    (
        "input_mtok",
        "cache_read_mtok",
        "cache_write_mtok",
        "cache_write_1h_mtok",
        "output_mtok",
        "output_reasoning_mtok",
    )
)
# Prices of things a call through the gateway never reports (searches, per thousand): they add
# zero, as in genai-prices (where that zero can still lengthen the sum's exponent, so it is kept).
_UNUSED_KEYS: Final = frozenset(("web_searches_kcount", "storage_searches_kcount"))
_THOUSAND: Final = Decimal(1000)
# id(ModelPrice) -> (the ModelPrice, kept alive so that its id stays its own; its flat rates or None)
_flat_cache: dict[int, tuple[Any, dict[str, Decimal] | None]] = {}


def _flat_rates(prices: Any) -> dict[str, Decimal] | None:
    """A catalogue price's per-million rates by price key, when it is plain per-token prices (the
    usual case); None when genai-prices must price it. Computed once per catalogue price."""
    cached = _flat_cache.get(id(prices))
    if cached is not None and cached[0] is prices:
        return cached[1]
    values = {k: v for k, v in vars(prices).items() if not k.startswith("_") and v is not None}
    flat = set(values) <= _FLAT_KEYS | _UNUSED_KEYS and all(
        type(v) is Decimal and v.is_finite() and v >= 0 for v in values.values()
    )
    rates = values if flat else None
    _flat_cache[id(prices)] = (prices, rates)
    return rates


def _flat_cost(rates: dict[str, Decimal], usage: TokenUsage) -> Decimal:
    """What genai-prices' `calc_price` gives for plain per-token rates, without its decomposition:
    each token is priced at the most specific priced kind it belongs to (a cache read at the cache
    read price if there is one, else as input; reasoning at the reasoning price, else as output...).
    tests/unit/test_pricing_flat.py checks it against genai-prices for every such catalogue price."""
    read, write = _cache_parts(usage)
    write_1h = min(usage.cache_write_1h_tokens, write) if write else 0
    reasoning = min(usage.reasoning_tokens, usage.output_tokens)
    counts: dict[str, int] = {}
    input_leaf = usage.input_tokens
    if "cache_read_mtok" in rates:
        counts["cache_read_mtok"] = read
        input_leaf -= read
    if "cache_write_1h_mtok" in rates:
        counts["cache_write_1h_mtok"] = write_1h
    if "cache_write_mtok" in rates:
        counts["cache_write_mtok"] = write - (write_1h if "cache_write_1h_mtok" in rates else 0)
        input_leaf -= write
    elif "cache_write_1h_mtok" in rates:
        input_leaf -= write_1h
    counts["input_mtok"] = input_leaf
    output_leaf = usage.output_tokens
    if "output_reasoning_mtok" in rates:
        counts["output_reasoning_mtok"] = reasoning
        output_leaf -= reasoning
    counts["output_mtok"] = output_leaf
    total = Decimal(0)
    with localcontext(_EXACT):
        for key, rate in rates.items():
            if key in _UNUSED_KEYS:
                total += rate * 0 / _THOUSAND
            else:
                total += rate * Decimal(counts[key]) / _MILLION
    return total


def _catalog_usage(usage: TokenUsage) -> CatalogUsage:
    """genai-prices' Usage for a TokenUsage. Its keys nest like ours: cache reads and writes are part
    of `input_tokens`, one-hour writes part of `cache_write_tokens`, reasoning part of
    `output_tokens`; each part is priced at its own rate where the model has one, else with its
    parent."""
    read, write = _cache_parts(usage)
    values: dict[str, int] = {
        "input_tokens": usage.input_tokens,
        "output_tokens": usage.output_tokens,
    }
    if read:
        values["cache_read_tokens"] = read
    if write:
        values["cache_write_tokens"] = write
        if usage.cache_write_1h_tokens:
            values["cache_write_1h_tokens"] = min(usage.cache_write_1h_tokens, write)
    if usage.reasoning_tokens:
        values["output_reasoning_tokens"] = min(usage.reasoning_tokens, usage.output_tokens)
    return CatalogUsage(**values)


def resolve_price(backend: Backend) -> BackendPrice | None:
    """The price of a backend: its declared `pricing`, else the genai-prices catalogue's; None when
    neither knows the model."""
    if backend.pricing is not None:
        return BackendPrice(backend.provider, backend.model, "declared", declared=backend.pricing)
    info = catalog_model(backend.provider, backend.model)
    if info is None:
        return None
    return BackendPrice(backend.provider, backend.model, "catalog", catalog=info, catalog_id=info.id)


class PriceBook:
    """Every backend's price in a config, resolved once when the config is loaded."""

    __slots__ = ("_prices",)

    def __init__(self, config: GatewayConfig) -> None:
        resolved: dict[tuple[Provider, str, Pricing | None], BackendPrice | None] = {}
        prices: dict[tuple[str, str], BackendPrice | None] = {}
        for route in config.routes:
            for backend in route.backends:
                key = (backend.provider, backend.model, backend.pricing)
                if key not in resolved:
                    resolved[key] = resolve_price(backend)
                prices[(route.id, backend.name)] = resolved[key]
        self._prices = prices

    def price_for(self, route_id: str, backend_name: str) -> BackendPrice | None:
        """The backend's price; None when it has none or the route/backend is unknown."""
        return self._prices.get((route_id, backend_name))

    @property
    def unpriced(self) -> tuple[tuple[str, str], ...]:
        """(route id, backend name) of every backend without a price, for warnings and status."""
        return tuple(key for key, price in self._prices.items() if price is None)
