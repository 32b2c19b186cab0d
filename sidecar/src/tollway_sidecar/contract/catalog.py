"""Which backends the `genai-prices` catalogue can price: the compiler rejects a backend the sidecar
could not price, so both must ask the catalogue the same question."""

from __future__ import annotations

from typing import Any

from genai_prices import data_snapshot

from tollway_sidecar.config.models import Provider

__all__ = ["GENAI_PROVIDER_IDS", "catalog_model", "has_catalog_price"]

# Our provider names → genai-prices provider ids (None: let genai-prices infer from the model name).
GENAI_PROVIDER_IDS: dict[str, str | None] = {
    "openai": "openai",
    "azure-openai": "azure",
    "anthropic": "anthropic",
    "gemini": "google",
    "bedrock": "aws",
    "vertex": "google",  # genai-prices lists Vertex's Gemini and Claude models under Google
    "openai-compatible": None,
}


def catalog_model(provider: Provider, model: str) -> Any | None:
    """The genai-prices ModelInfo for a backend's model, or None when the catalogue has no price."""
    snapshot = data_snapshot.get_snapshot()
    try:
        _provider, info = snapshot.find_provider_model(model, None, GENAI_PROVIDER_IDS[provider], None)
    except LookupError:
        return None
    return info


def has_catalog_price(provider: Provider, model: str) -> bool:
    return catalog_model(provider, model) is not None
