"""`spec.cache` of RouteRules and VirtualKeys, validated by a real API server: OpenAPI and CEL refuse
what can be checked within one resource, with the message `kubectl apply` shows; what needs another
resource (the embeddings route) is a condition the real operator writes."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import Plane
from stack import Stack, in_namespace, mock_route, running_stack, wait_for

ROOT = Path(__file__).resolve().parents[2]
NS = "cache-validation"
API = "tollway.dev/v1alpha1"
MOCK = {"name": "mock", "provider": "openai-compatible", "model": "m", "baseURL": "http://127.0.0.1:9/v1"}
SEMANTIC = {"mode": "Semantic", "semantic": {"embeddingRoute": "embed"}}


@pytest.fixture(scope="module")
def cp(plane: Plane) -> Any:
    plane.cp.create_namespace(NS)
    return plane.cp


def apply(cp: Any, manifest: dict[str, Any], *, dry_run: bool = True) -> Any:
    args = ["apply", "-n", NS, "-f", "-"] + (["--dry-run=server"] if dry_run else [])
    return cp.kubectl(*args, input=json.dumps(manifest), check=False)


def route(name: str = "r", **cache: Any) -> dict[str, Any]:
    spec = {"model": name, "backends": [MOCK], "cache": cache}
    return {"apiVersion": API, "kind": "RouteRule", "metadata": {"name": name}, "spec": spec}


def vkey(**cache: Any) -> dict[str, Any]:
    return {"apiVersion": API, "kind": "VirtualKey", "metadata": {"name": "k"}, "spec": {"cache": cache}}


def test_the_caching_example_is_accepted(cp: Any) -> None:
    path = ROOT / "examples" / "caching" / "cache.yaml"
    result = cp.kubectl("apply", "-n", NS, "--dry-run=server", "-f", str(path), check=False)
    assert result.returncode == 0, result.stderr


def test_the_api_server_fills_in_the_route_cache_defaults(cp: Any) -> None:
    assert apply(cp, route("defaults", mode="Exact"), dry_run=False).returncode == 0
    assert apply(cp, route("semantic", **SEMANTIC), dry_run=False).returncode == 0

    def stored(name: str) -> dict[str, Any]:
        body = json.loads(cp.kubectl("get", "routerule", name, "-n", NS, "-o", "json").stdout)
        return dict(body["spec"]["cache"])

    assert stored("defaults") == {"mode": "Exact", "partition": "Key"}
    assert stored("semantic") == {
        "mode": "Semantic",
        "partition": "Key",
        "semantic": {"embeddingRoute": "embed", "threshold": "0.95"},
    }
    assert apply(cp, route("bare"), dry_run=False).returncode == 0
    assert stored("bare") == {"mode": "Off", "partition": "Key"}


VALID: list[tuple[str, dict[str, Any]]] = [
    (
        "every route field",
        route(
            mode="Semantic",
            ttl="10m",
            maxTtl="1h30m",
            maxEntryBytes=33554432,
            partition="Namespace",
            semantic={"embeddingRoute": "embed.v2", "threshold": "1"},
        ),
    ),
    ("ttl equal to maxTtl", route(mode="Exact", ttl="1h", maxTtl="60m")),
    ("an Off route with settings for keys", route(mode="Off", ttl="1h", partition="Team")),
    ("a year", route(mode="Exact", maxTtl="8760h")),
    ("a small threshold", route(mode="Semantic", semantic={"embeddingRoute": "e", "threshold": "0.001"})),
    ("a key opting in", vkey(mode="Exact", ttl="30s", maxEntryBytes=1, partition="Key")),
    ("a key opting out", vkey(mode="Off")),
    ("a key asking Semantic", vkey(mode="Semantic")),
]


@pytest.mark.parametrize("manifest", [m for _, m in VALID], ids=[i for i, _ in VALID])
def test_valid_cache_settings_are_accepted(cp: Any, manifest: dict[str, Any]) -> None:
    result = apply(cp, manifest)
    assert result.returncode == 0, f"{yaml.safe_dump(manifest)}\n{result.stderr}"


INVALID: list[tuple[str, dict[str, Any], str]] = [
    (
        "ttl above maxTtl",
        route(mode="Exact", ttl="2h", maxTtl="1h"),
        "spec.cache.ttl: Invalid value: ttl must not exceed maxTtl",
    ),
    (
        "ttl above maxTtl in other units",
        route(mode="Exact", ttl="61m", maxTtl="1h"),
        "ttl must not exceed maxTtl",
    ),
    (
        "Semantic without semantic",
        route(mode="Semantic"),
        "semantic (embeddingRoute, threshold) is required with mode Semantic",
    ),
    (
        "semantic with Exact",
        route(mode="Exact", semantic={"embeddingRoute": "e"}),
        "semantic applies only with mode Semantic",
    ),
    (
        "semantic with the default mode",
        route(semantic={"embeddingRoute": "e"}),
        "semantic applies only with mode Semantic",
    ),
    (
        "no embeddingRoute",
        route(mode="Semantic", semantic={"threshold": "0.9"}),
        "spec.cache.semantic.embeddingRoute: Required value",
    ),
    (
        "embeddingRoute not a name",
        route(mode="Semantic", semantic={"embeddingRoute": "Embed_1"}),
        "spec.cache.semantic.embeddingRoute in body should match",
    ),
    (
        "threshold 0",
        route(mode="Semantic", semantic={"embeddingRoute": "e", "threshold": "0"}),
        'threshold must be a decimal above 0 and at most 1, such as "0.95"',
    ),
    (
        "threshold 0.0",
        route(mode="Semantic", semantic={"embeddingRoute": "e", "threshold": "0.000"}),
        "threshold must be a decimal above 0 and at most 1",
    ),
    (
        "threshold above 1",
        route(mode="Semantic", semantic={"embeddingRoute": "e", "threshold": "1.01"}),
        "threshold must be a decimal above 0 and at most 1",
    ),
    (
        "threshold not a number",
        route(mode="Semantic", semantic={"embeddingRoute": "e", "threshold": "high"}),
        "threshold must be a decimal above 0 and at most 1",
    ),
    (
        "threshold as a YAML number",
        route(mode="Semantic", semantic={"embeddingRoute": "e", "threshold": 0.9}),
        'spec.cache.semantic.threshold: Invalid value: "number"',
    ),
    ("unknown mode", route(mode="Fuzzy"), 'spec.cache.mode: Unsupported value: "Fuzzy"'),
    ("an unquoted Off", route(mode=False), 'spec.cache.mode: Invalid value: "boolean"'),
    (
        "zero ttl",
        route(mode="Exact", ttl="0s"),
        'spec.cache.ttl: Invalid value: "0s": must be longer than 0',
    ),
    (
        "ttl over a year",
        route(mode="Exact", maxTtl="8761h"),
        'spec.cache.maxTtl: Invalid value: "8761h": must be at most a year (8760h)',
    ),
    ("fractional ttl", route(mode="Exact", ttl="1.5m"), "spec.cache.ttl in body should match"),
    ("ttl in ms", route(mode="Exact", ttl="500ms"), "spec.cache.ttl in body should match"),
    ("ttl in days", route(mode="Exact", maxTtl="2d"), "spec.cache.maxTtl in body should match"),
    (
        "zero bytes",
        route(mode="Exact", maxEntryBytes=0),
        "spec.cache.maxEntryBytes: Invalid value: 0: spec.cache.maxEntryBytes in body should be greater than "
        "or equal to 1",
    ),
    (
        "too many bytes",
        route(mode="Exact", maxEntryBytes=33554433),
        "should be less than or equal to 33554432",
    ),
    (
        "unknown partition",
        route(mode="Exact", partition="User"),
        'spec.cache.partition: Unsupported value: "User"',
    ),
    ("key unknown mode", vkey(mode="On"), 'spec.cache.mode: Unsupported value: "On"'),
    ("key unquoted Off", vkey(mode=False), 'spec.cache.mode: Invalid value: "boolean"'),
    ("key zero ttl", vkey(ttl="0m"), "must be longer than 0"),
    ("key bad ttl", vkey(ttl="soon"), "spec.cache.ttl in body should match"),
    ("key zero bytes", vkey(maxEntryBytes=0), "should be greater than or equal to 1"),
    (
        "key unknown partition",
        vkey(partition="Cluster"),
        'spec.cache.partition: Unsupported value: "Cluster"',
    ),
]


@pytest.mark.parametrize(
    ("manifest", "message"), [(m, msg) for _, m, msg in INVALID], ids=[i for i, _, _ in INVALID]
)
def test_invalid_cache_settings_are_refused_with_the_reason(
    cp: Any, manifest: dict[str, Any], message: str
) -> None:
    result = apply(cp, manifest)
    assert result.returncode != 0, f"accepted: {yaml.safe_dump(manifest)}"
    assert message in result.stderr


@pytest.mark.parametrize(
    "manifest",
    [vkey(maxTtl="1h"), vkey(semantic={"embeddingRoute": "e"}), route(mode="Exact", ttlSeconds=5)],
    ids=["key maxTtl", "key semantic", "route ttlSeconds"],
)
def test_unknown_cache_fields_are_dropped_by_the_api_server_and_refused_by_kubectl(
    cp: Any, manifest: dict[str, Any]
) -> None:
    # Structural schemas prune unknown fields; kubectl's field validation (Strict by default) refuses them.
    result = apply(cp, manifest)
    assert result.returncode != 0
    assert "unknown field" in result.stderr


@pytest.fixture(scope="module")
def stack(plane: Plane, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_stack(plane.cp, plane.audit_log, tmp_path_factory.mktemp("cache")) as s:
        yield s


@pytest.mark.timeout(300)
def test_a_missing_embeddings_route_is_a_condition_and_the_route_serves_exact_until_it_exists(
    stack: Stack,
) -> None:
    ns = stack.namespace("cache-operator")
    mock = stack.gateway.options.mock_port
    stack.apply(in_namespace(ns, mock_route("chat", "cache-chat", mock, cache=SEMANTIC)))

    def conditions_with(reason: str) -> dict[str, dict[str, Any]] | None:
        found = stack.conditions("routerule", ns, "chat")
        accepted = found.get("Accepted")
        return found if accepted is not None and accepted["reason"] == reason else None

    def published_cache() -> dict[str, Any]:
        (route,) = [r for r in stack.published()["routes"] if r["model"] == "cache-chat"]
        return dict(route["cache"])

    found = wait_for(lambda: conditions_with("EmbeddingRouteNotFound"), 30, "the missing route reported")
    accepted, refs, ready = found["Accepted"], found["ResolvedRefs"], found["Ready"]
    assert accepted["status"] == "True"
    assert accepted["message"].startswith(
        f"compiled into the GatewayConfig, narrower than written: spec.cache.semantic.embeddingRoute: "
        f"RouteRule {ns}/embed not found"
    )
    assert (refs["status"], refs["reason"]) == ("False", "EmbeddingRouteNotFound")
    assert (ready["status"], ready["reason"]) == ("True", "Published")
    assert (published_cache()["mode"], published_cache()["semantic"]) == ("Exact", None)

    embed = mock_route("embed", "cache-embed", mock)
    stack.apply(in_namespace(ns, embed))
    found = wait_for(lambda: conditions_with("Accepted"), 30, "the route accepted as written")
    assert found["ResolvedRefs"]["status"] == "True"
    cache = wait_for(
        lambda: c if (c := published_cache())["mode"] == "Semantic" else None, 30, "Semantic published"
    )
    assert cache["semantic"] == {"embedding_route": f"{ns}-embed", "threshold": "0.95"}
