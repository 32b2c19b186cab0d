"""The sidecar's own embeddings call: the last user message of a Semantic call, embedded over HTTP.

An OpenAI-compatible `POST /v1/embeddings` to the embeddings route's first backend, with that
backend's path, credential and model (its adapter's `request`, as a client's call is rewritten).
It is made by the sidecar, not through Envoy, because it happens while Envoy waits for the request
body's reply. Every failure (timeout, status, a body without one finite vector) is
`EmbeddingFailed`: the call is then matched exactly only.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from typing import Any

import aiohttp

from tollway_sidecar.cache.vectors import Vector, unit
from tollway_sidecar.config.models import Backend, Route
from tollway_sidecar.providers.adapters.base import AttemptRequest
from tollway_sidecar.providers.adapters.registry import adapter_for
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
        adapter = adapter_for("embeddings", backend.provider, backend.model)
        if adapter is None:
            raise EmbeddingFailed(f"{backend.name} ({backend.provider}) serves no embeddings")
        upstream = adapter.request(
            AttemptRequest(
                backend=backend,
                client_path="/v1/embeddings",
                client_headers={},
                body=body,
                raw=None,
                credential=backend.credential,
                now=time.time(),
                stream=False,
            )
        )
        url = f"{backend.scheme}://{backend.authority}{upstream.path}"
        headers = {**upstream.set_headers, "content-type": "application/json"}
        try:
            async with self._client().post(
                url,
                data=upstream.body if upstream.body is not None else json.dumps(body).encode(),
                headers=headers,
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
