"""The pure compiler from VirtualKey/Budget/RouteRule manifests (and Secrets) to a GatewayConfig."""

from __future__ import annotations

import base64
import hashlib
import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml

from tollway_operator.compile import (
    CompileError,
    CompileResult,
    Manifest,
    compile_directory,
    compile_manifests,
    load_manifests,
)
from tollway_sidecar.config.loader import parse_config
from tollway_sidecar.config.models import VirtualKey
from tollway_sidecar.runtime import CompiledConfig, model_allowed

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "local"
MOCK_URL = "http://127.0.0.1:9000/v1"
API = "tollway.dev/v1alpha1"


# --- builders -----------------------------------------------------------------------------------------


def resource(kind: str, name: str, spec: dict[str, Any], namespace: str | None = None) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name}
    if namespace is not None:
        metadata["namespace"] = namespace
    return {"apiVersion": API, "kind": kind, "metadata": metadata, "spec": spec}


def secret(name: str, namespace: str | None = None, **values: str) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name}
    if namespace is not None:
        metadata["namespace"] = namespace
    return {"apiVersion": "v1", "kind": "Secret", "metadata": metadata, "stringData": values}


def vkey(name: str = "team-a", namespace: str | None = None, **spec: Any) -> dict[str, Any]:
    spec.setdefault("secretRef", {"name": f"{name}-key", "key": "key"})
    return resource("VirtualKey", name, spec, namespace)


def key_secret(
    name: str = "team-a", value: str | None = None, namespace: str | None = None
) -> dict[str, Any]:
    return secret(f"{name}-key", namespace, key=value or f"tw-{name}-0123456789abcdef")


def budget(name: str = "monthly", namespace: str | None = None, **spec: Any) -> dict[str, Any]:
    spec.setdefault("limit", "25.00")
    return resource("Budget", name, spec, namespace)


def backend(name: str = "mock", **fields: Any) -> dict[str, Any]:
    return {
        "name": name,
        "provider": "openai-compatible",
        "model": "gpt-4o-mini",
        "baseURL": MOCK_URL,
    } | fields


def route(name: str = "chat", namespace: str | None = None, **spec: Any) -> dict[str, Any]:
    spec.setdefault("model", name)
    spec.setdefault("backends", [backend()])
    return resource("RouteRule", name, spec, namespace)


def compile_docs(tmp_path: Path, *docs: dict[str, Any], **kwargs: Any) -> CompileResult:
    (tmp_path / "resources.yaml").write_text(yaml.safe_dump_all(docs, sort_keys=False))
    return compile_directory(tmp_path, **kwargs)


def only_error(result: CompileResult) -> CompileError:
    assert len(result.errors) == 1, [str(e) for e in result.errors]
    return result.errors[0]


def route_error(tmp_path: Path, *docs: dict[str, Any], **spec: Any) -> CompileError:
    result = compile_docs(tmp_path, *docs, route(**spec))
    assert result.config.routes == ()
    return only_error(result)


def budget_error(tmp_path: Path, **spec: Any) -> CompileError:
    result = compile_docs(tmp_path, budget(**spec))
    assert result.config.budgets == ()
    return only_error(result)


def key_error(tmp_path: Path, *docs: dict[str, Any], **spec: Any) -> CompileError:
    result = compile_docs(tmp_path, key_secret(), *docs, vkey(**spec))
    assert result.config.keys == ()
    return only_error(result)


# --- the demo configuration ---------------------------------------------------------------------------


def test_examples_compile_to_the_demo_config() -> None:
    result = compile_directory(EXAMPLES)

    assert result.errors == ()
    config = result.config
    assert [k.name for k in config.keys] == ["demo", "disabled-demo", "restricted"]
    demo, disabled, restricted = config.keys
    assert demo.namespace == "default"
    assert demo.key_sha256 == "0307fe04579cc6af1f82200310cf153b77eb761c7f82a6ad94151885ae5d35c0"
    assert demo.key_sha256 == hashlib.sha256(b"tw-demo-0123456789abcdef0123456789abcdef").hexdigest()
    assert (demo.owner_team, demo.owner_user, demo.budgets, demo.models) == (
        "platform",
        "demo",
        ("default/demo-monthly",),
        (),
    )
    assert restricted.models == ("gpt-4o-mini",)
    assert restricted.key_sha256 == hashlib.sha256(b"tw-restricted-0123456789abcdef0123456789ab").hexdigest()
    assert disabled.disabled
    assert not demo.disabled
    assert disabled.key_sha256 == hashlib.sha256(b"tw-disabled-0123456789abcdef0123456789abcd").hexdigest()

    (monthly,) = config.budgets
    assert (monthly.id, monthly.limit_usd, monthly.period) == (
        "default/demo-monthly",
        Decimal("10.00"),
        "Monthly",
    )

    assert [(r.id, r.model) for r in config.routes] == [
        ("default-claude-haiku", "claude-haiku"),
        ("default-gpt-4o", "gpt-4o"),
        ("default-gpt-4o-mini", "gpt-4o-mini"),
        ("default-gpt-4o-mini-ab", "gpt-4o-mini-ab"),
        ("default-text-embedding-3-small", "text-embedding-3-small"),
    ]
    claude, ab = config.routes[0], config.routes[3]
    assert [(b.provider, b.model, b.credential) for b in claude.backends] == [
        ("anthropic", "claude-haiku-4-5", "sk-ant-demo-placeholder")
    ]
    assert (ab.strategy, ab.sticky_user, [b.weight for b in ab.backends]) == ("Weighted", True, [80, 20])
    for r in (config.routes[1], config.routes[2], config.routes[4]):
        (mock,) = r.backends
        assert (mock.name, mock.provider, mock.model) == ("mock", "openai-compatible", r.model)
        assert (mock.base_url, mock.host, mock.port, mock.path_prefix) == (MOCK_URL, "127.0.0.1", 9000, "/v1")
        assert mock.credential is None
        assert r.fallback.max_attempts == 1
    assert config.routes[4].backends[0].pricing is not None
    assert config.routes[4].backends[0].pricing.input_per_million == Decimal("0.02")
    assert config.checksum == config.compute_checksum()
    assert ("VirtualKey", "default", "demo") in result.accepted
    assert len(result.accepted) == 9


def test_checksum_is_stable_and_follows_changes(tmp_path: Path) -> None:
    first = compile_directory(EXAMPLES).config.checksum
    assert compile_directory(EXAMPLES).config.checksum == first

    for path in EXAMPLES.iterdir():
        (tmp_path / path.name).write_text(path.read_text())
    budgets = tmp_path / "budgets.yaml"
    budgets.write_text(budgets.read_text().replace('limit: "10.00"', 'limit: "11.00"'))
    changed = compile_directory(tmp_path)
    assert changed.errors == ()
    assert changed.config.checksum != first


def test_output_does_not_depend_on_input_order(tmp_path: Path) -> None:
    docs = [key_secret("b"), key_secret("a"), vkey("b"), vkey("a"), route("z"), route("y"), budget("m")]
    manifests = [Manifest.from_object(doc, source="test") for doc in docs]

    forward = compile_manifests(manifests)
    backward = compile_manifests(list(reversed(manifests)))

    assert forward.errors == backward.errors == ()
    assert forward.config == backward.config
    assert [k.name for k in forward.config.keys] == ["a", "b"]
    assert [r.name for r in forward.config.routes] == ["y", "z"]


def test_one_bad_resource_does_not_block_the_others(tmp_path: Path) -> None:
    result = compile_docs(
        tmp_path,
        key_secret(),
        vkey(),
        budget("broken", limit="abc"),
        budget("fine"),
        route("bad", backends=[backend(baseURL="ftp://example.com")]),
        route("good"),
    )

    assert [str(e.field) for e in result.errors] == ["spec.limit", "spec.backends[0].baseURL"]
    assert [k.name for k in result.config.keys] == ["team-a"]
    assert [b.name for b in result.config.budgets] == ["fine"]
    assert [r.name for r in result.config.routes] == ["good"]
    assert ("Budget", "default", "broken") not in result.accepted
    assert ("RouteRule", "default", "good") in result.accepted


def test_error_names_file_kind_resource_field_and_expectation(tmp_path: Path) -> None:
    error = route_error(tmp_path, backends=[backend(), backend("second", baseURL="not a url")])

    assert error.source == str(tmp_path / "resources.yaml")
    assert (error.kind, error.namespace, error.name) == ("RouteRule", "default", "chat")
    assert error.field == "spec.backends[1].baseURL"
    assert str(error) == (
        f"{tmp_path / 'resources.yaml'}: RouteRule default/chat: spec.backends[1].baseURL: "
        "expected an absolute http:// or https:// URL, got 'not a url'"
    )


# --- manifests and files ------------------------------------------------------------------------------


def test_missing_namespace_takes_the_default(tmp_path: Path) -> None:
    result = compile_docs(tmp_path, budget("a"), budget("b", namespace="team"), default_namespace="dev")

    assert [b.id for b in result.config.budgets] == ["dev/a", "team/b"]


def test_api_version_must_match_the_kind(tmp_path: Path) -> None:
    wrong = budget() | {"apiVersion": "tollway.dev/v1"}
    bad_secret = key_secret() | {"apiVersion": "tollway.dev/v1alpha1"}

    result = compile_docs(tmp_path, wrong, bad_secret)

    assert [(e.kind, e.field) for e in result.errors] == [("Budget", "apiVersion"), ("Secret", "apiVersion")]
    assert "expected 'tollway.dev/v1alpha1'" in result.errors[0].message
    assert "expected 'v1'" in result.errors[1].message


def test_unsupported_kind_is_an_error(tmp_path: Path) -> None:
    config_map = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}, "data": {}}

    error = only_error(compile_docs(tmp_path, config_map, budget()))

    assert (error.kind, error.field) == ("ConfigMap", "kind")
    assert "unsupported kind 'ConfigMap'" in error.message


def test_metadata_name_is_required_and_dns_safe(tmp_path: Path) -> None:
    nameless = budget() | {"metadata": {}}
    shouting = budget("Team_A")

    result = compile_docs(tmp_path, nameless, shouting)

    assert [(e.field, e.message.split(":")[0]) for e in result.errors] == [
        ("metadata.name", "required, as a string"),
        ("metadata.name", "must be a DNS subdomain"),
    ]


def test_duplicate_resource_is_an_error_on_the_later_one(tmp_path: Path) -> None:
    result = compile_docs(tmp_path, budget(limit="1"), budget(limit="2"))

    error = only_error(result)
    assert error.source.endswith("resources.yaml#2")
    assert error.field == "metadata.name"
    assert "duplicate Budget default/monthly" in error.message
    assert result.config.budgets[0].limit_usd == Decimal("1")


def test_unknown_field_is_named(tmp_path: Path) -> None:
    error = route_error(tmp_path, backends=[{**backend(), "baseUrl": MOCK_URL}])

    assert (error.field, error.message) == ("spec.backends[0].baseUrl", "unknown field")


def test_unknown_top_level_field_and_missing_spec(tmp_path: Path) -> None:
    result = compile_docs(tmp_path, budget() | {"sepc": {}}, {**budget("other"), "spec": None})

    assert [(e.field, e.message.split(";")[0]) for e in result.errors] == [
        ("sepc", "unknown field"),
        ("spec", "required"),
    ]


def test_loader_reads_yaml_and_json_in_file_name_order(tmp_path: Path) -> None:
    (tmp_path / "b.yml").write_text(yaml.safe_dump_all([budget("from-yml"), None, budget("second-doc")]))
    (tmp_path / "a.json").write_text(json.dumps(budget("from-json")))
    (tmp_path / "c.txt").write_text("not: a manifest")
    (tmp_path / "d.yaml").write_text("---\n# only a comment\n")

    manifests, errors = load_manifests(tmp_path, default_namespace="dev")

    assert errors == []
    assert [(m.name, m.namespace) for m in manifests] == [
        ("from-json", "dev"),
        ("from-yml", "dev"),
        ("second-doc", "dev"),
    ]
    assert manifests[0].source == str(tmp_path / "a.json")
    assert manifests[2].source == str(tmp_path / "b.yml") + "#3"


def test_yaml_syntax_errors_and_non_mappings_name_the_file(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(yaml.safe_dump(budget("ok")))
    (tmp_path / "b.yaml").write_text("kind: Budget\nspec: [unclosed\n")
    (tmp_path / "c.yaml").write_text("- just\n- a list\n")
    (tmp_path / "d.json").write_text("{nope")

    result = compile_directory(tmp_path)

    assert [(Path(e.source).name, e.message.split(" at ")[0].split(",")[0]) for e in result.errors] == [
        ("b.yaml", "invalid YAML"),
        ("c.yaml", "expected a resource (a mapping)"),
        ("d.json", "invalid JSON"),
    ]
    assert "line 3" in result.errors[0].message
    assert [b.name for b in result.config.budgets] == ["ok"]


def test_missing_directory_is_an_error(tmp_path: Path) -> None:
    result = compile_directory(tmp_path / "nowhere")

    assert only_error(result).message == "not a directory"
    assert result.config.keys == ()


def test_kubectl_list_is_expanded(tmp_path: Path) -> None:
    listing = {"apiVersion": "v1", "kind": "List", "items": [budget("a"), budget("b")]}

    result = compile_docs(tmp_path, listing)

    assert result.errors == ()
    assert [b.name for b in result.config.budgets] == ["a", "b"]


# --- VirtualKey ---------------------------------------------------------------------------------------


def test_key_is_stored_only_as_its_sha256(tmp_path: Path) -> None:
    value = "tw-team-a-0123456789abcdef"
    encoded = base64.b64encode(value.encode()).decode()
    stored = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "team-a-key"},
        "data": {"key": encoded},
    }

    result = compile_docs(tmp_path, stored, vkey())

    (key,) = result.config.keys
    assert key.key_sha256 == hashlib.sha256(value.encode()).hexdigest()
    assert value not in result.config.model_dump_json()


def test_key_secret_must_exist(tmp_path: Path) -> None:
    error = key_error(tmp_path, secretRef={"name": "nope", "key": "key"})

    assert error.field == "spec.secretRef.name"
    assert error.message == "Secret default/nope not found"


def test_key_secret_must_have_the_key(tmp_path: Path) -> None:
    error = key_error(tmp_path, secretRef={"name": "team-a-key", "key": "token"})

    assert error.field == "spec.secretRef.key"
    assert "has no key 'token' (keys: key)" in error.message


def test_key_secret_resolves_in_the_keys_namespace(tmp_path: Path) -> None:
    result = compile_docs(tmp_path, key_secret(namespace="other"), vkey(namespace="team"))

    assert only_error(result).message == "Secret team/team-a-key not found"


def test_key_must_be_at_least_16_characters(tmp_path: Path) -> None:
    result = compile_docs(tmp_path, key_secret(value="tw-short"), vkey())

    error = only_error(result)
    assert error.field == "spec.secretRef.key"
    assert "8 characters long; at least 16" in error.message
    assert "tw-short" not in str(error)


def test_key_with_a_trailing_newline_is_refused(tmp_path: Path) -> None:
    result = compile_docs(tmp_path, key_secret(value="tw-0123456789abcdef\n"), vkey())

    assert "whitespace" in only_error(result).message


def test_key_without_secret_ref_uses_the_minted_secret(tmp_path: Path) -> None:
    minted = secret("tollway-key-team-a", key="tw-minted-0123456789abcdef")
    spec = resource("VirtualKey", "team-a", {"owner": {"team": "a"}})

    result = compile_docs(tmp_path, minted, spec)

    assert result.errors == ()
    assert result.config.keys[0].key_sha256 == hashlib.sha256(b"tw-minted-0123456789abcdef").hexdigest()


def test_key_without_secret_ref_or_minted_secret_is_an_error(tmp_path: Path) -> None:
    result = compile_docs(tmp_path, resource("VirtualKey", "team-a", {}))

    error = only_error(result)
    assert error.field == "spec.secretRef"
    assert "secretRef is required" in error.message
    assert "tollway-key-team-a" in error.message
    assert "does not exist yet" in error.message


def test_two_keys_with_the_same_value_fail_on_the_newer_claim(tmp_path: Path) -> None:
    """In files the first one written keeps the key; a key sorting earlier by name cannot displace it."""
    same = "tw-same-0123456789abcdef"
    result = compile_docs(tmp_path, key_secret("b", same), key_secret("a", same), vkey("b"), vkey("a"))

    error = only_error(result)
    assert (error.name, error.field) == ("a", "spec.secretRef")
    assert "the same key as VirtualKey default/b" in error.message
    assert [k.name for k in result.config.keys] == ["b"]


def test_unknown_budget_ref_is_named(tmp_path: Path) -> None:
    error = key_error(tmp_path, budget(), budgetRefs=["monthly", "yearly"])

    assert (error.field, error.message) == ("spec.budgetRefs[1]", "Budget default/yearly not found")


def test_key_with_an_invalid_budget_is_left_out(tmp_path: Path) -> None:
    result = compile_docs(tmp_path, key_secret(), budget(limit="0"), vkey(budgetRefs=["monthly"]))

    assert [(e.kind, e.field) for e in result.errors] == [
        ("Budget", "spec.limit"),
        ("VirtualKey", "spec.budgetRefs[0]"),
    ]
    assert "Budget default/monthly is invalid" in result.errors[1].message
    assert "left out" in result.errors[1].message
    assert result.config.keys == ()


def test_key_compiles_limits_owner_models_and_expiry(tmp_path: Path) -> None:
    result = compile_docs(
        tmp_path,
        key_secret(),
        budget(),
        vkey(
            owner={"team": "search", "user": "ana"},
            models=["gpt-4o*", "claude-*"],
            limits={"requestsPerMinute": 60, "tokensPerDay": 1_000_000},
            perUserLimits={"tokensPerMinute": 5000},
            budgetRefs=["monthly", "monthly"],
            expiresAt="2030-01-31T00:00:00+02:00",
        ),
    )

    assert result.errors == ()
    (key,) = result.config.keys
    assert (key.owner_team, key.owner_user, key.models) == ("search", "ana", ("gpt-4o*", "claude-*"))
    assert (key.limits.requests_per_minute, key.limits.tokens_per_minute, key.limits.tokens_per_day) == (
        60,
        None,
        1_000_000,
    )
    assert key.per_user_limits.tokens_per_minute == 5000
    assert key.budgets == ("default/monthly",)
    assert key.expires_at is not None
    assert key.expires_at.isoformat() == "2030-01-31T00:00:00+02:00"


@pytest.mark.parametrize("value", [0, -5, "60", 1.5, True])
def test_limits_must_be_positive_integers(tmp_path: Path, value: object) -> None:
    error = key_error(tmp_path, limits={"tokensPerMinute": value})

    assert error.field == "spec.limits.tokensPerMinute"
    assert "greater than 0" in error.message or "expected an integer" in error.message


def test_per_user_limits_are_checked_too(tmp_path: Path) -> None:
    error = key_error(tmp_path, perUserLimits={"requestsPerMinute": 0})

    assert error.field == "spec.perUserLimits.requestsPerMinute"


@pytest.mark.parametrize(("models", "field"), [([""], "spec.models[0]"), (["gpt-*", 4], "spec.models[1]")])
def test_model_globs_must_be_non_empty_strings(tmp_path: Path, models: list[object], field: str) -> None:
    assert key_error(tmp_path, models=models).field == field


@pytest.mark.parametrize("value", ["2030-01-31T00:00:00", "next tuesday", "2030-01-31"])
def test_expires_at_must_be_rfc3339_with_an_offset(tmp_path: Path, value: str) -> None:
    error = key_error(tmp_path, expiresAt=value)

    assert error.field == "spec.expiresAt"
    assert "2026-01-31T00:00:00Z" in error.message


# --- Budget -------------------------------------------------------------------------------------------


def test_budget_defaults(tmp_path: Path) -> None:
    (compiled,) = compile_docs(tmp_path, budget(limit="25.00")).config.budgets

    assert compiled.limit_usd == Decimal("25.00")
    assert (compiled.period, compiled.per_user, compiled.thresholds) == ("Monthly", False, (50, 80, 95))
    assert (compiled.action, compiled.failure_policy, compiled.alert_webhook_url) == (
        "Block",
        "FailClosed",
        None,
    )


@pytest.mark.parametrize(
    ("written", "expected"), [(10, "10"), (2.5, "2.5"), (0.1, "0.1"), ("7.125", "7.125")]
)
def test_budget_limit_accepts_numbers_through_str(tmp_path: Path, written: object, expected: str) -> None:
    (compiled,) = compile_docs(tmp_path, budget(limit=written)).config.budgets

    assert str(compiled.limit_usd) == expected


@pytest.mark.parametrize("limit", ["0", 0, "-1", "abc", "NaN", "Infinity", "", True])
def test_budget_limit_must_be_a_positive_decimal(tmp_path: Path, limit: object) -> None:
    error = budget_error(tmp_path, limit=limit)

    assert error.field == "spec.limit"
    assert any(part in error.message for part in ("greater than 0", "decimal number", "finite"))


def test_budget_limit_is_required(tmp_path: Path) -> None:
    doc = resource("Budget", "monthly", {"period": "Daily"})

    assert only_error(compile_docs(tmp_path, doc)).field == "spec.limit"


@pytest.mark.parametrize(
    ("thresholds", "field"), [([0, 50], "spec.thresholds[0]"), ([50, 101], "spec.thresholds[1]")]
)
def test_budget_thresholds_are_percentages(tmp_path: Path, thresholds: list[int], field: str) -> None:
    assert budget_error(tmp_path, thresholds=thresholds).field == field


def test_budget_thresholds_strictly_increase(tmp_path: Path) -> None:
    error = budget_error(tmp_path, thresholds=[50, 95, 80])

    assert error.field == "spec.thresholds[2]"
    assert "strictly increasing: 80 follows 95" in error.message


@pytest.mark.parametrize("url", ["ftp://hooks.example.com", "hooks.example.com/x", "https://"])
def test_budget_webhook_must_be_http(tmp_path: Path, url: str) -> None:
    error = budget_error(tmp_path, alertWebhook={"url": url})

    assert error.field == "spec.alertWebhook.url"
    assert "http" in error.message


def test_budget_enums_are_checked(tmp_path: Path) -> None:
    result = compile_docs(tmp_path, budget(period="Hourly", action="Warn", failurePolicy="Open"))

    assert [e.field for e in result.errors] == ["spec.period", "spec.action", "spec.failurePolicy"]
    assert "'Daily'" in result.errors[0].message


def test_budget_compiles_every_field(tmp_path: Path) -> None:
    spec: dict[str, Any] = {
        "period": "Daily",
        "perUser": True,
        "thresholds": [90],
        "action": "Alert",
        "failurePolicy": "FailOpen",
        "alertWebhook": {"url": "https://hooks.example.com/x?token=1"},
    }
    (compiled,) = compile_docs(tmp_path, budget(**spec)).config.budgets

    assert (compiled.period, compiled.per_user, compiled.thresholds) == ("Daily", True, (90,))
    assert (compiled.action, compiled.failure_policy) == ("Alert", "FailOpen")
    assert compiled.alert_webhook_url == "https://hooks.example.com/x?token=1"


# --- RouteRule ----------------------------------------------------------------------------------------


def test_route_needs_a_backend(tmp_path: Path) -> None:
    error = route_error(tmp_path, backends=[])

    assert error.field == "spec.backends"
    assert error.message == "at least one backend is required"


def test_backend_names_are_unique_within_a_rule(tmp_path: Path) -> None:
    error = route_error(tmp_path, backends=[backend("a"), backend("b"), backend("a")])

    assert error.field == "spec.backends[2].name"
    assert "duplicate name 'a' (also backends[0])" in error.message


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("/v1", "absolute"),
        ("ftp://example.com", "absolute"),
        ("https://example.com/v1?x=1", "query or fragment"),
        ("https://example.com/v1#top", "query or fragment"),
        ("https://user:pw@example.com", "credentials"),
        ("https://example.com:99999", "port"),
    ],
)
def test_base_url_must_be_absolute_http_without_query(tmp_path: Path, url: str, expected: str) -> None:
    error = route_error(tmp_path, backends=[backend(baseURL=url)])

    assert error.field == "spec.backends[0].baseURL"
    assert expected in error.message


def test_base_url_is_stored_without_trailing_slash(tmp_path: Path) -> None:
    result = compile_docs(tmp_path, route(backends=[backend(baseURL="https://llm.internal:8443/v1/")]))

    (compiled,) = result.config.routes[0].backends
    assert compiled.base_url == "https://llm.internal:8443/v1"


@pytest.mark.parametrize(
    ("provider", "model", "url"),
    [
        ("openai", "gpt-4o", "https://api.openai.com/v1"),
        ("anthropic", "claude-3-5-sonnet-latest", "https://api.anthropic.com"),
        ("gemini", "gemini-2.0-flash", "https://generativelanguage.googleapis.com/v1beta/openai"),
    ],
)
def test_base_url_defaults_per_provider(tmp_path: Path, provider: str, model: str, url: str) -> None:
    ref = {"name": "provider", "key": "apiKey"}
    spec = {"name": "p", "provider": provider, "model": model, "credentialsSecretRef": ref}

    result = compile_docs(tmp_path, secret("provider", apiKey="sk-123"), route(backends=[spec]))

    assert result.errors == ()
    assert result.config.routes[0].backends[0].base_url == url


@pytest.mark.parametrize("provider", ["openai-compatible", "azure-openai"])
def test_base_url_is_required_where_there_is_no_default(tmp_path: Path, provider: str) -> None:
    ref = {"name": "provider", "key": "apiKey"}
    spec = {"name": "p", "provider": provider, "model": "gpt-4o", "credentialsSecretRef": ref}

    error = route_error(tmp_path, secret("provider", apiKey="sk-123"), backends=[spec])

    assert error.field == "spec.backends[0].baseURL"
    assert f"required for provider '{provider}'" in error.message


@pytest.mark.parametrize("provider", ["openai", "azure-openai", "anthropic", "gemini"])
def test_credentials_are_required_for_hosted_providers(tmp_path: Path, provider: str) -> None:
    error = route_error(tmp_path, backends=[backend(provider=provider, model="gpt-4o")])

    assert error.field == "spec.backends[0].credentialsSecretRef"
    assert f"required for provider '{provider}'" in error.message


def test_credentials_are_resolved_into_the_backend(tmp_path: Path) -> None:
    ref = {"name": "openai", "key": "apiKey"}
    spec = backend(provider="openai", model="gpt-4o", credentialsSecretRef=ref)

    result = compile_docs(tmp_path, secret("openai", apiKey="sk-live-123"), route(backends=[spec]))

    assert result.errors == ()
    assert result.config.routes[0].backends[0].credential == "sk-live-123"


def test_credentials_secret_must_exist_and_hold_the_key(tmp_path: Path) -> None:
    missing = backend("a", credentialsSecretRef={"name": "nope", "key": "apiKey"})
    no_key = backend("b", credentialsSecretRef={"name": "creds", "key": "apiKey"})

    result = compile_docs(tmp_path, secret("creds", token="x"), route(backends=[missing, no_key]))

    assert [(e.field, e.message) for e in result.errors] == [
        ("spec.backends[0].credentialsSecretRef.name", "Secret default/nope not found"),
        (
            "spec.backends[1].credentialsSecretRef.key",
            "Secret default/creds has no key 'apiKey' (keys: token)",
        ),
    ]


def test_invalid_secret_is_reported_and_refs_to_it_say_so(tmp_path: Path) -> None:
    bad = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "creds"}, "data": {"apiKey": "%%%"}}
    spec = backend(credentialsSecretRef={"name": "creds", "key": "apiKey"})

    result = compile_docs(tmp_path, bad, route(backends=[spec]))

    assert [(e.kind, e.field) for e in result.errors] == [
        ("Secret", "data.apiKey"),
        ("RouteRule", "spec.backends[0].credentialsSecretRef.name"),
    ]
    assert "base64" in result.errors[0].message
    assert "invalid" in result.errors[1].message


@pytest.mark.parametrize(("field", "value"), [("weight", -1), ("priority", -1), ("weight", "2")])
def test_weight_and_priority_are_non_negative_integers(tmp_path: Path, field: str, value: Any) -> None:
    assert route_error(tmp_path, backends=[backend(**{field: value})]).field == f"spec.backends[0].{field}"


def test_weighted_needs_a_positive_weight(tmp_path: Path) -> None:
    error = route_error(
        tmp_path, strategy="Weighted", backends=[backend("a", weight=0), backend("b", weight=0)]
    )

    assert error.field == "spec.backends"
    assert "weight above 0" in error.message


def test_priority_orders_backends_and_other_strategies_keep_declaration_order(tmp_path: Path) -> None:
    backends = [backend("c", priority=2), backend("a", priority=1), backend("b", priority=1), backend("d")]

    result = compile_docs(
        tmp_path,
        route("by-priority", backends=backends),
        route("weighted", strategy="Weighted", backends=backends),
        route("cost", strategy="Cost", backends=backends),
    )

    assert result.errors == ()
    order = {r.name: [b.name for b in r.backends] for r in result.config.routes}
    assert order == {
        "by-priority": ["d", "a", "b", "c"],
        "weighted": ["c", "a", "b", "d"],
        "cost": ["c", "a", "b", "d"],
    }


def test_backend_defaults(tmp_path: Path) -> None:
    (compiled,) = compile_docs(tmp_path, route()).config.routes[0].backends

    assert (compiled.weight, compiled.priority, compiled.pricing, compiled.credential) == (1, 0, None, None)


@pytest.mark.parametrize("field", ["inputPerMillion", "outputPerMillion", "cachedInputPerMillion"])
def test_pricing_must_be_non_negative(tmp_path: Path, field: str) -> None:
    pricing = {"inputPerMillion": "1", "outputPerMillion": "2"} | {field: "-0.5"}

    error = route_error(tmp_path, backends=[backend(pricing=pricing)])

    assert error.field == f"spec.backends[0].pricing.{field}"
    assert "0 or more" in error.message


def test_declared_pricing_is_compiled(tmp_path: Path) -> None:
    pricing = {"inputPerMillion": "0.15", "outputPerMillion": 0.6, "cachedInputPerMillion": "0.075"}

    (compiled,) = compile_docs(tmp_path, route(backends=[backend(pricing=pricing)])).config.routes[0].backends

    assert compiled.pricing is not None
    assert (compiled.pricing.input_per_million, compiled.pricing.output_per_million) == (
        Decimal("0.15"),
        Decimal("0.6"),
    )
    assert compiled.pricing.cached_input_per_million == Decimal("0.075")


def test_backend_without_a_catalogue_price_must_declare_pricing(tmp_path: Path) -> None:
    error = route_error(tmp_path, backends=[backend("llama", model="my-fine-tuned-llama")])

    assert error.field == "spec.backends[0].pricing"
    assert "backend 'llama'" in error.message
    assert "declare pricing" in error.message


def test_fallback_defaults_to_every_backend(tmp_path: Path) -> None:
    result = compile_docs(tmp_path, route(backends=[backend("a"), backend("b"), backend("c")]))

    fallback = result.config.routes[0].fallback
    assert (fallback.on_status, fallback.on_timeout, fallback.max_attempts) == (
        (429, 500, 502, 503, 504),
        True,
        3,
    )


def test_fallback_max_attempts_may_exceed_the_backends(tmp_path: Path) -> None:
    # A third attempt goes back to the first backend (after its retry-after, when it gave one).
    fallback = {"maxAttempts": 5, "onStatus": [503, 429], "onTimeout": False}

    result = compile_docs(tmp_path, route(backends=[backend("a"), backend("b")], fallback=fallback))

    compiled = result.config.routes[0].fallback
    assert (compiled.max_attempts, compiled.on_status, compiled.on_timeout) == (5, (429, 503), False)


def test_azure_backend_gets_a_default_api_version(tmp_path: Path) -> None:
    ref = {"name": "azure", "key": "apiKey"}
    url = "https://res.openai.azure.com/openai/deployments/gpt-4o-mini"
    azure = backend("az", provider="azure-openai", baseURL=url, credentialsSecretRef=ref)
    pinned = backend(
        "az2", provider="azure-openai", baseURL=url, credentialsSecretRef=ref, apiVersion="2025-04-01-preview"
    )

    result = compile_docs(tmp_path, secret("azure", apiKey="azure-key"), route(backends=[azure, pinned]))

    assert result.errors == ()
    assert [b.api_version for b in result.config.routes[0].backends] == ["2024-10-21", "2025-04-01-preview"]
    assert result.config.routes[0].backends[0].credential == "azure-key"


def test_api_version_is_only_for_azure_and_must_look_like_one(tmp_path: Path) -> None:
    error = route_error(tmp_path, backends=[backend(apiVersion="2024-10-21")])
    assert error.field == "spec.backends[0].apiVersion"
    assert "only azure-openai backends" in error.message

    ref = {"name": "azure", "key": "apiKey"}
    url = "https://res.openai.azure.com/openai/deployments/gpt-4o-mini"
    bad = backend(provider="azure-openai", baseURL=url, credentialsSecretRef=ref, apiVersion="yesterday")
    error = route_error(tmp_path, secret("azure", apiKey="k"), backends=[bad])
    assert error.field == "spec.backends[0].apiVersion"
    assert "'yesterday'" in error.message


def test_sticky_user_is_compiled_for_weighted_rules_only(tmp_path: Path) -> None:
    backends = [backend("a", weight=80), backend("b", weight=20)]
    result = compile_docs(tmp_path, route(strategy="Weighted", stickyUser=True, backends=backends))
    assert result.config.routes[0].sticky_user is True
    assert compile_docs(tmp_path, route()).config.routes[0].sticky_user is False

    error = route_error(tmp_path, strategy="Cost", stickyUser=True)
    assert error.field == "spec.stickyUser"
    assert "only to strategy Weighted" in error.message


def test_missing_credentials_secret_is_named(tmp_path: Path) -> None:
    ref = {"name": "anthropic-credentials", "key": "apiKey"}
    spec = backend("claude", provider="anthropic", model="claude-sonnet-4-5", credentialsSecretRef=ref)
    del spec["baseURL"]

    error = route_error(tmp_path, backends=[spec])

    assert error.field == "spec.backends[0].credentialsSecretRef.name"
    assert "Secret default/anthropic-credentials not found" in error.message


@pytest.mark.parametrize(
    ("fallback", "field"),
    [
        ({"onStatus": [399]}, "spec.fallback.onStatus[0]"),
        ({"onStatus": [500, 600]}, "spec.fallback.onStatus[1]"),
        ({"maxAttempts": 0}, "spec.fallback.maxAttempts"),
        ({"maxAttempts": 11}, "spec.fallback.maxAttempts"),
    ],
)
def test_fallback_ranges(tmp_path: Path, fallback: dict[str, Any], field: str) -> None:
    assert route_error(tmp_path, fallback=fallback).field == field


@pytest.mark.parametrize(
    ("timeout", "ms"), [("30s", 30_000), ("1500ms", 1500), ("2m", 120_000), ("1m30s", 90_000), ("1.5s", 1500)]
)
def test_timeout_durations(tmp_path: Path, timeout: str, ms: int) -> None:
    assert compile_docs(tmp_path, route(timeout=timeout)).config.routes[0].timeout_ms == ms


def test_timeout_defaults_to_60s(tmp_path: Path) -> None:
    assert compile_docs(tmp_path, route()).config.routes[0].timeout_ms == 60_000


@pytest.mark.parametrize("timeout", ["30", 30, "fast", "0s", "-5s", "0.5ms"])
def test_timeout_parse_errors_name_the_field(tmp_path: Path, timeout: object) -> None:
    error = route_error(tmp_path, timeout=timeout)

    assert error.field == "spec.timeout"
    assert repr(timeout) in error.message


def test_provider_must_be_known(tmp_path: Path) -> None:
    error = route_error(tmp_path, backends=[backend(provider="OpenAI")])

    assert error.field == "spec.backends[0].provider"
    assert "'openai-compatible'" in error.message


def test_two_rules_for_one_model_fail_on_the_later_in_the_folder(tmp_path: Path) -> None:
    result = compile_docs(
        tmp_path, route("chat", "zeta", model="gpt-4o"), route("chat", "alpha", model="gpt-4o")
    )

    error = only_error(result)
    assert (error.namespace, error.field, error.reason) == ("alpha", "spec.model", "ModelConflict")
    assert "already routed by RouteRule zeta/chat, the older claim" in error.message
    assert [r.id for r in result.config.routes] == ["zeta-chat"]


def test_route_ids_are_slugs_and_unique(tmp_path: Path) -> None:
    result = compile_docs(tmp_path, route("b-c", "a", model="one"), route("c", "a-b", model="two"))

    error = only_error(result)
    assert (error.namespace, error.name, error.field) == ("a-b", "c", "metadata.name")
    assert "route id 'a-b-c' is already used by RouteRule a/b-c" in error.message
    assert [r.id for r in result.config.routes] == ["a-b-c"]


def test_route_id_replaces_dots(tmp_path: Path) -> None:
    assert compile_docs(tmp_path, route("chat.v2")).config.routes[0].id == "default-chat-v2"


def test_backend_names_are_dns_labels(tmp_path: Path) -> None:
    error = route_error(tmp_path, backends=[backend("Primary_OpenAI")])

    assert error.field == "spec.backends[0].name"
    assert "DNS label" in error.message


def test_null_fields_mean_not_set(tmp_path: Path) -> None:
    result = compile_docs(tmp_path, key_secret(), vkey(owner=None, limits=None, expiresAt=None))

    assert result.errors == ()
    assert result.config.keys[0].limits.empty


# --- tenants: one namespace cannot take over, read or spend through another's resources -----------------


def cluster(doc: dict[str, Any], created: str) -> Manifest:
    """A manifest as the operator reads it from the API server, with its creationTimestamp."""
    doc["metadata"]["creationTimestamp"] = created
    return Manifest.from_object(doc, source="cluster")


def mock_backend(port: int) -> list[dict[str, Any]]:
    return [backend(baseURL=f"http://127.0.0.1:{port}/v1")]


def test_a_newer_rule_in_another_namespace_cannot_take_over_a_model() -> None:
    working = cluster(route("gpt-4o", "team-z", backends=mock_backend(9000)), "2026-01-01T00:00:00Z")
    # Sorts first by namespace/name, the old winner rule; it is newer, so it is the one refused.
    intruder = cluster(route("gpt-4o", "aaa", backends=mock_backend(6666)), "2026-06-01T00:00:00Z")

    for order in ([working, intruder], [intruder, working]):
        result = compile_manifests(order)
        error = only_error(result)
        assert (error.kind, error.namespace, error.name) == ("RouteRule", "aaa", "gpt-4o")
        assert (error.field, error.reason) == ("spec.model", "ModelConflict")
        assert "already routed by RouteRule team-z/gpt-4o, the older claim" in error.message
        (served,) = result.config.routes
        assert (served.namespace, served.backends[0].base_url) == ("team-z", "http://127.0.0.1:9000/v1")
        assert ("RouteRule", "aaa", "gpt-4o") not in result.accepted


def test_claims_made_in_the_same_second_go_to_namespace_then_name() -> None:
    same = "2026-01-01T00:00:00Z"
    result = compile_manifests(
        [cluster(route("chat", "beta", model="m"), same), cluster(route("chat", "alpha", model="m"), same)]
    )
    assert only_error(result).namespace == "beta"
    assert [r.namespace for r in result.config.routes] == ["alpha"]


def test_a_newer_key_with_the_same_value_cannot_displace_the_older() -> None:
    same = "tw-same-0123456789abcdef"
    old = cluster(vkey("z", "team-z"), "2026-01-01T00:00:00Z")
    new = cluster(vkey("a", "aaa"), "2026-02-01T00:00:00Z")
    secrets = [
        Manifest.from_object(key_secret(n, same, ns), source="cluster")
        for n, ns in (("z", "team-z"), ("a", "aaa"))
    ]

    result = compile_manifests([new, old, *secrets])

    assert (only_error(result).namespace, only_error(result).name) == ("aaa", "a")
    assert [k.id for k in result.config.keys] == ["team-z/z"]


def tenants(*extra: dict[str, Any], **route_a: Any) -> CompileResult:
    """team-a routes gpt-4o with its own provider key; team-b has a key and a route of its own."""
    return compile_manifests(
        Manifest.from_object(doc, source="test")
        for doc in (
            secret("openai", "team-a", apiKey="sk-team-a-secret"),
            route(
                "gpt-4o",
                "team-a",
                backends=[backend(credentialsSecretRef={"name": "openai", "key": "apiKey"})],
                **route_a,
            ),
            route("cheap", "team-b"),
            key_secret("a", namespace="team-a"),
            vkey("a", "team-a"),
            key_secret("b", namespace="team-b"),
            vkey("b", "team-b"),
            *extra,
        )
    )


def loaded_keys(result: CompileResult) -> dict[str, VirtualKey]:
    """The keys as the sidecar holds them once the published config has loaded."""
    config = parse_config(result.config.model_dump_json().encode(), "test")
    return {key.id: key for key in CompiledConfig.build(config).keys_by_hash.values()}


def test_a_key_reaches_only_the_routes_of_its_own_namespace() -> None:
    result = tenants()
    assert result.errors == ()
    keys = loaded_keys(result)
    assert keys["team-a/a"].reachable_models == ("gpt-4o",)
    assert keys["team-b/b"].reachable_models == ("cheap",)
    # What the sidecar answers: 403 for the call, and GET /v1/models does not list it.
    assert not model_allowed(keys["team-b/b"], "gpt-4o")
    assert model_allowed(keys["team-a/a"], "gpt-4o")
    compiled = CompiledConfig.build(result.config)
    assert [r.model for r in compiled.models_for(keys["team-b/b"])] == ["cheap"]


def test_the_published_config_says_who_may_use_a_route_once_per_route() -> None:
    result = tenants(allowedNamespaces=["team-c", "team-b"])
    published = json.loads(result.config.model_dump_json())
    assert [r["allowed_namespaces"] for r in published["routes"]] == [["team-b", "team-c"], []]
    assert all("reachable_models" not in key for key in published["keys"])  # no keys x routes lists


def test_allowed_namespaces_opens_a_route_to_the_namespaces_it_lists() -> None:
    key_b = loaded_keys(tenants(allowedNamespaces=["team-b"]))["team-b/b"]
    assert key_b.reachable_models == ("cheap", "gpt-4o")
    assert model_allowed(key_b, "gpt-4o")

    everyone = tenants(vkey("c", "team-c"), key_secret("c", namespace="team-c"), allowedNamespaces=["*"])
    assert everyone.errors == ()
    assert loaded_keys(everyone)["team-c/c"].reachable_models == ("gpt-4o",)


def test_a_key_s_own_models_list_still_applies_to_an_allowed_route() -> None:
    key_c_docs = (vkey("c", "team-c", models=["cheap*"]), key_secret("c", namespace="team-c"))
    key_c = loaded_keys(tenants(*key_c_docs, allowedNamespaces=["team-c"]))["team-c/c"]
    assert key_c.reachable_models == ("gpt-4o",)
    assert not model_allowed(key_c, "gpt-4o")


@pytest.mark.parametrize(
    ("value", "problem"),
    [(["Team_B"], "expected a namespace (a DNS"), (["team-b", "team-b"], "duplicate namespace 'team-b'")],
)
def test_allowed_namespaces_are_namespace_names_or_a_star(value: list[str], problem: str) -> None:
    result = tenants(allowedNamespaces=value)
    error = only_error(result)
    assert error.field.startswith("spec.allowedNamespaces[")
    assert problem in error.message


def test_a_key_cannot_spend_from_another_namespace_s_budget() -> None:
    result = tenants(
        budget("shared", "team-a"),
        vkey("thief", "team-b", budgetRefs=["shared"]),
        key_secret("thief", namespace="team-b"),
    )
    error = only_error(result)
    assert (error.namespace, error.name, error.reason) == ("team-b", "thief", "BudgetNotFound")
    assert "Budget team-b/shared not found" in error.message
    assert "team-b/thief" not in {k.id for k in result.config.keys}


def test_a_rule_cannot_use_another_namespace_s_provider_credentials() -> None:
    result = tenants(
        route("mine", "team-b", backends=[backend(credentialsSecretRef={"name": "openai", "key": "apiKey"})])
    )
    error = only_error(result)
    assert (error.namespace, error.name, error.reason) == ("team-b", "mine", "SecretNotFound")
    assert "Secret team-b/openai not found" in error.message
    assert [r.id for r in result.config.routes] == ["team-a-gpt-4o", "team-b-cheap"]
