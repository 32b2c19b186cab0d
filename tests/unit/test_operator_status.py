"""Conditions the operator writes, the reasons the compiler gives them, and the operator's settings."""

from __future__ import annotations

from typing import Any

import pytest

from tollway_operator.cluster import Resource, snapshot_secret
from tollway_operator.compile import REFERENCE_REASONS, Manifest, compile_manifests
from tollway_operator.settings import OperatorSettings
from tollway_operator.status import Publication, conditions_for, merged_conditions, status_patch

API = "tollway.dev/v1alpha1"


def manifest(kind: str, name: str, spec: dict[str, Any]) -> Manifest:
    body = {"apiVersion": API, "kind": kind, "metadata": {"name": name, "namespace": "ns"}, "spec": spec}
    return Manifest.from_object(body, source="cluster")


@pytest.mark.parametrize(
    ("spec", "reason"),
    [
        ({"secretRef": {"name": "missing", "key": "k"}}, "SecretNotFound"),
        ({"secretRef": {"name": "key", "key": "other"}}, "SecretKeyNotFound"),
        ({"secretRef": {"name": "key", "key": "k"}, "budgetRefs": ["nope"]}, "BudgetNotFound"),
        ({}, "KeyNotMinted"),
        ({"secretRef": {"name": "short", "key": "k"}}, "Invalid"),
    ],
)
def test_compile_errors_say_which_reference_failed(spec: dict[str, Any], reason: str) -> None:
    secrets = [
        Manifest.from_object(
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": n, "namespace": "ns"},
                "stringData": {"k": v},
            },
            source="cluster",
        )
        for n, v in (("key", "tw-0123456789abcdef0123"), ("short", "tw-1"))
    ]
    result = compile_manifests([*secrets, manifest("VirtualKey", "vk", spec)])
    (error,) = result.errors
    assert error.reason == reason
    assert (error.reason in REFERENCE_REASONS) == (reason != "Invalid")


RESOURCE = Resource("RouteRule", "ns", "chat", "uid", 3, {}, {})
PUBLISHED = Publication(True, "tollway-system/gw")


def test_a_good_resource_is_accepted_resolved_and_ready() -> None:
    conditions = conditions_for(RESOURCE, [], True, PUBLISHED)
    assert [(c.type, c.status, c.reason, c.observed_generation) for c in conditions] == [
        ("Accepted", "True", "Accepted", 3),
        ("ResolvedRefs", "True", "ResolvedRefs", 3),
        ("Ready", "True", "Published", 3),
    ]


def test_last_transition_time_moves_only_with_the_status() -> None:
    first = merged_conditions([], conditions_for(RESOURCE, [], True, PUBLISHED), "2026-01-01T00:00:00Z")
    again = merged_conditions(first, conditions_for(RESOURCE, [], True, PUBLISHED), "2026-01-02T00:00:00Z")
    assert [c["lastTransitionTime"] for c in again] == ["2026-01-01T00:00:00Z"] * 3
    failed = Publication(False, "tollway-system/gw", "HTTP 503")
    later = merged_conditions(again, conditions_for(RESOURCE, [], True, failed), "2026-01-03T00:00:00Z")
    assert {c["type"]: c["lastTransitionTime"] for c in later} == {
        "Accepted": "2026-01-01T00:00:00Z",
        "ResolvedRefs": "2026-01-01T00:00:00Z",
        "Ready": "2026-01-03T00:00:00Z",
    }


def test_no_patch_when_the_status_already_says_it() -> None:
    conditions = conditions_for(RESOURCE, [], True, PUBLISHED)
    patch = status_patch(RESOURCE, conditions, "2026-01-01T00:00:00Z")
    assert patch is not None and patch["observedGeneration"] == 3
    written = Resource("RouteRule", "ns", "chat", "uid", 3, {}, patch)
    assert status_patch(written, conditions, "2026-01-05T00:00:00Z") is None


def test_large_secrets_of_other_types_are_indexed_without_their_data() -> None:
    helm = snapshot_secret(
        {
            "metadata": {"name": "sh.helm.release.v1.x.v1", "namespace": "ns"},
            "type": "helm.sh/release.v1",
            "data": {"release": "QUFB" * 1000},
        }
    )
    opaque = snapshot_secret({"metadata": {"name": "creds", "namespace": "ns"}, "data": {"apiKey": "c2s="}})
    assert helm.data == {}
    assert opaque.data == {"apiKey": "c2s="} and opaque.type == "Opaque"


def test_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOLLWAY_OPERATOR_CONFIG_SECRET", "gw-ns/gw")
    monkeypatch.setenv("TOLLWAY_OPERATOR_NAMESPACES", "team-a, team-b")
    monkeypatch.setenv("TOLLWAY_OPERATOR_SPEND_INTERVAL", "1m30s")
    monkeypatch.setenv("TOLLWAY_REDIS_URL", "redis://127.0.0.1:6379/0")
    settings = OperatorSettings()
    assert settings.config_secret_id == ("gw-ns", "gw")
    assert settings.namespaces == ["team-a", "team-b"] and not settings.clusterwide
    assert settings.spend_interval == 90.0
    assert settings.redis_url == "redis://127.0.0.1:6379/0"


@pytest.mark.parametrize(("field", "value"), [("config_secret", "no-slash"), ("spend_interval", "0s")])
def test_bad_settings_are_refused(field: str, value: str) -> None:
    with pytest.raises(ValueError, match=field):
        OperatorSettings(**{field: value})
