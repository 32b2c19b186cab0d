"""The response cache part of the compile: `spec.cache` of RouteRules and VirtualKeys.

Pure, like the rest of the compiler. What a spec says on its own is checked by its model
(`resources.RouteCacheSpec`, `KeyCacheSpec`); what needs the other compiled resources is checked
here and reported as a warning, never an error: a cache that cannot be what was asked for is
narrowed (Semantic becomes Exact, a wider partition is ignored) and the resource is still served,
so that deleting an embeddings route never takes down the chat routes that name it.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from tollway_operator.resources import KeyCacheSpec, RouteCacheSpec
from tollway_sidecar.config.models import (
    DEFAULT_CACHE_MAX_TTL_S,
    DEFAULT_CACHE_TTL_S,
    PARTITION_ORDER,
    CacheSettings,
    KeyCache,
    Route,
    SemanticCache,
    VirtualKey,
    cache_for,
)

# Warning reasons. The first two are references (ResolvedRefs=False); none leaves a resource out.
EMBEDDING_ROUTE_NOT_FOUND = "EmbeddingRouteNotFound"
EMBEDDING_ROUTE_INVALID = "EmbeddingRouteInvalid"
SEMANTIC_UNAVAILABLE = "SemanticUnavailable"
PARTITION_NOT_NARROWED = "CachePartitionNotNarrowed"
CACHE_REFERENCE_REASONS = frozenset({EMBEDDING_ROUTE_NOT_FOUND, EMBEDDING_ROUTE_INVALID})
# Providers without an OpenAI-compatible embeddings endpoint cannot back an embeddings route.
_NO_EMBEDDINGS = frozenset({"anthropic"})
_LISTED = 3  # routes named in one warning; the rest are counted


@dataclass(frozen=True)
class CacheWarning:
    """A cache served narrower than written; `field` is the path in the resource (`spec.cache...`)."""

    namespace: str
    name: str
    field: str
    message: str
    reason: str


def route_cache(
    spec: RouteCacheSpec | None, namespace: str, route_id: Callable[[str, str], str]
) -> CacheSettings:
    """A RouteRule's `spec.cache` as written (the embeddings route is checked by `settle_routes`)."""
    if spec is None:
        return CacheSettings()
    # An unset lifetime takes its default, moved so that ttl <= maxTtl still holds.
    max_ttl = spec.max_ttl or max(DEFAULT_CACHE_MAX_TTL_S, spec.ttl or 0)
    ttl = spec.ttl or min(DEFAULT_CACHE_TTL_S, max_ttl)
    semantic = None
    if spec.semantic is not None:
        semantic = SemanticCache(
            embedding_route=route_id(namespace, spec.semantic.embedding_route),
            threshold=spec.semantic.threshold,
        )
    return CacheSettings(
        mode=spec.mode,
        ttl_s=ttl,
        max_ttl_s=max_ttl,
        max_entry_bytes=spec.max_entry_bytes or CacheSettings().max_entry_bytes,
        partition=spec.partition,
        semantic=semantic,
    )


def key_cache(spec: KeyCacheSpec | None) -> KeyCache | None:
    if spec is None:
        return None
    return KeyCache(
        mode=spec.mode, ttl_s=spec.ttl, max_entry_bytes=spec.max_entry_bytes, partition=spec.partition
    )


def settle_routes(
    routes: list[Route], rejected: Iterable[tuple[str, str]], semantic_names: dict[str, str]
) -> tuple[list[Route], list[CacheWarning]]:
    """Check each Semantic route's embeddings route among the compiled `routes`; narrow to Exact if bad.

    `rejected` are (namespace, name) of RouteRules that exist but did not compile; `semantic_names`
    maps a route id to the embeddingRoute name as written.
    """
    by_id = {route.id: route for route in routes}
    failed = set(rejected)
    settled: list[Route] = []
    warnings: list[CacheWarning] = []
    for route in routes:
        semantic = route.cache.semantic
        if semantic is None:
            settled.append(route)
            continue
        name = semantic_names[route.id]
        problem = _embedding_problem(route, by_id.get(semantic.embedding_route), name, failed)
        if problem is None:
            settled.append(route)
            continue
        message, reason = problem
        warnings.append(
            CacheWarning(
                route.namespace,
                route.name,
                "spec.cache.semantic.embeddingRoute",
                f"{message}; this route's answers are cached with Exact matching until it is fixed",
                reason,
            )
        )
        exact = route.cache.model_copy(update={"mode": "Exact", "semantic": None})
        settled.append(route.model_copy(update={"cache": exact}))
    return settled, warnings


def _embedding_problem(
    route: Route, target: Route | None, name: str, rejected: set[tuple[str, str]]
) -> tuple[str, str] | None:
    where = f"RouteRule {route.namespace}/{name}"
    if target is None or (target.namespace, target.name) != (route.namespace, name):
        if (route.namespace, name) in rejected:
            return f"{where} is rejected (see its errors)", EMBEDDING_ROUTE_INVALID
        return f"{where} not found (it must be in this RouteRule's namespace)", EMBEDDING_ROUTE_NOT_FOUND
    if target.id == route.id:
        return (
            "names this RouteRule itself; name the RouteRule of an embeddings model",
            EMBEDDING_ROUTE_INVALID,
        )
    for backend in target.backends:
        if backend.provider in _NO_EMBEDDINGS:
            return (
                f"{where} is not an embeddings route: its backend {backend.name!r} is {backend.provider}, "
                "which serves no embeddings",
                EMBEDDING_ROUTE_INVALID,
            )
    if target.cache.semantic is not None:
        return f"{where} uses semantic caching itself; an embeddings route cannot", EMBEDDING_ROUTE_INVALID
    return None


def key_warnings(keys: Iterable[VirtualKey], routes: list[Route]) -> list[CacheWarning]:
    """What a key's `spec.cache` asks for that the routes it may call cannot give it."""
    warnings: list[CacheWarning] = []
    for key in keys:
        wish = key.cache
        if wish is None:
            continue
        reachable = [route for route in routes if _may_call(key, route)]
        if wish.mode == "Semantic" and not any(route.cache.semantic is not None for route in reachable):
            warnings.append(
                CacheWarning(
                    key.namespace,
                    key.name,
                    "spec.cache.mode",
                    "Semantic needs a route with semantic config, and none of the routes this key may "
                    "call has one; its calls are cached with Exact matching",
                    SEMANTIC_UNAVAILABLE,
                )
            )
        if wish.partition is None:
            continue
        wider = [
            route
            for route in reachable
            if cache_for(route, key).enabled
            and PARTITION_ORDER.index(wish.partition) > PARTITION_ORDER.index(route.cache.partition)
        ]
        if wider:
            names = ", ".join(
                f"RouteRule {route.namespace}/{route.name} ({route.cache.partition})"
                for route in wider[:_LISTED]
            )
            more = f" and {len(wider) - _LISTED} more" if len(wider) > _LISTED else ""
            warnings.append(
                CacheWarning(
                    key.namespace,
                    key.name,
                    "spec.cache.partition",
                    f"{wish.partition} is wider than the partition of {names}{more}; a key can only "
                    "narrow a route's partition, so those routes keep theirs",
                    PARTITION_NOT_NARROWED,
                )
            )
    return warnings


def _may_call(key: VirtualKey, route: Route) -> bool:
    return route.allows(key.namespace) and (
        not key.models or any(fnmatch.fnmatchcase(route.model, pattern) for pattern in key.models)
    )
