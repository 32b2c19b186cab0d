"""The operator serves the last good generation of a resource whose new generation passes the API
server but does not compile, says so in its conditions, and keeps doing so after a restart."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest
from test_operator_reconcile import MOCK, Cluster

from tollway_operator.cluster import BUDGET, ROUTERULE, VIRTUALKEY
from tollway_operator.reconcile import Reconciler


@pytest.fixture
def cluster() -> Cluster:
    """A key with a budget, and a route."""
    c = Cluster()
    c.secret("team-a-key", key="tw-team-a-0123456789abcdef")
    c.apply(
        VIRTUALKEY.name,
        "team-a",
        {"secretRef": {"name": "team-a-key", "key": "key"}, "budgetRefs": ["monthly"]},
    )
    c.apply(BUDGET.name, "monthly", {"limit": "10.00"})
    c.apply(ROUTERULE.name, "chat", {"model": "gpt-4o-mini", "backends": [MOCK]})
    return c


def last_status(c: Cluster, kind: str, name: str) -> dict[str, object]:
    for k, _ns, n, status in reversed(c.kube.statuses):
        if (k, n) == (kind, name):
            return status
    raise AssertionError(f"no status written for {kind} {name}")


async def test_a_rejected_generation_leaves_the_previous_one_served_and_says_so(cluster: Cluster) -> None:
    await cluster.reconciler.reconcile_once()
    cluster.sync_statuses()
    assert cluster.indexes[BUDGET.name][("team-a", "monthly")][0].status["servedGeneration"] == 1

    cluster.apply(BUDGET.name, "monthly", {"limit": "-1"}, generation=2)
    await cluster.reconciler.reconcile_once()

    config = cluster.published()
    assert [b.limit_usd for b in config.budgets] == [Decimal("10.00")]
    assert [k.name for k in config.keys] == ["team-a"]  # its key is not left out for it either
    conditions = cluster.conditions(BUDGET.name, "monthly")
    accepted, ready = conditions["Accepted"], conditions["Ready"]
    assert (accepted["status"], accepted["observedGeneration"]) == ("False", 2)
    assert accepted["message"].startswith("generation 2 rejected, generation 1 is still served: spec.limit:")
    assert (ready["status"], ready["reason"]) == ("False", "PreviousGenerationServed")
    status = last_status(cluster, BUDGET.name, "monthly")
    assert status["servedGeneration"] == 1
    assert json.loads(str(status["servedSpec"]))["limit"] == "10.00"


async def test_a_restarted_operator_keeps_serving_the_generation_recorded_in_status(cluster: Cluster) -> None:
    await cluster.reconciler.reconcile_once()
    cluster.sync_statuses()
    cluster.apply(
        ROUTERULE.name,
        "chat",
        {"model": "gpt-4o-mini", "backends": [{**MOCK, "model": "x-unpriced"}]},
        generation=2,
    )
    await cluster.reconciler.reconcile_once()
    cluster.sync_statuses()

    # A new operator process: nothing in memory, only what the cluster says.
    cluster.reconciler = Reconciler(cluster.settings, cluster.kube, cluster.reconciler.view)  # type: ignore[arg-type]
    cluster.kube.secrets.clear()
    result = await cluster.reconciler.reconcile_once()

    assert result.held == frozenset({("RouteRule", "team-a", "chat")})
    assert [b.model for r in cluster.published().routes for b in r.backends] == ["gpt-4o-mini"]
    # The status already says so (written before the restart): nothing to rewrite.
    status = cluster.indexes[ROUTERULE.name][("team-a", "chat")][0].status
    assert [c["reason"] for c in status["conditions"] if c["type"] == "Ready"] == ["PreviousGenerationServed"]
    assert not [s for s in cluster.kube.statuses if s[2] == "chat"]


async def test_a_fixed_generation_is_served_and_the_record_goes(cluster: Cluster) -> None:
    await cluster.reconciler.reconcile_once()
    cluster.apply(BUDGET.name, "monthly", {"limit": "-1"}, generation=2)
    await cluster.reconciler.reconcile_once()
    cluster.sync_statuses()

    cluster.apply(BUDGET.name, "monthly", {"limit": "20.00"}, generation=3)
    await cluster.reconciler.reconcile_once()

    assert [b.limit_usd for b in cluster.published().budgets] == [Decimal("20.00")]
    status = last_status(cluster, BUDGET.name, "monthly")
    assert status["servedGeneration"] == 3 and status["servedSpec"] is None
    assert cluster.conditions(BUDGET.name, "monthly")["Ready"]["status"] == "True"


async def test_a_resource_recreated_under_the_same_name_is_new(cluster: Cluster) -> None:
    await cluster.reconciler.reconcile_once()
    cluster.delete(BUDGET.name, "monthly")
    recreated = cluster.apply(BUDGET.name, "monthly", {"limit": "-1"})
    cluster.indexes[BUDGET.name][("team-a", "monthly")] = [
        type(recreated)(recreated.kind, recreated.namespace, recreated.name, "uid-new", 1, recreated.spec)
    ]
    result = await cluster.reconciler.reconcile_once()

    assert result.held == frozenset()
    assert cluster.published().budgets == ()
