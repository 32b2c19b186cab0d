"""`cache_for(route, key)`: the route's cache as a VirtualKey narrows it, one rule per test."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from pydantic import ValidationError

from tollway_sidecar.config.models import (
    Backend,
    CacheSettings,
    KeyCache,
    Route,
    SemanticCache,
    VirtualKey,
    cache_for,
    narrower_partition,
)

SEMANTIC = SemanticCache(embedding_route="default-embed", threshold=Decimal("0.9"))
BACKEND = Backend(name="mock", provider="openai-compatible", model="m", base_url="http://127.0.0.1:9/v1")


def route(**cache: Any) -> Route:
    return Route(
        id="default-chat",
        name="chat",
        namespace="default",
        model="chat",
        backends=(BACKEND,),
        cache=CacheSettings(**cache),
    )


def key(team: str | None = "search", **cache: Any) -> VirtualKey:
    return VirtualKey(
        name="k",
        namespace="default",
        key_sha256="0" * 64,
        owner_team=team,
        cache=KeyCache(**cache) if cache else None,
    )


def test_a_key_without_cache_settings_gets_the_route_default() -> None:
    r = route(mode="Exact", ttl_s=120, max_ttl_s=600, max_entry_bytes=5000, partition="Namespace")
    assert cache_for(r, key()) == r.cache


def test_the_cache_is_off_unless_configured() -> None:
    assert not cache_for(route(), key()).enabled
    assert not cache_for(route(), key(ttl_s=60)).enabled  # narrowing alone does not opt in


def test_a_key_with_mode_off_opts_out_of_a_cached_route() -> None:
    assert cache_for(route(mode="Exact"), key(mode="Off")).mode == "Off"
    semantic = cache_for(route(mode="Semantic", semantic=SEMANTIC), key(mode="Off"))
    assert (semantic.mode, semantic.semantic) == ("Off", None)


def test_a_key_with_mode_exact_opts_in_on_a_route_without_a_cache_with_the_route_settings() -> None:
    r = route(mode="Off", ttl_s=90, max_ttl_s=900, max_entry_bytes=2048, partition="Team")
    got = cache_for(r, key(mode="Exact"))
    assert got == CacheSettings(mode="Exact", ttl_s=90, max_ttl_s=900, max_entry_bytes=2048, partition="Team")


def test_a_key_opting_in_on_a_bare_route_gets_the_defaults() -> None:
    assert cache_for(route(), key(mode="Exact")) == CacheSettings(mode="Exact")


def test_a_key_with_mode_exact_narrows_a_semantic_route_to_exact() -> None:
    got = cache_for(route(mode="Semantic", semantic=SEMANTIC), key(mode="Exact"))
    assert (got.mode, got.semantic) == ("Exact", None)


def test_a_key_asking_semantic_gets_it_only_where_the_route_has_semantic_config() -> None:
    on_semantic = cache_for(route(mode="Semantic", semantic=SEMANTIC), key(mode="Semantic"))
    assert (on_semantic.mode, on_semantic.semantic) == ("Semantic", SEMANTIC)
    for r in (route(mode="Exact"), route(mode="Off")):
        got = cache_for(r, key(mode="Semantic"))
        assert (got.mode, got.semantic) == ("Exact", None)


def test_a_key_without_a_mode_follows_the_route_mode() -> None:
    assert cache_for(route(mode="Semantic", semantic=SEMANTIC), key(ttl_s=30)).semantic == SEMANTIC
    assert cache_for(route(mode="Exact"), key(ttl_s=30)).mode == "Exact"


def test_ttl_is_the_smaller_of_route_and_key() -> None:
    assert cache_for(route(mode="Exact", ttl_s=600), key(ttl_s=60)).ttl_s == 60
    assert cache_for(route(mode="Exact", ttl_s=60), key(ttl_s=600)).ttl_s == 60


def test_a_key_ttl_also_caps_max_ttl() -> None:
    got = cache_for(route(mode="Exact", ttl_s=300, max_ttl_s=3600), key(ttl_s=120))
    assert (got.ttl_s, got.max_ttl_s) == (120, 120)
    got = cache_for(route(mode="Exact", ttl_s=300, max_ttl_s=3600), key(ttl_s=7200))
    assert (got.ttl_s, got.max_ttl_s) == (300, 3600)  # a longer key ttl widens nothing


def test_max_entry_bytes_is_the_smaller_of_route_and_key() -> None:
    assert (
        cache_for(route(mode="Exact", max_entry_bytes=4096), key(max_entry_bytes=1024)).max_entry_bytes
        == 1024
    )
    assert (
        cache_for(route(mode="Exact", max_entry_bytes=1024), key(max_entry_bytes=4096)).max_entry_bytes
        == 1024
    )


@pytest.mark.parametrize(
    ("route_partition", "key_partition", "expected"),
    [
        ("Namespace", "Team", "Team"),
        ("Namespace", "Key", "Key"),
        ("Team", "Key", "Key"),
        ("Team", "Team", "Team"),
    ],
)
def test_a_key_may_narrow_the_partition(route_partition: str, key_partition: str, expected: str) -> None:
    assert (
        cache_for(route(mode="Exact", partition=route_partition), key(partition=key_partition)).partition
        == expected
    )


@pytest.mark.parametrize(
    ("route_partition", "key_partition"),
    [("Key", "Team"), ("Key", "Namespace"), ("Team", "Namespace")],
)
def test_a_key_can_never_widen_the_partition(route_partition: str, key_partition: str) -> None:
    got = cache_for(route(mode="Exact", partition=route_partition), key(partition=key_partition))
    assert got.partition == route_partition


def test_a_key_without_a_team_is_never_in_a_shared_team_partition() -> None:
    assert cache_for(route(mode="Exact", partition="Team"), key(team=None)).partition == "Key"
    assert (
        cache_for(route(mode="Exact", partition="Namespace"), key(team=None, partition="Team")).partition
        == "Key"
    )
    assert cache_for(route(mode="Exact", partition="Namespace"), key(team=None)).partition == "Namespace"


def test_narrower_partition_orders_key_team_namespace() -> None:
    assert narrower_partition("Namespace", "Key") == narrower_partition("Key", "Namespace") == "Key"
    assert narrower_partition("Team", "Namespace") == narrower_partition("Namespace", "Team") == "Team"


def test_the_contract_refuses_inconsistent_settings() -> None:
    with pytest.raises(ValidationError, match="must not exceed max_ttl_s"):
        CacheSettings(mode="Exact", ttl_s=600, max_ttl_s=60)
    with pytest.raises(ValidationError, match="exactly when mode is Semantic"):
        CacheSettings(mode="Semantic")
    with pytest.raises(ValidationError, match="exactly when mode is Semantic"):
        CacheSettings(mode="Exact", semantic=SEMANTIC)
    for threshold in ("0", "1.01", "-0.5"):
        with pytest.raises(ValidationError):
            SemanticCache(embedding_route="e", threshold=Decimal(threshold))
