"""Semantic matching of a call after its exact lookup missed: embed, search its partition, serve.

The last user message is embedded through the route's embeddings route (`cache.embed`), charged to
the calling key like an embeddings call of its own: the quota gate admits it against the key's
limits and budgets and settles it at its price, so `/spend` counts its request, tokens and cost,
and its settle appends its own usage event, so the ledger sees what `/spend` charged. The key's
limits refusing it, the embeddings backend failing or the vector store failing all leave the call
matched exactly only: semantic matching never fails a call. On a miss the vector rides on the call
and is stored beside the entry once the entry is.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Final

from tollway_sidecar.cache import Api, CacheDecision, CacheEntry, CacheUnavailable, Coalescer, Fill, Lookup
from tollway_sidecar.cache.embed import EmbeddingFailed
from tollway_sidecar.cache.semantic_key import SemanticQuery, semantic_query
from tollway_sidecar.cache.vectors import Vector
from tollway_sidecar.config.models import CacheSettings, Route, SemanticCache
from tollway_sidecar.extproc import usage_record
from tollway_sidecar.extproc.state import RequestState
from tollway_sidecar.quota.decision import Denial
from tollway_sidecar.quota.gate import Admission
from tollway_sidecar.runtime import Runtime

__all__ = ["EMBED_TIMEOUT_S", "SemanticLookup", "after_exact", "complete", "search"]

log = logging.getLogger("tollway.cache")

# Inside the request body's reply, which Envoy waits for at most 2 s (limits.MESSAGE_TIMEOUT_MS).
EMBED_TIMEOUT_S: Final = 1.0


@dataclass(frozen=True, slots=True)
class SemanticLookup:
    query: SemanticQuery
    vector: Vector | None = None  # what a miss stores beside its entry
    entry: CacheEntry | None = None  # a hit
    similarity: float | None = None  # the nearest stored vector's, hit or not


async def after_exact(
    runtime: Runtime,
    state: RequestState,
    route: Route,
    settings: CacheSettings,
    decision: CacheDecision,
    lookup: Lookup,
    api: Api,
    body: Mapping[str, Any],
) -> tuple[Lookup, SemanticLookup | None]:
    """The call's lookup after its exact one: a SEMANTIC_HIT, or the exact outcome and what a miss
    stores beside its entry (None: nothing to compare, the call is matched exactly only)."""
    # Not when the store is down (a bypass): nothing could be found or stored, so embedding is waste.
    # Not after waiting for another call's fill: the wait used the time Envoy gives this reply.
    searchable = lookup.entry is None and not lookup.unavailable and not lookup.waited
    searchable = searchable and (decision.read or lookup.fill is not None)
    semantic = settings.semantic
    if semantic is None or not decision.active or not searchable or state.key is None:
        return lookup, None
    query = semantic_query(
        api=api,
        partition=settings.partition,
        key=state.key,
        route_id=route.id,
        client_model=state.client_model,
        path=state.path,
        body=body,
        extra_parts=decision.partition_parts,
    )
    if query is None:
        return lookup, None
    found = await search(runtime, state, semantic, decision, query)
    if found.similarity is not None and state.span is not None and state.span.is_recording():
        state.span.set_attribute("tollway.cache.similarity", round(found.similarity, 6))
    if found.entry is None:
        return lookup, found
    if lookup.fill is not None:  # this call stores nothing: let the exact key's waiters go on
        runtime.cache_soon(lookup.fill.abandon())
    return Lookup("SEMANTIC_HIT", found.entry), found


def _embedding_route(runtime: Runtime, route_id: str) -> Route | None:
    return next((r for r in runtime.compiled.config.routes if r.id == route_id), None)


async def _embed(runtime: Runtime, state: RequestState, route: Route, text: str) -> Vector | None:
    """The text's vector, metered to the calling key; None when it may not or could not be had."""
    assert state.key is not None
    body = {"model": route.model, "input": text}
    admission = await runtime.quota.admit(
        key=state.key,
        budgets=runtime.compiled.budgets,
        route=route,
        prices=runtime.compiled.prices,
        operation="embeddings",
        body=body,
        user=state.end_user,
        rid=f"{state.request_id}-embed",
    )
    if isinstance(admission, Denial):
        log.debug("semantic lookup of %s skipped: %s", state.request_id, admission.message)
        return None
    call = _embedding_call(state, route, admission)
    price = None
    vector: Vector | None = None
    try:
        embedding = await runtime.cache.embedder.embed(route, text, timeout_s=EMBED_TIMEOUT_S)
    except EmbeddingFailed as exc:
        log.warning("semantic lookup of %s skipped: embeddings route %s: %s", state.request_id, route.id, exc)
        call.status = 502
    else:
        price = runtime.compiled.prices.price_for(route.id, embedding.backend.name)
        usage = embedding.usage
        call.status, call.backend, call.usage, vector = 200, embedding.backend, usage, embedding.vector
        call.cost = price.cost(usage) if price is not None and usage is not None else None
    runtime.quota.settle_soon(
        admission,
        usage=call.usage,
        cost=call.cost,
        status=call.status,
        reached_backend=call.backend is not None,
        stream=None,
        price=price,
        event=usage_record.settle_event(call, price, source=runtime.replica),
    )
    return vector


def _embedding_call(state: RequestState, route: Route, admission: Admission) -> RequestState:
    """The embedding call as a call of its own, for its usage event: the caller's key, end user,
    session and properties, in the caller's trace."""
    return RequestState(
        request_id=f"{state.request_id}-embed",
        envoy_request_id=f"{state.envoy_request_id}-embed" if state.envoy_request_id else "",
        operation="embeddings",
        path="/v1/embeddings",
        key=state.key,
        end_user=state.end_user,
        route=route,
        client_model=route.model,
        quota=admission,
        span=state.span,
        session=state.session,
        session_path=state.session_path,
        session_name=state.session_name,
        properties=dict(state.properties),
    )


async def search(
    runtime: Runtime,
    state: RequestState,
    semantic: SemanticCache,
    decision: CacheDecision,
    query: SemanticQuery,
) -> SemanticLookup:
    """Embed the call's text and, if it reads the cache, serve the nearest entry of its partition
    at or above the threshold."""
    route = _embedding_route(runtime, semantic.embedding_route)
    if route is None:  # the compiler never publishes this; a config swap mid-call could
        return SemanticLookup(query)
    vector = await _embed(runtime, state, route, query.text)
    if vector is None or not decision.read:
        return SemanticLookup(query, vector)
    cache = runtime.cache
    try:
        match = await cache.vectors.nearest(query.partition, vector, cache.clock())
        if match is None:
            return SemanticLookup(query, vector)
        if Decimal(match.similarity) < semantic.threshold:
            return SemanticLookup(query, vector, similarity=match.similarity)
        entry = await cache.store.get(match.entry_id, cache.clock())
    except CacheUnavailable as exc:
        log.warning("semantic lookup bypassed: %s", exc)
        return SemanticLookup(query, vector)
    max_age_s = decision.max_age_s  # Cache-Control: max-age bounds a semantic hit as an exact one
    if entry is not None and max_age_s is not None and cache.clock() - entry.created_ms > max_age_s * 1000:
        entry = None
    return SemanticLookup(query, vector, entry, match.similarity)


async def complete(cache: Coalescer, fill: Fill, entry: CacheEntry, found: SemanticLookup | None) -> None:
    """End a miss's fill with its entry, then store its vector: a vector is never stored for an
    entry the store did not keep (a search finding it would only miss)."""
    stored = await fill.complete(entry)
    if not stored or found is None or found.vector is None:
        return
    try:
        await cache.vectors.add(found.query.partition, fill.key, found.vector, fill.ttl_ms, cache.clock())
    except CacheUnavailable as exc:
        log.warning("semantic vector not stored: %s", exc)
