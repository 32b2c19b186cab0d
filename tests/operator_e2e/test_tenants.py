"""Tenants against a real API server, operator and gateway: a namespace can never redirect, read or
spend through another namespace's routes, keys or budgets; and an edit that the API server accepts
but the compiler rejects leaves the previous generation serving, also across an operator restart.

Tests run in file order and share one stack (the first two build on each other's namespaces).
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import Plane
from stack import Stack, free_port, in_namespace, key_secret, mock_route, resource, running_stack, wait_for

pytestmark = pytest.mark.timeout(600)

OWNER, INTRUDER, GUEST = "tenant-owner", "aaa-intruder", "tenant-guest"  # the intruder sorts first
MODEL = "tenant-model"
KEYS = {
    OWNER: "tw-owner-0123456789abcdef01234",
    INTRUDER: "tw-intruder-0123456789abcdef0",
    GUEST: "tw-guest-0123456789abcdef0123",
}


@pytest.fixture(scope="module")
def stack(plane: Plane, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_stack(plane.cp, plane.audit_log, tmp_path_factory.mktemp("tenants")) as s:
        yield s


def tenant_key(namespace: str, **spec: Any) -> list[dict[str, Any]]:
    return in_namespace(
        namespace,
        key_secret("key", KEYS[namespace]),
        resource("VirtualKey", "app", {"secretRef": {"name": "key", "key": "key"}, **spec}),
    )


def listed_models(stack: Stack, key: str) -> list[str]:
    request = urllib.request.Request(
        f"{stack.gateway.base_url}/models", headers={"Authorization": f"Bearer {key}"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return [model["id"] for model in json.loads(response.read())["data"]]


def published_route(stack: Stack, model: str) -> dict[str, Any]:
    (route,) = [r for r in stack.published()["routes"] if r["model"] == model]
    return dict(route)


def accepted(stack: Stack, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
    condition = stack.conditions(kind, namespace, name).get("Accepted")
    return condition if condition is not None and condition["observedGeneration"] >= 1 else None


def test_a_newer_rule_in_another_namespace_cannot_take_over_a_model(stack: Stack) -> None:
    mock = stack.gateway.options.mock_port
    for namespace in (OWNER, INTRUDER):
        stack.namespace(namespace)
    stack.apply(in_namespace(OWNER, mock_route("chat", MODEL, mock)) + tenant_key(OWNER))
    stack.wait_status(KEYS[OWNER], MODEL, 200)

    time.sleep(1.1)  # creationTimestamp has whole seconds: make the intruder's claim the newer one
    dead = mock_route("chat", MODEL, free_port())  # a backend the intruder controls (nothing listens)
    stack.apply(in_namespace(INTRUDER, dead) + tenant_key(INTRUDER))

    condition = wait_for(
        lambda: (
            c if (c := accepted(stack, "routerule", INTRUDER, "chat")) and c["status"] == "False" else None
        ),
        20,
        "the intruder's RouteRule refused",
    )
    assert condition["reason"] == "ModelConflict"
    assert f"already routed by RouteRule {OWNER}/chat, the older claim" in condition["message"]
    wait_for(lambda: accepted(stack, "virtualkey", INTRUDER, "app"), 20, "the intruder's key compiled")
    route = published_route(stack, MODEL)
    assert (route["namespace"], route["backends"][0]["base_url"]) == (OWNER, f"http://127.0.0.1:{mock}/v1")
    for _ in range(5):
        assert stack.call(KEYS[OWNER], MODEL)[0] == 200

    # Nor can the intruder's key call the owner's route (the owner's provider account), or see it.
    status, body = stack.call(KEYS[INTRUDER], MODEL)
    assert (status, body["error"]["code"]) == (403, "model_not_allowed")
    assert MODEL not in listed_models(stack, KEYS[INTRUDER])
    assert MODEL in listed_models(stack, KEYS[OWNER])


def test_a_key_cannot_charge_another_namespace_s_budget(stack: Stack) -> None:
    stack.apply(
        in_namespace(OWNER, resource("Budget", "owner-budget", {"limit": "100"}))
        + tenant_key(INTRUDER, budgetRefs=["owner-budget"])  # an edit of the intruder's key
    )
    refs = wait_for(
        lambda: (
            c
            if (c := stack.conditions("virtualkey", INTRUDER, "app").get("ResolvedRefs"))
            and c["status"] == "False"
            else None
        ),
        20,
        "the intruder's key refused",
    )
    assert (refs["reason"], refs["message"]) == (
        "BudgetNotFound",
        f"spec.budgetRefs[0]: Budget {INTRUDER}/owner-budget not found",
    )


def test_allowed_namespaces_shares_a_route_with_the_namespaces_it_lists(stack: Stack) -> None:
    stack.namespace(GUEST)
    stack.apply(tenant_key(GUEST))
    stack.wait_status(KEYS[GUEST], MODEL, 403)

    shared = mock_route("chat", MODEL, stack.gateway.options.mock_port, allowedNamespaces=[GUEST])
    stack.apply(in_namespace(OWNER, shared))
    stack.wait_status(KEYS[GUEST], MODEL, 200)
    assert stack.call(KEYS[INTRUDER], MODEL)[0] in (401, 403)  # still not the intruder's
    assert MODEL in listed_models(stack, KEYS[GUEST])

    bad = stack.cp.kubectl(
        "apply",
        "-f",
        "-",
        input=json.dumps(
            in_namespace(OWNER, mock_route("x", "x", 1, allowedNamespaces=["Not_A_Namespace"]))[0]
        ),
        check=False,
    )
    assert bad.returncode != 0 and "allowedNamespaces" in bad.stderr, bad.stderr


def test_a_generation_the_compiler_rejects_leaves_the_previous_one_serving(stack: Stack) -> None:
    mock = stack.gateway.options.mock_port
    unpriced = mock_route("chat", MODEL, mock, allowedNamespaces=[GUEST])
    unpriced["spec"]["backends"][0]["model"] = "model-without-a-price"
    del unpriced["spec"]["backends"][0]["pricing"]  # valid for the API server; the compiler needs a price
    generation = stack.get("routerule", OWNER, "chat")["metadata"]["generation"]  # type: ignore[index]
    stack.apply(in_namespace(OWNER, unpriced))

    def refused() -> dict[str, Any] | None:
        conditions = stack.conditions("routerule", OWNER, "chat")
        ready = conditions.get("Ready", {})
        return (
            conditions
            if ready.get("observedGeneration") == generation + 1 and ready["status"] == "False"
            else None
        )

    conditions = wait_for(refused, 20, "the new generation refused")
    assert conditions["Ready"]["reason"] == "PreviousGenerationServed"
    assert conditions["Accepted"]["message"].startswith(
        f"generation {generation + 1} rejected, generation {generation} is still served: "
        "spec.backends[0].pricing:"
    )
    status = stack.get("routerule", OWNER, "chat")["status"]  # type: ignore[index]
    assert status["servedGeneration"] == generation
    assert published_route(stack, MODEL)["backends"][0]["model"] == "gpt-4o-mini"
    assert stack.call(KEYS[OWNER], MODEL)[0] == 200

    # A restarted operator has only the cluster to go on: it keeps serving the same generation.
    stack.operator.stop()
    before = stack.published()["checksum"]
    stack.operator.start()
    stack.operator.wait_compiled(before[:12])
    assert stack.published()["checksum"] == before
    assert stack.call(KEYS[OWNER], MODEL)[0] == 200

    fixed = mock_route("chat", MODEL, mock, allowedNamespaces=[GUEST])
    fixed["spec"]["backends"][0]["model"] = "gpt-4o"
    stack.apply(in_namespace(OWNER, fixed))
    wait_for(
        lambda: published_route(stack, MODEL)["backends"][0]["model"] == "gpt-4o" or None,
        20,
        "the fix served",
    )
    status = wait_for(
        lambda: (
            s
            if (s := (stack.get("routerule", OWNER, "chat") or {}).get("status", {})).get("servedGeneration")
            == generation + 2
            else None
        ),
        20,
        "the fixed generation in status",
    )
    assert "servedSpec" not in status
    assert stack.conditions("routerule", OWNER, "chat")["Ready"]["status"] == "True"
