"""The operator end to end: kubectl apply → GatewayConfig Secret → the gateway (Envoy + sidecar watching
that Secret) enforces it → spend and alerts come back into status, Events and a webhook.

The operator runs as `tollway operator` under a ServiceAccount token bound to deploy/rbac/operator.yaml
and nothing else; the sidecar under deploy/rbac/gateway.yaml. The last tests read the API server's
audit log to show that those rules are exactly what the two use. Tests run in file order and share one
stack; each uses its own namespace and model names.
"""

from __future__ import annotations

import base64
import hashlib
import http.server
import json
import re
import threading
import time
import urllib.request
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
import yaml
from conftest import Plane
from stack import (
    CONFIG_SECRET,
    GATEWAY_SA,
    OPERATOR_SA,
    ROOT,
    SPEND_INTERVAL,
    SYSTEM_NS,
    Stack,
    free_port,
    in_namespace,
    key_secret,
    mock_route,
    resource,
    running_stack,
    wait_for,
)

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def stack(plane: Plane, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_stack(plane.cp, plane.audit_log, tmp_path_factory.mktemp("stack")) as s:
        yield s


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def ready(stack: Stack, kind: str, ns: str, name: str) -> dict[str, Any] | None:
    conditions = stack.conditions(kind, ns, name)
    return conditions if conditions.get("Ready", {}).get("status") == "True" else None


# --- the main flow ------------------------------------------------------------------------------------


def test_apply_then_call_then_spend_shows_in_kubectl(stack: Stack) -> None:
    ns = stack.namespace("e2e-flow")
    key = "tw-flow-0123456789abcdef0123456789"
    stack.apply(
        in_namespace(
            ns,
            key_secret("flow-key", key),
            mock_route("chat", "flow-chat", stack.gateway.options.mock_port),
            resource("Budget", "flow-budget", {"limit": "100"}),
            resource(
                "VirtualKey",
                "flow",
                {
                    "secretRef": {"name": "flow-key", "key": "key"},
                    "budgetRefs": ["flow-budget"],
                    "owner": {"team": "a"},
                },
            ),
        )
    )

    wait_for(
        lambda: sha(key) in {k["key_sha256"] for k in stack.published()["keys"]}, 20, "the key published"
    )
    stack.wait_status(key, "flow-chat", 200)
    for kind, name in (("virtualkey", "flow"), ("budget", "flow-budget"), ("routerule", "chat")):
        conditions = wait_for(lambda k=kind, n=name: ready(stack, k, ns, n), 20, f"{kind} {name} Ready")
        assert {t: c["status"] for t, c in conditions.items()} == {
            "Accepted": "True",
            "ResolvedRefs": "True",
            "Ready": "True",
        }
        assert all(c["observedGeneration"] == 1 for c in conditions.values())

    def spent() -> dict[str, Any] | None:
        status = (stack.get("budget", ns, "flow-budget") or {}).get("status") or {}
        return status if Decimal(status.get("spent", "0")) > 0 else None

    status = wait_for(spent, 10 * SPEND_INTERVAL + 10, "spend in the Budget's status")
    assert status["state"] == "Ok"
    assert Decimal(status["remaining"]) == Decimal(100) - Decimal(status["spent"]) - Decimal(
        status["reserved"]
    )
    table = stack.cp.kubectl("get", "budgets", "-n", ns).stdout.splitlines()
    assert table[0].split()[:6] == ["NAME", "LIMIT", "SPENT", "REMAINING", "PERIOD", "STATE"]
    row = table[1].split()
    assert row[:2] == ["flow-budget", "100"] and Decimal(row[2]) > 0 and row[4:6] == ["Monthly", "Ok"]
    vk = wait_for(
        lambda: ((stack.get("virtualkey", ns, "flow") or {}).get("status") or {}).get("requests"),
        10,
        "requests",
    )
    assert vk >= 1
    vk_status = (stack.get("virtualkey", ns, "flow") or {})["status"]
    assert Decimal(vk_status["spent"]) > 0 and vk_status["lastUsed"]


def test_what_the_cache_saved_shows_in_the_budgets_status_and_kubectl(stack: Stack) -> None:
    ns = stack.namespace("e2e-saved")
    key = "tw-saved-0123456789abcdef012345678"
    stack.apply(
        in_namespace(
            ns,
            key_secret("saved-key", key),
            mock_route("cached", "saved-chat", stack.gateway.options.mock_port, cache={"mode": "Exact"}),
            resource("Budget", "saved-budget", {"limit": "100"}),
            resource(
                "VirtualKey",
                "saver",
                {"secretRef": {"name": "saved-key", "key": "key"}, "budgetRefs": ["saved-budget"]},
            ),
        )
    )
    stack.wait_status(key, "saved-chat", 200)  # the one answer from upstream: it fills the entry
    for _ in range(2):
        assert stack.call(key, "saved-chat")[0] == 200  # the same body: hits

    def saved() -> dict[str, Any] | None:
        status = (stack.get("budget", ns, "saved-budget") or {}).get("status") or {}
        spent, saved = Decimal(status.get("spent", "0")), Decimal(status.get("saved", "0"))
        return status if spent > 0 and saved == 2 * spent else None

    status = wait_for(saved, 10 * SPEND_INTERVAL + 10, "two hits' saving in the Budget's status")
    table = stack.cp.kubectl("get", "budgets", "-n", ns).stdout.splitlines()
    assert table[0].split()[:7] == ["NAME", "LIMIT", "SPENT", "REMAINING", "PERIOD", "STATE", "SAVED"]
    assert table[1].split()[6] == status["saved"]


def test_an_edited_limit_is_enforced(stack: Stack) -> None:
    ns = stack.namespace("e2e-limit")
    key = "tw-limit-0123456789abcdef0123456789"
    spec = {"secretRef": {"name": "limit-key", "key": "key"}}
    stack.apply(
        in_namespace(
            ns,
            key_secret("limit-key", key),
            mock_route("chat", "limit-chat", stack.gateway.options.mock_port),
            resource("VirtualKey", "limited", spec),
        )
    )
    stack.wait_status(key, "limit-chat", 200)
    for _ in range(3):
        assert stack.call(key, "limit-chat")[0] == 200

    stack.apply(
        in_namespace(ns, resource("VirtualKey", "limited", {**spec, "limits": {"requestsPerMinute": 1}}))
    )

    body = stack.wait_status(key, "limit-chat", 429)
    assert body["error"]["code"] == "rate_limit_exceeded"
    assert "limit 1," in body["error"]["message"]  # the new limit, not an older one
    conditions = stack.conditions("virtualkey", ns, "limited")
    assert conditions["Ready"]["observedGeneration"] == 2


def test_a_deleted_virtualkey_stops_working(stack: Stack) -> None:
    ns = stack.namespace("e2e-delete")
    key = "tw-delete-0123456789abcdef0123456789"
    stack.apply(
        in_namespace(
            ns,
            key_secret("gone-key", key),
            mock_route("chat", "delete-chat", stack.gateway.options.mock_port),
            resource("VirtualKey", "gone", {"secretRef": {"name": "gone-key", "key": "key"}}),
        )
    )
    stack.wait_status(key, "delete-chat", 200)

    stack.cp.kubectl("delete", "virtualkey", "gone", "-n", ns)

    body = stack.wait_status(key, "delete-chat", 401)
    assert body["error"]["code"] == "invalid_api_key"


def test_a_missing_secret_is_named_and_other_routes_keep_working(stack: Stack) -> None:
    ns = stack.namespace("e2e-refs")
    key = "tw-refs-0123456789abcdef0123456789ab"
    broken = {
        "apiVersion": "tollway.dev/v1alpha1",
        "kind": "RouteRule",
        "metadata": {"name": "paid"},
        "spec": {
            "model": "refs-paid",
            "backends": [
                {
                    "name": "openai",
                    "provider": "openai",
                    "model": "gpt-4o-mini",
                    "credentialsSecretRef": {"name": "openai-credentials", "key": "apiKey"},
                }
            ],
        },
    }
    stack.apply(
        in_namespace(
            ns,
            key_secret("refs-key", key),
            mock_route("chat", "refs-chat", stack.gateway.options.mock_port),
            resource("VirtualKey", "refs", {"secretRef": {"name": "refs-key", "key": "key"}}),
            broken,
        )
    )

    def unresolved() -> dict[str, Any] | None:
        refs = stack.conditions("routerule", ns, "paid").get("ResolvedRefs")
        return refs if refs and refs["status"] == "False" else None

    refs = wait_for(unresolved, 20, "ResolvedRefs=False")
    assert refs["reason"] == "SecretNotFound"
    assert refs["message"] == (
        "spec.backends[0].credentialsSecretRef.name: Secret e2e-refs/openai-credentials not found"
    )
    assert stack.conditions("routerule", ns, "paid")["Ready"]["status"] == "False"
    assert stack.cp.kubectl("get", "rr", "paid", "-n", ns).stdout.splitlines()[1].split()[-1] == "False"
    stack.wait_status(key, "refs-chat", 200)  # the other route is served
    assert stack.call(key, "refs-paid")[0] == 404  # the broken one is not in the config

    stack.apply(
        in_namespace(
            ns,
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": "openai-credentials"},
                "stringData": {"apiKey": "sk-x"},
            },
        )
    )
    wait_for(lambda: ready(stack, "routerule", ns, "paid"), 20, "the route Ready once its Secret exists")


def test_a_key_is_minted_for_a_virtualkey_without_secret_ref(stack: Stack) -> None:
    ns = stack.namespace("e2e-mint")
    stack.apply(
        in_namespace(
            ns,
            mock_route("chat", "mint-chat", stack.gateway.options.mock_port),
            resource("VirtualKey", "minted", {"owner": {"team": "m"}}),
        )
    )

    secret = wait_for(lambda: stack.get("secret", ns, "tollway-key-minted"), 20, "the minted Secret")
    key = base64.b64decode(secret["data"]["key"]).decode()
    assert key.startswith("tw-") and len(key) >= 3 + 43  # 32 random bytes, URL-safe base64
    vk = stack.get("virtualkey", ns, "minted") or {}
    (owner,) = secret["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["name"], owner["uid"]) == ("VirtualKey", "minted", vk["metadata"]["uid"])
    wait_for(lambda: ready(stack, "virtualkey", ns, "minted"), 20, "the minted VirtualKey Ready")
    assert (stack.get("virtualkey", ns, "minted") or {})["status"]["keySecret"] == "tollway-key-minted"
    stack.wait_status(key, "mint-chat", 200)


# --- alerts -------------------------------------------------------------------------------------------


class Receiver(http.server.BaseHTTPRequestHandler):
    posts: list[dict[str, Any]] = []

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length", "0"))
        Receiver.posts.append(json.loads(self.rfile.read(length)))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def webhook() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook"
    server.shutdown()
    server.server_close()


def threshold_events(stack: Stack, ns: str, name: str) -> list[dict[str, Any]]:
    return [e for e in stack.events(ns, name) if e.get("reason") == "BudgetThreshold"]


def test_crossing_thresholds_raises_one_event_and_one_webhook_each(stack: Stack, webhook: str) -> None:
    ns = stack.namespace("e2e-alerts")
    key = "tw-alerts-0123456789abcdef0123456789"
    stack.apply(
        in_namespace(
            ns,
            key_secret("alerts-key", key),
            mock_route("chat", "alerts-chat", stack.gateway.options.mock_port),
            # A call costs $0.25 here, and a 4th would not fit: 3 calls cross 50% and 70%.
            resource(
                "Budget", "small", {"limit": "1.00", "thresholds": [50, 70], "alertWebhook": {"url": webhook}}
            ),
            resource(
                "VirtualKey",
                "spender",
                {"secretRef": {"name": "alerts-key", "key": "key"}, "budgetRefs": ["small"]},
            ),
        )
    )
    stack.wait_status(key, "alerts-chat", 200)

    def over_70() -> dict[str, Any] | None:
        status = (stack.get("budget", ns, "small") or {}).get("status") or {}
        if Decimal(status.get("spent", "0")) >= Decimal("0.70"):
            return status
        assert stack.call(key, "alerts-chat")[0] in (200, 429)
        return None

    wait_for(over_70, 30, "spend over 70% of the Budget", interval=SPEND_INTERVAL)
    events = wait_for(
        lambda: e if len(e := threshold_events(stack, ns, "small")) == 2 else None, 15, "2 Events"
    )
    assert sorted(e["message"].split(" crossed ")[1].split("%")[0] for e in events) == ["50", "70"]
    assert all(e["type"] == "Warning" and e["involvedObject"]["kind"] == "Budget" for e in events)
    wait_for(lambda: len(Receiver.posts) == 2, 15, "2 webhook posts")
    assert sorted(p["threshold"] for p in Receiver.posts) == [50, 70]
    assert all(
        p["budget"] == f"{ns}/small" and p["text"].startswith(f"Budget {ns}/small crossed")
        for p in Receiver.posts
    )
    alerts = wait_for(
        lambda: ((stack.get("budget", ns, "small") or {}).get("status") or {}).get("alerts"), 10, "alerts"
    )
    assert alerts["thresholds"] == [50, 70]

    time.sleep(4 * SPEND_INTERVAL)  # more syncs: nothing is sent again
    assert len(threshold_events(stack, ns, "small")) == 2
    assert len(Receiver.posts) == 2


# --- restart ------------------------------------------------------------------------------------------


def test_a_restarted_operator_changes_nothing_and_sends_nothing_again(stack: Stack) -> None:
    before_secret = stack.config_secret() or {}
    minted_before = stack.get("secret", "e2e-mint", "tollway-key-minted") or {}
    events_before = len(threshold_events(stack, "e2e-alerts", "small"))
    posts_before = len(Receiver.posts)
    conditions_before = stack.conditions("routerule", "e2e-flow", "chat")
    version = before_secret["metadata"]["annotations"]["tollway.dev/config-checksum"][:12]

    assert stack.operator.stop() == 0  # a clean SIGTERM shutdown
    stack.operator.start()
    stack.operator.wait_compiled(version)
    time.sleep(4 * SPEND_INTERVAL)

    after_secret = stack.config_secret() or {}
    assert after_secret["metadata"]["resourceVersion"] == before_secret["metadata"]["resourceVersion"]
    minted_after = stack.get("secret", "e2e-mint", "tollway-key-minted") or {}
    assert minted_after["data"] == minted_before["data"]
    assert minted_after["metadata"]["resourceVersion"] == minted_before["metadata"]["resourceVersion"]
    assert len(threshold_events(stack, "e2e-alerts", "small")) == events_before
    assert len(Receiver.posts) == posts_before
    assert stack.conditions("routerule", "e2e-flow", "chat") == conditions_before
    minted = stack.cp.kubectl(
        "get", "secrets", "-A", "-l", "tollway.dev/virtualkey", "-o", "name"
    ).stdout.split()
    assert minted == ["secret/tollway-key-minted"]

    # And the restarted operator still does its job.
    stack.cp.kubectl("delete", "virtualkey", "flow", "-n", "e2e-flow")
    stack.wait_status("tw-flow-0123456789abcdef0123456789", "flow-chat", 401)


# --- RBAC: enough, and no more ------------------------------------------------------------------------


def granted(path: str) -> set[tuple[str, str, str, str]]:
    """(verb, resource, namespace or "*", name or "*") for every rule of the Roles in `path`."""
    out = set()
    for doc in yaml.safe_load_all((ROOT / "deploy" / "rbac" / path).read_text()):
        if doc["kind"] not in ("ClusterRole", "Role"):
            continue
        scope = doc["metadata"].get("namespace", "*")
        for rule in doc["rules"]:
            for res in rule["resources"]:
                for verb in rule["verbs"]:
                    for name in rule.get("resourceNames") or ["*"]:
                        out.add((verb, res, scope, name))
    return out


def used(stack: Stack, service_account: str) -> tuple[set[tuple[str, str, str, str]], list[str]]:
    """What the audit log shows the ServiceAccount doing, matched to rules; and every refusal."""
    rules = granted("operator.yaml" if service_account == OPERATOR_SA else "gateway.yaml")
    seen, denied = set(), []
    for entry in stack.audit(service_account):
        ref = entry.get("objectRef") or {}
        if not ref.get("resource"):
            continue  # discovery (/api, /apis, /version): open to every authenticated user
        res = ref["resource"] + (f"/{ref['subresource']}" if ref.get("subresource") else "")
        verb, code = entry["verb"], entry.get("responseStatus", {}).get("code", 0)
        if code == 403:
            denied.append(f"{verb} {res} {ref.get('namespace', '')}/{ref.get('name', '')}")
        for rule in rules:
            r_verb, r_res, r_ns, r_name = rule
            if (
                (r_verb, r_res) == (verb, res)
                and r_ns in ("*", ref.get("namespace"))
                and r_name in ("*", ref.get("name"))
            ):
                seen.add(rule)
    return seen, denied


def test_the_operator_metrics_count_its_passes_and_publishes(stack: Stack) -> None:
    url = f"http://127.0.0.1:{stack.operator.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()

    def value(name: str) -> float:
        match = re.search(rf"^{re.escape(name)} ([0-9.e+]+)$", text, re.MULTILINE)
        assert match, f"{name} not in the operator's /metrics"
        return float(match.group(1))

    assert value('tollway_operator_reconciles_total{result="ok"}') >= 1
    published = (stack.config_secret() or {})["metadata"]["annotations"]["tollway.dev/config-checksum"]
    assert value(f'tollway_operator_config_info{{version="{published[:12]}"}}') == 1  # what is in the Secret
    assert value("tollway_operator_reconcile_duration_seconds_count") >= 1


def test_the_operator_rbac_is_enough_and_every_rule_is_used(stack: Stack) -> None:
    seen, denied = used(stack, OPERATOR_SA)
    assert denied == []
    assert seen == granted("operator.yaml"), f"never used: {granted('operator.yaml') - seen}"
    reads_and_writes = {
        (e["objectRef"].get("namespace"), e["objectRef"].get("name"))
        for e in stack.audit(OPERATOR_SA)
        if e["verb"] in ("get", "update") and e.get("objectRef")
    }
    assert reads_and_writes == {(SYSTEM_NS, CONFIG_SECRET)}


def test_the_gateway_only_watches_its_one_secret(stack: Stack) -> None:
    seen, denied = used(stack, GATEWAY_SA)
    assert denied == []
    assert seen == {("watch", "secrets", SYSTEM_NS, CONFIG_SECRET)}
    calls = {
        (e["verb"], e["objectRef"].get("resource"), e["objectRef"].get("name"))
        for e in stack.audit(GATEWAY_SA)
        if e.get("objectRef")
    }
    assert calls == {("watch", "secrets", CONFIG_SECRET)}
