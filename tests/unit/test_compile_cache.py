"""`spec.cache` of RouteRules and VirtualKeys, compiled: the settings, the errors naming each field, and
the warnings (and conditions) for what needs other resources: the embeddings route, a key's wishes."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from tollway.cli import main
from tollway_operator.cluster import Resource
from tollway_operator.compile import (
    CompileError,
    CompileResult,
    Manifest,
    compile_directory,
    compile_manifests,
)
from tollway_operator.lastgood import compile_keeping_last_good
from tollway_operator.status import Publication, conditions_for
from tollway_sidecar.config.models import CacheSettings, KeyCache, SemanticCache, cache_for

ROOT = Path(__file__).resolve().parents[2]
API = "tollway.dev/v1alpha1"
MOCK = {
    "name": "mock",
    "provider": "openai-compatible",
    "model": "gpt-4o-mini",
    "baseURL": "http://127.0.0.1:9/v1",
}
EMBED_BACKEND = {**MOCK, "model": "e", "pricing": {"inputPerMillion": "0.02", "outputPerMillion": "0"}}
SEMANTIC = {"mode": "Semantic", "semantic": {"embeddingRoute": "embed"}}


def doc(kind: str, name: str, spec: dict[str, Any], namespace: str = "default") -> dict[str, Any]:
    return {"apiVersion": API, "kind": kind, "metadata": {"name": name, "namespace": namespace}, "spec": spec}


def route(
    name: str = "chat", cache: dict[str, Any] | None = None, namespace: str = "default", **spec: Any
) -> dict[str, Any]:
    body: dict[str, Any] = {"model": name, "backends": [MOCK], **spec}
    if cache is not None:
        body["cache"] = cache
    return doc("RouteRule", name, body, namespace)


def embed(name: str = "embed", **spec: Any) -> dict[str, Any]:
    spec.setdefault("backends", [EMBED_BACKEND])
    return route(name, **spec)


def vkey(name: str = "k", cache: dict[str, Any] | None = None, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"secretRef": {"name": "keys", "key": name}, **spec}
    if cache is not None:
        body["cache"] = cache
    return doc("VirtualKey", name, body)


def keys(*names: str) -> dict[str, Any]:
    values = {name: f"tw-{name}-0123456789abcdef" for name in names}
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "keys", "namespace": "default"},
        "stringData": values,
    }


def compile_(*docs: dict[str, Any]) -> CompileResult:
    return compile_manifests([Manifest.from_object(d, source="test.yaml") for d in docs])


def errors(result: CompileResult) -> list[tuple[str, str]]:
    return [(e.field, e.message) for e in result.errors]


def the_route(result: CompileResult, name: str = "chat") -> CacheSettings:
    (found,) = [r for r in result.config.routes if r.name == name]
    return found.cache


# --- settings as written ------------------------------------------------------------------------------


def test_a_route_without_cache_compiles_to_off() -> None:
    result = compile_(route())
    assert result.errors == ()
    assert the_route(result) == CacheSettings() and not the_route(result).enabled


def test_a_route_cache_compiles_every_field() -> None:
    cache = {
        "mode": "Semantic",
        "ttl": "10m",
        "maxTtl": "1h30m",
        "maxEntryBytes": 4096,
        "partition": "Team",
        "semantic": {"embeddingRoute": "embed", "threshold": "0.9"},
    }
    result = compile_(route(cache=cache), embed())
    assert (result.errors, result.warnings) == ((), ())
    assert the_route(result) == CacheSettings(
        mode="Semantic",
        ttl_s=600,
        max_ttl_s=5400,
        max_entry_bytes=4096,
        partition="Team",
        semantic=SemanticCache(embedding_route="default-embed", threshold=Decimal("0.9")),
    )


def test_the_threshold_defaults_to_0_95_and_stays_exact() -> None:
    result = compile_(route(cache=SEMANTIC), embed())
    semantic = the_route(result).semantic
    assert semantic is not None and semantic.threshold == Decimal("0.95")
    assert str(semantic.threshold) == "0.95"


@pytest.mark.parametrize(
    ("cache", "ttl_s", "max_ttl_s"),
    [
        ({"mode": "Exact"}, 300, 86_400),
        ({"mode": "Exact", "maxTtl": "1m"}, 60, 60),  # the default ttl gives way to a shorter maxTtl
        ({"mode": "Exact", "ttl": "48h"}, 172_800, 172_800),  # and the default maxTtl to a longer ttl
        ({"mode": "Exact", "ttl": "90s", "maxTtl": "2m"}, 90, 120),
    ],
)
def test_unset_lifetimes_take_defaults_that_never_cross(
    cache: dict[str, Any], ttl_s: int, max_ttl_s: int
) -> None:
    got = the_route(compile_(route(cache=cache)))
    assert (got.ttl_s, got.max_ttl_s) == (ttl_s, max_ttl_s)


def test_a_key_cache_compiles_to_key_cache() -> None:
    result = compile_(
        keys("k"), vkey(cache={"mode": "Exact", "ttl": "1m", "maxEntryBytes": 100, "partition": "Key"})
    )
    assert result.errors == ()
    (key,) = result.config.keys
    assert key.cache == KeyCache(mode="Exact", ttl_s=60, max_entry_bytes=100, partition="Key")


def test_a_key_without_cache_follows_its_routes() -> None:
    (key,) = compile_(keys("k"), vkey()).config.keys
    assert key.cache is None


# --- errors, each naming the field --------------------------------------------------------------------

ROUTE_ERRORS: list[tuple[str, dict[str, Any], str, str]] = [
    (
        "ttl above maxTtl",
        {"mode": "Exact", "ttl": "2h", "maxTtl": "1h"},
        "spec.cache.ttl",
        "must not exceed maxTtl",
    ),
    ("semantic missing", {"mode": "Semantic"}, "spec.cache.semantic", "required with mode Semantic"),
    (
        "semantic with exact",
        {"mode": "Exact", "semantic": {"embeddingRoute": "e"}},
        "spec.cache.semantic",
        "only with mode Semantic",
    ),
    ("fractional ttl", {"ttl": "1.5m"}, "spec.cache.ttl", "expected a duration in whole s, m or h"),
    ("ms ttl", {"ttl": "500ms"}, "spec.cache.ttl", "expected a duration in whole s, m or h"),
    ("days", {"maxTtl": "2d"}, "spec.cache.maxTtl", "expected a duration in whole s, m or h"),
    ("zero ttl", {"ttl": "0s"}, "spec.cache.ttl", "must be longer than 0"),
    ("over a year", {"maxTtl": "8761h"}, "spec.cache.maxTtl", "must be at most a year"),
    ("zero bytes", {"maxEntryBytes": 0}, "spec.cache.maxEntryBytes", "greater than or equal to 1"),
    (
        "too many bytes",
        {"maxEntryBytes": 33_554_433},
        "spec.cache.maxEntryBytes",
        "less than or equal to 33554432",
    ),
    ("bytes as text", {"maxEntryBytes": "1MB"}, "spec.cache.maxEntryBytes", "expected an integer"),
    ("unknown partition", {"partition": "User"}, "spec.cache.partition", "'Key', 'Team' or 'Namespace'"),
    ("unknown mode", {"mode": "Fuzzy"}, "spec.cache.mode", 'expected "Off", "Exact" or "Semantic"'),
    ("unquoted Off", {"mode": False}, "spec.cache.mode", 'write "Off" in quotes'),
    (
        "threshold zero",
        {**SEMANTIC, "semantic": {"embeddingRoute": "e", "threshold": "0"}},
        "spec.cache.semantic.threshold",
        "above 0 and at most 1",
    ),
    (
        "threshold above one",
        {**SEMANTIC, "semantic": {"embeddingRoute": "e", "threshold": "1.2"}},
        "spec.cache.semantic.threshold",
        "above 0 and at most 1",
    ),
    (
        "threshold not a number",
        {**SEMANTIC, "semantic": {"embeddingRoute": "e", "threshold": "high"}},
        "spec.cache.semantic.threshold",
        "expected a decimal",
    ),
    (
        "no embeddingRoute",
        {"mode": "Semantic", "semantic": {}},
        "spec.cache.semantic.embeddingRoute",
        "required",
    ),
    (
        "embeddingRoute not a name",
        {"mode": "Semantic", "semantic": {"embeddingRoute": "Embed_Model"}},
        "spec.cache.semantic.embeddingRoute",
        "Embed_Model",
    ),
    ("unknown field", {"mode": "Exact", "ttlSeconds": 5}, "spec.cache.ttlSeconds", "unknown field"),
]


@pytest.mark.parametrize(
    ("cache", "field", "message"), [c[1:] for c in ROUTE_ERRORS], ids=[c[0] for c in ROUTE_ERRORS]
)
def test_a_bad_route_cache_is_an_error_naming_the_field(
    cache: dict[str, Any], field: str, message: str
) -> None:
    result = compile_(route(cache=cache))
    assert result.config.routes == ()
    ((got_field, got_message),) = errors(result)
    assert got_field == field
    assert message in got_message


KEY_ERRORS: list[tuple[str, dict[str, Any], str, str]] = [
    ("unquoted Off", {"mode": False}, "spec.cache.mode", 'write "Off" in quotes'),
    ("bad ttl", {"ttl": "soon"}, "spec.cache.ttl", "expected a duration in whole s, m or h"),
    ("zero bytes", {"maxEntryBytes": 0}, "spec.cache.maxEntryBytes", "greater than or equal to 1"),
    ("unknown partition", {"partition": "Cluster"}, "spec.cache.partition", "'Key', 'Team' or 'Namespace'"),
    ("maxTtl is the route's", {"maxTtl": "1h"}, "spec.cache.maxTtl", "unknown field"),
    (
        "semantic is the route's",
        {"semantic": {"embeddingRoute": "e"}},
        "spec.cache.semantic",
        "unknown field",
    ),
]


@pytest.mark.parametrize(
    ("cache", "field", "message"), [c[1:] for c in KEY_ERRORS], ids=[c[0] for c in KEY_ERRORS]
)
def test_a_bad_key_cache_is_an_error_naming_the_field(
    cache: dict[str, Any], field: str, message: str
) -> None:
    result = compile_(keys("k"), vkey(cache=cache))
    assert result.config.keys == ()
    ((got_field, got_message),) = errors(result)
    assert got_field == field
    assert message in got_message


def test_an_unquoted_off_in_a_yaml_file_gets_the_quoting_hint(tmp_path: Path) -> None:
    (tmp_path / "routes.yaml").write_text(
        f"apiVersion: {API}\nkind: RouteRule\nmetadata: {{name: chat}}\n"
        "spec:\n  model: chat\n  backends: [{name: m, provider: openai-compatible, model: m, baseURL: 'http://h/v1'}]\n"
        "  cache: {mode: Off}\n"
    )
    (error,) = compile_directory(tmp_path).errors
    assert (error.field, error.source) == ("spec.cache.mode", str(tmp_path / "routes.yaml"))
    assert 'write "Off" in quotes' in error.message


# --- the embeddings route: checked against the other RouteRules, a warning that narrows to Exact ------


def warned(result: CompileResult) -> list[tuple[str, str, str, str]]:
    return [(w.kind, w.name, w.field, w.reason) for w in result.warnings]


def test_semantic_names_the_embeddings_route_by_its_route_id() -> None:
    result = compile_(route(cache=SEMANTIC), embed())
    assert (result.errors, result.warnings) == ((), ())
    semantic = the_route(result).semantic
    assert semantic is not None and semantic.embedding_route == "default-embed"
    assert semantic.embedding_route in {r.id for r in result.config.routes}


def assert_narrowed_to_exact(result: CompileResult, reason: str, *in_message: str) -> None:
    assert result.errors == ()
    assert ("RouteRule", "default", "chat") in result.accepted
    assert warned(result) == [("RouteRule", "chat", "spec.cache.semantic.embeddingRoute", reason)]
    for text in in_message:
        assert text in result.warnings[0].message
    cache = the_route(result)
    assert (cache.mode, cache.semantic) == ("Exact", None)


def test_a_missing_embeddings_route_narrows_to_exact_with_a_warning() -> None:
    result = compile_(route(cache=SEMANTIC))
    assert_narrowed_to_exact(result, "EmbeddingRouteNotFound", "RouteRule default/embed not found")


def test_an_embeddings_route_in_another_namespace_is_not_found() -> None:
    result = compile_(route(cache=SEMANTIC), embed(namespace="other", allowedNamespaces=["*"]))
    assert_narrowed_to_exact(result, "EmbeddingRouteNotFound", "in this RouteRule's namespace")


def test_a_rejected_embeddings_route_narrows_to_exact() -> None:
    result = compile_(route(cache=SEMANTIC), embed(timeout="soon"))
    assert [e.name for e in result.errors] == ["embed"]
    warnings = [w for w in result.warnings if w.name == "chat"]
    assert [w.reason for w in warnings] == ["EmbeddingRouteInvalid"]
    assert "is rejected" in warnings[0].message
    assert the_route(result).mode == "Exact"


def test_an_anthropic_route_is_not_an_embeddings_route() -> None:
    claude = {
        "name": "claude",
        "provider": "anthropic",
        "model": "claude-haiku-4-5",
        "baseURL": "http://127.0.0.1:9",
        "credentialsSecretRef": {"name": "creds", "key": "k"},
    }
    creds = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "creds", "namespace": "default"},
        "stringData": {"k": "sk-ant"},
    }
    result = compile_(route(cache=SEMANTIC), embed(backends=[claude]), creds)
    assert_narrowed_to_exact(
        result, "EmbeddingRouteInvalid", "not an embeddings route", "'claude' is anthropic"
    )


def test_a_route_cannot_embed_through_itself() -> None:
    result = compile_(route(cache={"mode": "Semantic", "semantic": {"embeddingRoute": "chat"}}))
    assert_narrowed_to_exact(result, "EmbeddingRouteInvalid", "names this RouteRule itself")


def test_an_embeddings_route_may_not_be_semantic_itself() -> None:
    result = compile_(
        route(cache=SEMANTIC), embed(cache={"mode": "Semantic", "semantic": {"embeddingRoute": "chat"}})
    )
    (chat,) = [w for w in result.warnings if w.name == "chat"]
    assert chat.reason == "EmbeddingRouteInvalid" and "uses semantic caching itself" in chat.message
    assert the_route(result).mode == "Exact"


# --- a key's wishes the routes it may call cannot meet: warnings on the key --------------------------


def test_a_key_asking_semantic_where_no_route_has_it_is_warned() -> None:
    result = compile_(keys("k"), vkey(cache={"mode": "Semantic"}), route(cache={"mode": "Exact"}))
    assert result.errors == ()
    assert warned(result) == [("VirtualKey", "k", "spec.cache.mode", "SemanticUnavailable")]
    key, (chat,) = result.config.keys[0], result.config.routes
    assert cache_for(chat, key).mode == "Exact"


def test_a_key_asking_semantic_is_not_warned_when_a_route_it_may_call_has_it() -> None:
    result = compile_(keys("k"), vkey(cache={"mode": "Semantic"}), route(cache=SEMANTIC), embed())
    assert result.warnings == ()


def test_routes_outside_a_key_model_list_do_not_count_for_semantic() -> None:
    result = compile_(
        keys("k"), vkey(cache={"mode": "Semantic"}, models=["embed"]), route(cache=SEMANTIC), embed()
    )
    assert warned(result) == [("VirtualKey", "k", "spec.cache.mode", "SemanticUnavailable")]


def test_a_key_asking_a_wider_partition_is_warned_naming_the_routes() -> None:
    result = compile_(
        keys("k"),
        vkey(cache={"partition": "Namespace"}),
        route(cache={"mode": "Exact", "partition": "Team"}),
        route("wide", cache={"mode": "Exact", "partition": "Namespace"}),
        route("uncached"),
    )
    assert warned(result) == [("VirtualKey", "k", "spec.cache.partition", "CachePartitionNotNarrowed")]
    message = result.warnings[0].message
    assert "RouteRule default/chat (Team)" in message
    assert "default/wide" not in message and "default/uncached" not in message  # as wide / no cache


def test_a_key_narrowing_the_partition_is_not_warned() -> None:
    result = compile_(
        keys("k"), vkey(cache={"partition": "Key"}), route(cache={"mode": "Exact", "partition": "Team"})
    )
    assert result.warnings == ()


# --- where warnings go: conditions, last good, `tollway compile` --------------------------------------

PUBLISHED = Publication(True, "tollway-system/gw")


def test_a_warning_keeps_the_resource_accepted_and_ready_and_a_broken_reference_unresolved() -> None:
    result = compile_(route(cache=SEMANTIC))
    resource = Resource("RouteRule", "default", "chat", "uid", 4, {}, {})
    conditions = {
        c.type: c
        for c in conditions_for(
            resource, [], True, PUBLISHED, warnings=result.warnings_for("RouteRule", "default", "chat")
        )
    }
    accepted, refs, ready = conditions["Accepted"], conditions["ResolvedRefs"], conditions["Ready"]
    assert (accepted.status, accepted.reason) == ("True", "EmbeddingRouteNotFound")
    assert "spec.cache.semantic.embeddingRoute: RouteRule default/embed not found" in accepted.message
    assert (refs.status, refs.reason) == ("False", "EmbeddingRouteNotFound")
    assert (ready.status, ready.reason) == ("True", "Published")


def test_a_key_warning_is_on_accepted_but_not_a_reference() -> None:
    result = compile_(keys("k"), vkey(cache={"mode": "Semantic"}), route())
    resource = Resource("VirtualKey", "default", "k", "uid", 1, {}, {})
    conditions = {
        c.type: c
        for c in conditions_for(
            resource, [], True, PUBLISHED, warnings=result.warnings_for("VirtualKey", "default", "k")
        )
    }
    assert (conditions["Accepted"].status, conditions["Accepted"].reason) == ("True", "SemanticUnavailable")
    assert conditions["ResolvedRefs"].status == "True"


def test_last_good_passes_the_warnings_on() -> None:
    manifests = [Manifest.from_object(d, source="t.yaml") for d in (route(cache=SEMANTIC),)]
    guarded = compile_keeping_last_good(manifests, {})
    assert [w.reason for w in guarded.result.warnings] == ["EmbeddingRouteNotFound"]


def test_tollway_compile_prints_warnings_and_still_succeeds(tmp_path: Path) -> None:
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(route(cache=SEMANTIC)))
    result = CliRunner().invoke(main, ["compile", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "warning: " in result.stderr and "spec.cache.semantic.embeddingRoute" in result.stderr
    assert '"mode": "Exact"' in result.stdout


def test_compile_directory_keeps_the_warnings(tmp_path: Path) -> None:
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(route(cache=SEMANTIC)))
    warnings = compile_directory(tmp_path).warnings
    assert [w.source for w in warnings] == [str(tmp_path / "r.yaml")]
    assert isinstance(warnings[0], CompileError)


# --- the example ------------------------------------------------------------------------------------


def test_the_caching_example_compiles_without_errors_or_warnings_and_means_what_it_says() -> None:
    result = compile_directory(ROOT / "examples" / "caching")
    assert (result.errors, result.warnings) == ((), ())
    routes = {r.name: r for r in result.config.routes}
    keys_ = {k.name: k for k in result.config.keys}
    chat, reports = routes["chat"], routes["reports"]
    assert cache_for(chat, keys_["search"]).mode == "Semantic"
    assert cache_for(chat, keys_["search"]).partition == "Team"
    assert not cache_for(reports, keys_["search"]).enabled
    nightly = cache_for(reports, keys_["nightly-reports"])
    assert (nightly.mode, nightly.ttl_s, nightly.max_ttl_s, nightly.partition) == ("Exact", 1800, 1800, "Key")
    assert cache_for(chat, keys_["nightly-reports"]).mode == "Exact"
    assert not cache_for(chat, keys_["evaluation"]).enabled


def test_the_local_examples_leave_caching_off() -> None:
    result = compile_directory(ROOT / "examples" / "local")
    assert result.errors == ()
    assert not any(r.cache.enabled for r in result.config.routes)
    assert all(k.cache is None for k in result.config.keys)
