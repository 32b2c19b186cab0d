"""The sidecar's own embeddings call: the last user message of a Semantic call, embedded over HTTP.

An OpenAI-compatible `POST /v1/embeddings` to the embeddings route's first backend, with that
backend's path, credential and model (`providers.upstream`, as a client's call would be rewritten).
It is made by the sidecar, not through Envoy, because it happens while Envoy waits for the request
body's reply. Every failure (timeout, status, a body without one finite vector) is
`EmbeddingFailed`: the call is then matched exactly only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import aiohttp

from tollway_sidecar.cache.vectors import Vector, unit
from tollway_sidecar.config.models import Backend, Route
from tollway_sidecar.providers.upstream import request_body, request_headers
from tollway_sidecar.providers.usage import TokenUsage

__all__ = ["Embedder", "Embedding", "EmbeddingFailed"]


class EmbeddingFailed(Exception):
    """The embeddings call gave no vector; the message says why (never the credential)."""


@dataclass(frozen=True, slots=True)
class Embedding:
    vector: Vector  # unit length
    usage: TokenUsage | None  # None when the backend reported none
    backend: Backend


def _usage(reply: dict[str, Any]) -> TokenUsage | None:
    usage = reply.get("usage")
    tokens = usage.get("prompt_tokens") if isinstance(usage, dict) else None
    if isinstance(tokens, int) and not isinstance(tokens, bool) and tokens >= 0:
        return TokenUsage(input_tokens=tokens, output_tokens=0)
    return None


def _vector(reply: Any) -> Vector:
    data = reply.get("data") if isinstance(reply, dict) else None
    first = data[0] if isinstance(data, list) and len(data) == 1 and isinstance(data[0], dict) else {}
    values = first.get("embedding")
    if not isinstance(values, list) or not all(
        isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in values
    ):
        raise EmbeddingFailed("the embeddings answer has no vector of numbers")
    vector = unit([float(v) for v in values])
    if vector is None:
        raise EmbeddingFailed("the embeddings answer's vector is empty or zero")
    return vector


class Embedder:
    """One HTTP client per process (its connections are kept alive between calls)."""

    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession()
        return self._session

    async def embed(self, route: Route, text: str, *, timeout_s: float) -> Embedding:
        backend = route.backends[0]
        body: dict[str, Any] = {"model": route.model, "input": text, "encoding_format": "float"}
        body = request_body(backend, "embeddings", body) or body
        upstream = request_headers(backend, "embeddings", "/v1/embeddings", {})
        url = f"{backend.scheme}://{backend.authority}{upstream.path}"
        try:
            async with self._client().post(
                url,
                json=body,
                headers=upstream.set_headers,
                timeout=aiohttp.ClientTimeout(total=timeout_s),
            ) as response:
                if response.status != 200:
                    raise EmbeddingFailed(f"{backend.name} answered {response.status}")
                reply = await response.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise EmbeddingFailed(f"{backend.name}: {type(exc).__name__}") from exc
        return Embedding(_vector(reply), _usage(reply) if isinstance(reply, dict) else None, backend)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
