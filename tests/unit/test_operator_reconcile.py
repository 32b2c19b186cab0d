"""The operator's pass over the cluster, with an in-memory stand-in for the Kubernetes API.

Kopf's indexes are plain dicts of (namespace, name) -> [snapshot] here, which is the shape a
`kopf.Index` has; the API calls land in `FakeKube`, which can be told to fail.
"""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

import kopf
import pytest

from tollway_operator.cluster import (
    BUDGET,
    ROUTERULE,
    VIRTUALKEY,
    ClusterView,
    Resource,
    snapshot_resource,
    snapshot_secret,
)
from tollway_operator.publish import CHECKSUM_ANNOTATION, CONFIG_KEY
from tollway_operator.reconcile import Reconciler
from tollway_operator.settings import OperatorSettings
from tollway_sidecar.config.loader import parse_config

NS = "team-a"
MOCK = {
    "name": "mock",
    "provider": "openai-compatible",
    "model": "gpt-4o-mini",
    "baseURL": "http://127.0.0.1:9/v1",
}


class FakeKube:
    def __init__(self) -> None:
        self.secrets: dict[tuple[str, str], dict[str, Any]] = {}
        self.statuses: list[tuple[str, str, str, dict[str, Any]]] = []
        self.events: list[dict[str, Any]] = []
        self.fail_publish: BaseException | None = None
        self.fail_create: BaseException | None = None
        self.version = 0

    async def get_secret(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.secrets.get((namespace, name))

    async def create_secret(self, namespace: str, body: dict[str, Any]) -> dict[str, Any] | None:
        if self.fail_create is not None:
            raise self.fail_create
        key = (namespace, body["metadata"]["name"])
        if key in self.secrets:
            return None
        self.version += 1
        stored = json.loads(json.dumps(body))
        stored["metadata"]["resourceVersion"] = str(self.version)
        self.secrets[key] = stored
        return stored

    async def replace_secret(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        if self.fail_publish is not None:
            raise self.fail_publish
        key = (namespace, body["metadata"]["name"])
        assert body["metadata"]["resourceVersion"] == self.secrets[key]["metadata"]["resourceVersion"]
        self.version += 1
        stored = json.loads(json.dumps(body))
        stored["metadata"]["resourceVersion"] = str(self.version)
        self.secrets[key] = stored
        return stored

    async def patch_status(self, kind: Any, namespace: str, name: str, status: dict[str, Any]) -> bool:
        self.statuses.append((kind.name, namespace, name, status))
        return True

    async def create_event(self, namespace: str, body: dict[str, Any]) -> None:
        self.events.append(body)


class Cluster:
    """Kopf-shaped indexes that tests edit, plus the reconciler reading them."""

    def __init__(self, **settings: Any) -> None:
        self.indexes: dict[str, dict[tuple[str, str], list[Any]]] = {
            VIRTUALKEY.name: {},
            BUDGET.name: {},
            ROUTERULE.name: {},
        }
        self.secret_index: dict[tuple[str, str], list[Any]] = {}
        self.kube = FakeKube()
        self.settings = OperatorSettings(config_secret="tollway-system/gw", health_port=None, **settings)
        self.reconciler = Reconciler(self.settings, self.kube, ClusterView(self.indexes, self.secret_index))  # type: ignore[arg-type]
        self.uid = 0

    def apply(self, kind: str, name: str, spec: dict[str, Any], generation: int = 1) -> Resource:
        self.uid += 1
        body = {
            "metadata": {"name": name, "namespace": NS, "uid": f"uid-{name}", "generation": generation},
            "spec": spec,
        }
        resource = snapshot_resource(kind, body)
        self.indexes[kind][(NS, name)] = [resource]
        return resource

    def delete(self, kind: str, name: str) -> None:
        del self.indexes[kind][(NS, name)]

    def secret(self, name: str, **values: str) -> None:
        body = {
            "metadata": {"name": name, "namespace": NS},
            "type": "Opaque",
            "data": {k: base64.b64encode(v.encode()).decode() for k, v in values.items()},
        }
        self.secret_index[(NS, name)] = [snapshot_secret(body)]

    def sync_created_secrets(self) -> None:
        """What Kopf's Secret index would show after the API created them."""
        for (namespace, name), body in self.kube.secrets.items():
            if (namespace, name) != self.settings.config_secret_id:
                self.secret_index[(namespace, name)] = [snapshot_secret(body)]

    def sync_statuses(self) -> None:
        """What the indexes would show after the status patches."""
        for kind, namespace, name, status in self.kube.statuses:
            for i, r in enumerate(self.indexes[kind].get((namespace, name), [])):
                merged = {**r.status, **status}
                self.indexes[kind][(namespace, name)][i] = Resource(
                    r.kind, r.namespace, r.name, r.uid, r.generation, r.spec, merged
                )
        self.kube.statuses.clear()

    def published(self) -> Any:
        secret = self.kube.secrets[self.settings.config_secret_id]
        return parse_config(base64.b64decode(secret["data"][CONFIG_KEY]), "test")

    def conditions(self, kind: str, name: str) -> dict[str, dict[str, Any]]:
        for k, _ns, n, status in reversed(self.kube.statuses):
            if (k, n) == (kind, name) and "conditions" in status:
                return {c["type"]: c for c in status["conditions"]}
        raise AssertionError(f"no conditions written for {kind} {name}")


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@pytest.fixture
def cluster() -> Cluster:
    c = Cluster()
    c.secret("team-a-key", key="tw-team-a-0123456789abcdef")
    c.apply(
        VIRTUALKEY.name,
        "team-a",
        {"secretRef": {"name": "team-a-key", "key": "key"}, "budgetRefs": ["monthly"]},
    )
    c.apply(BUDGET.name, "monthly", {"limit": "10.00", "thresholds": [50, 80]})
    c.apply(ROUTERULE.name, "chat", {"model": "gpt-4o-mini", "backends": [MOCK]})
    return c


async def test_a_pass_publishes_the_config_with_its_checksum(cluster: Cluster) -> None:
    result = await cluster.reconciler.reconcile_once()

    config = cluster.published()
    assert config.checksum == result.config.checksum
    assert [k.key_sha256 for k in config.keys] == [sha("tw-team-a-0123456789abcdef")]
    assert [r.model for r in config.routes] == ["gpt-4o-mini"]
    secret = cluster.kube.secrets[("tollway-system", "gw")]
    assert secret["metadata"]["annotations"][CHECKSUM_ANNOTATION] == config.checksum
    for kind, name in [(VIRTUALKEY.name, "team-a"), (BUDGET.name, "monthly"), (ROUTERULE.name, "chat")]:
        conditions = cluster.conditions(kind, name)
        assert {t: c["status"] for t, c in conditions.items()} == {
            "Accepted": "True",
            "ResolvedRefs": "True",
            "Ready": "True",
        }
        assert all(c["observedGeneration"] == 1 for c in conditions.values())


async def test_the_secret_is_written_only_when_the_checksum_changes(cluster: Cluster) -> None:
    await cluster.reconciler.reconcile_once()
    cluster.sync_statuses()
    version = cluster.kube.secrets[("tollway-system", "gw")]["metadata"]["resourceVersion"]

    await cluster.reconciler.reconcile_once()
    assert cluster.kube.secrets[("tollway-system", "gw")]["metadata"]["resourceVersion"] == version
    assert cluster.kube.statuses == []  # nothing changed: nothing written

    cluster.apply(BUDGET.name, "monthly", {"limit": "20.00"}, generation=2)
    await cluster.reconciler.reconcile_once()
    assert cluster.kube.secrets[("tollway-system", "gw")]["metadata"]["resourceVersion"] != version
    assert str(cluster.published().budgets[0].limit_usd) == "20.00"
    assert cluster.conditions(BUDGET.name, "monthly")["Ready"]["observedGeneration"] == 2


async def test_a_restarted_operator_does_not_rewrite_an_unchanged_config(cluster: Cluster) -> None:
    await cluster.reconciler.reconcile_once()
    version = cluster.kube.secrets[("tollway-system", "gw")]["metadata"]["resourceVersion"]
    restarted = Reconciler(cluster.settings, cluster.kube, cluster.reconciler.view)  # type: ignore[arg-type]

    await restarted.reconcile_once()

    assert cluster.kube.secrets[("tollway-system", "gw")]["metadata"]["resourceVersion"] == version
    assert restarted.publisher.writes == 0


async def test_an_invalid_resource_is_reported_and_the_rest_still_published(cluster: Cluster) -> None:
    cluster.apply(
        ROUTERULE.name,
        "broken",
        {"model": "gpt-4o", "backends": [{**MOCK, "credentialsSecretRef": {"name": "nope", "key": "k"}}]},
    )
    cluster.apply(ROUTERULE.name, "bad-timeout", {"model": "o1", "backends": [MOCK], "timeout": "soon"})

    await cluster.reconciler.reconcile_once()

    assert [r.model for r in cluster.published().routes] == ["gpt-4o-mini"]
    broken = cluster.conditions(ROUTERULE.name, "broken")
    assert broken["ResolvedRefs"]["status"] == "False"
    assert broken["ResolvedRefs"]["reason"] == "SecretNotFound"
    assert broken["ResolvedRefs"]["message"] == (
        "spec.backends[0].credentialsSecretRef.name: Secret team-a/nope not found"
    )
    assert (broken["Accepted"]["status"], broken["Ready"]["status"]) == ("False", "False")
    bad = cluster.conditions(ROUTERULE.name, "bad-timeout")
    assert bad["Accepted"]["reason"] == "Invalid"
    assert bad["Accepted"]["message"].startswith("spec.timeout: expected a duration")
    assert bad["ResolvedRefs"]["status"] == "True"
    assert cluster.conditions(ROUTERULE.name, "chat")["Ready"]["status"] == "True"


async def test_a_key_is_minted_once_owned_by_its_virtualkey(cluster: Cluster) -> None:
    vk = cluster.apply(VIRTUALKEY.name, "minted", {})

    await cluster.reconciler.reconcile_once()

    secret = cluster.kube.secrets[(NS, "tollway-key-minted")]
    key = base64.b64decode(secret["data"]["key"]).decode()
    assert key.startswith("tw-")
    assert len(base64.urlsafe_b64decode(key[3:] + "=")) >= 32
    (owner,) = secret["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["name"], owner["uid"], owner["controller"]) == (
        "VirtualKey",
        "minted",
        vk.uid,
        True,
    )
    assert sha(key) in {k.key_sha256 for k in cluster.published().keys}  # in the same pass
    assert cluster.conditions(VIRTUALKEY.name, "minted")["Ready"]["status"] == "True"
    assert cluster.kube.statuses[-1][3].get("keySecret") or any(
        s[2] == "minted" and s[3].get("keySecret") == "tollway-key-minted" for s in cluster.kube.statuses
    )

    # Restart: the Secret is in the index, so nothing is minted again and the key stays the same.
    cluster.sync_created_secrets()
    restarted = Reconciler(cluster.settings, cluster.kube, cluster.reconciler.view)  # type: ignore[arg-type]
    await restarted.reconcile_once()
    assert base64.b64decode(cluster.kube.secrets[(NS, "tollway-key-minted")]["data"]["key"]).decode() == key


async def test_a_minted_secret_that_already_exists_is_never_overwritten(cluster: Cluster) -> None:
    cluster.apply(VIRTUALKEY.name, "minted", {})
    cluster.kube.secrets[(NS, "tollway-key-minted")] = {"metadata": {"name": "x"}, "data": {"key": "b2xk"}}

    await cluster.reconciler.reconcile_once()  # the index has not seen it yet: create answers 409

    assert cluster.kube.secrets[(NS, "tollway-key-minted")]["data"] == {"key": "b2xk"}


async def test_a_failed_mint_names_the_api_error(cluster: Cluster) -> None:
    await cluster.reconciler.reconcile_once()  # the config Secret exists: only minting creates
    cluster.apply(VIRTUALKEY.name, "minted", {})
    cluster.kube.fail_create = kopf.PermanentError(
        "creating Secret team-a/tollway-key-minted: HTTP 403: forbidden"
    )

    with pytest.raises(kopf.TemporaryError):
        await cluster.reconciler.reconcile_once()

    refs = cluster.conditions(VIRTUALKEY.name, "minted")["ResolvedRefs"]
    assert refs["reason"] == "KeyNotMinted"
    assert "HTTP 403: forbidden" in refs["message"]
    assert cluster.conditions(VIRTUALKEY.name, "team-a")["Ready"]["status"] == "True"


async def test_a_failed_publish_says_so_on_every_resource_and_is_retried(cluster: Cluster) -> None:
    await cluster.reconciler.reconcile_once()
    cluster.sync_statuses()
    cluster.apply(BUDGET.name, "monthly", {"limit": "30"}, generation=2)
    cluster.kube.fail_publish = kopf.TemporaryError("updating Secret tollway-system/gw: HTTP 503", delay=5)

    with pytest.raises(kopf.TemporaryError):
        await cluster.reconciler.reconcile_once()

    ready = cluster.conditions(BUDGET.name, "monthly")["Ready"]
    assert (ready["status"], ready["reason"]) == ("False", "PublishFailed")
    assert "HTTP 503" in ready["message"]


async def test_deleting_a_virtualkey_removes_its_key(cluster: Cluster) -> None:
    await cluster.reconciler.reconcile_once()
    cluster.delete(VIRTUALKEY.name, "team-a")

    await cluster.reconciler.reconcile_once()

    assert cluster.published().keys == ()


async def test_status_only_events_do_not_ask_for_a_pass(cluster: Cluster) -> None:
    reconciler = cluster.reconciler
    body = {"metadata": {"name": "monthly", "namespace": NS, "uid": "uid-monthly", "generation": 1}}
    reconciler.request()  # the first event marks the indexes as complete
    await reconciler.reconcile_once()
    reconciler._dirty.clear()

    reconciler.resource_changed(BUDGET.name, "MODIFIED", body)  # e.g. our own status patch
    assert not reconciler._dirty.is_set()
    reconciler.resource_changed(BUDGET.name, "MODIFIED", {"metadata": {**body["metadata"], "generation": 2}})
    assert reconciler._dirty.is_set()
    reconciler._dirty.clear()
    reconciler.resource_changed(BUDGET.name, "DELETED", body)
    assert reconciler._dirty.is_set()


async def test_only_secrets_that_matter_ask_for_a_pass(cluster: Cluster) -> None:
    reconciler = cluster.reconciler
    reconciler.request()
    await reconciler.reconcile_once()
    reconciler._dirty.clear()

    reconciler.secret_changed(NS, "unrelated")
    assert not reconciler._dirty.is_set()
    reconciler.secret_changed(NS, "team-a-key")
    assert reconciler._dirty.is_set()
    reconciler._dirty.clear()
    reconciler.secret_changed(NS, "tollway-key-team-a-never-minted")
    assert not reconciler._dirty.is_set()
    reconciler.secret_changed("tollway-system", "gw")  # our output, edited or deleted by someone
    assert reconciler._dirty.is_set()
    assert reconciler.publisher.published is None


async def test_a_deleted_config_secret_is_published_again(cluster: Cluster) -> None:
    await cluster.reconciler.reconcile_once()
    del cluster.kube.secrets[("tollway-system", "gw")]
    cluster.reconciler.secret_changed("tollway-system", "gw")

    await cluster.reconciler.reconcile_once()

    assert ("tollway-system", "gw") in cluster.kube.secrets


def _sample(cluster: Cluster, name: str, labels: dict[str, str] | None = None) -> float:
    value = cluster.reconciler.metrics.registry.get_sample_value(name, labels or {})
    return 0.0 if value is None else value


async def test_metrics_count_passes_publishes_and_errors(cluster: Cluster) -> None:
    await cluster.reconciler.reconcile_once()
    cluster.sync_statuses()
    await cluster.reconciler.reconcile_once()  # unchanged: a pass, no publish
    assert _sample(cluster, "tollway_operator_reconciles_total", {"result": "ok"}) == 2
    assert _sample(cluster, "tollway_operator_config_publishes_total") == 1
    version = cluster.published().version
    assert _sample(cluster, "tollway_operator_config_info", {"version": version}) == 1
    assert _sample(cluster, "tollway_operator_resources", {"kind": BUDGET.name, "accepted": "true"}) == 1

    cluster.apply(BUDGET.name, "broken", {"limit": "-1"})  # invalid: left out, reported
    cluster.apply(BUDGET.name, "monthly", {"limit": "11.00"}, generation=2)  # a new config to publish
    cluster.kube.fail_publish = kopf.TemporaryError("HTTP 503", delay=5)
    with pytest.raises(kopf.TemporaryError):
        await cluster.reconciler.reconcile_once()
    assert _sample(cluster, "tollway_operator_reconciles_total", {"result": "temporary_error"}) == 1
    assert _sample(cluster, "tollway_operator_resources", {"kind": BUDGET.name, "accepted": "false"}) == 1
    assert _sample(cluster, "tollway_operator_compile_errors") >= 1
    assert _sample(cluster, "tollway_operator_reconcile_duration_seconds_count") == 3
