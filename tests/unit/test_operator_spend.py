"""Live spend into status, and budget threshold alerts (Event + webhook), once per threshold and period."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from aiohttp import web

from tollway_operator.alerts import Alerter, WebhookPolicy, due_thresholds, post_webhook, webhook_body
from tollway_operator.cluster import Resource
from tollway_operator.spend import KeySpend, budget_state, budget_status, key_status, read_spend
from tollway_sidecar.config.models import Budget, GatewayConfig, VirtualKey
from tollway_sidecar.quota.gate import QuotaGate
from tollway_sidecar.quota.memory import MemoryStore
from tollway_sidecar.quota.plan import budget_key, key_month_key, to_nano
from tollway_sidecar.quota.spend import spend_snapshot
from tollway_sidecar.quota.store import Batch, BatchLine

NOW = datetime(2026, 11, 22, 10, 30, tzinfo=UTC)
NOW_MS = int(NOW.timestamp() * 1000)
BUDGET = Budget(name="monthly", namespace="team-a", limit_usd=Decimal("10.00"), thresholds=(50, 80, 95))
KEY = VirtualKey(name="team-a", namespace="team-a", key_sha256="0" * 64, budgets=("team-a/monthly",))
CONFIG = GatewayConfig(keys=(KEY,), budgets=(BUDGET,)).with_checksum()


async def charged(usd: str, reserved: str = "0", requests: int = 1, saved: str = "0") -> MemoryStore:
    """A store holding what the gateway's settles and reservations leave behind."""
    store = MemoryStore()
    lines = []
    for key in (budget_key(BUDGET, NOW), key_month_key(KEY, NOW)):
        lines += [
            BatchLine(key, "usd", to_nano(Decimal(usd) + Decimal(reserved)), 0),
            BatchLine(key, "usd_r", to_nano(Decimal(reserved)), 0),
            BatchLine(key, "req", requests, 0),
            BatchLine(key, "saved", to_nano(Decimal(saved)), 0),
        ]
    await store.apply(Batch("team-a", "b1", NOW_MS, tuple(lines)))
    return store


async def test_spend_reads_the_counters_the_gateway_writes() -> None:
    store = await charged("8.25", reserved="0.50", requests=7)

    spend = await read_spend(store, CONFIG, NOW_MS)

    entry = spend.budgets["team-a/monthly"]
    assert (entry.spent, entry.reserved, entry.period) == (Decimal("8.25"), Decimal("0.50"), "2026-11")
    assert spend.keys["team-a/team-a"] == KeySpend(Decimal("8.25"), 7)
    # The same numbers as the sidecar's own /spend report (one meaning of the counters).
    snapshot = await spend_snapshot(QuotaGate(store, clock=lambda: NOW_MS), CONFIG)
    status = budget_status(BUDGET, entry)
    assert status["spent"] == snapshot["budgets"]["team-a/monthly"]["spent_usd"] == "8.25"
    assert status["remaining"] == snapshot["budgets"]["team-a/monthly"]["remaining_usd"] == "1.25"
    assert snapshot["keys"]["team-a/team-a"]["requests"] == 7


async def test_budget_status_tells_the_period_and_state() -> None:
    spend = await read_spend(await charged("8.25"), CONFIG, NOW_MS)
    status = budget_status(BUDGET, spend.budgets["team-a/monthly"])
    assert status == {
        "spent": "8.25",
        "reserved": "0",
        "remaining": "1.75",
        "saved": "0",
        "periodStart": "2026-11-01T00:00:00Z",
        "periodEnd": "2026-12-01T00:00:00Z",
        "state": "Warning",
    }


async def test_budget_status_tells_what_the_cache_saved_as_spend_does() -> None:
    store = await charged("8.25", saved="3.000000007")
    spend = await read_spend(store, CONFIG, NOW_MS)
    status = budget_status(BUDGET, spend.budgets["team-a/monthly"])
    snapshot = await spend_snapshot(QuotaGate(store, clock=lambda: NOW_MS), CONFIG)
    assert status["saved"] == snapshot["budgets"]["team-a/monthly"]["saved_usd"] == "3.000000007"
    assert status["spent"] == "8.25"  # saving is not spending: state and remaining ignore it
    assert (status["remaining"], status["state"]) == ("1.75", "Warning")


@pytest.mark.parametrize(
    ("spent", "state"),
    [("0", "Ok"), ("4.99", "Ok"), ("5", "Warning"), ("9.99", "Warning"), ("10", "Exceeded")],
)
def test_budget_state(spent: str, state: str) -> None:
    assert budget_state(BUDGET, Decimal(spent)) == state


def test_last_used_moves_only_when_requests_grow() -> None:
    first = key_status(KeySpend(Decimal("1"), 3), {}, NOW)
    assert first["lastUsed"] == "2026-11-22T10:30:00Z"
    later = datetime(2026, 11, 22, 11, 0, tzinfo=UTC)
    assert key_status(KeySpend(Decimal("1"), 3), first, later)["lastUsed"] == "2026-11-22T10:30:00Z"
    assert key_status(KeySpend(Decimal("2"), 4), first, later)["lastUsed"] == "2026-11-22T11:00:00Z"
    assert key_status(KeySpend(Decimal("0"), 0), {}, NOW)["lastUsed"] is None


def test_each_threshold_is_due_once_per_period() -> None:
    assert due_thresholds(BUDGET, Decimal("4.99"), None, "2026-11") == []
    assert due_thresholds(BUDGET, Decimal("8.5"), None, "2026-11") == [50, 80]
    sent = {"period": "2026-11", "thresholds": [50, 80]}
    assert due_thresholds(BUDGET, Decimal("8.5"), sent, "2026-11") == []
    assert due_thresholds(BUDGET, Decimal("9.6"), sent, "2026-11") == [95]
    assert due_thresholds(BUDGET, Decimal("6"), sent, "2026-12") == [50]  # a new period starts afresh


def test_webhook_body_is_slack_compatible() -> None:
    body = webhook_body(BUDGET, 80, Decimal("8.5"), "2026-11")
    assert body["text"] == (
        "Budget team-a/monthly crossed 80% of its limit: spent 8.5 of 10 USD (Monthly period 2026-11)"
    )
    assert (body["budget"], body["threshold"], body["period"]) == ("team-a/monthly", 80, "2026-11")


class Receiver:
    """A local webhook receiver that can fail its first answers."""

    def __init__(self, failures: list[int]) -> None:
        self.failures = failures
        self.bodies: list[Any] = []

    async def handle(self, request: web.Request) -> web.Response:
        self.bodies.append(await request.json())
        if self.failures:
            return web.Response(status=self.failures.pop(0))
        return web.Response(text="ok")


@pytest.fixture
async def receiver(unused_tcp_port: int) -> Any:
    state = Receiver([])
    app = web.Application()
    app.router.add_post("/hook", state.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", unused_tcp_port).start()
    state.url = f"http://127.0.0.1:{unused_tcp_port}/hook"  # type: ignore[attr-defined]
    yield state
    await runner.cleanup()


async def test_the_webhook_is_retried_after_server_errors(receiver: Any) -> None:
    import aiohttp

    receiver.failures = [503, 500]
    async with aiohttp.ClientSession() as session:
        ok = await post_webhook(
            session, receiver.url, {"text": "hi"}, WebhookPolicy(attempts=4, backoff=0.01)
        )
    assert ok
    assert receiver.bodies == [{"text": "hi"}] * 3


async def test_the_webhook_is_not_retried_when_refused(receiver: Any) -> None:
    import aiohttp

    receiver.failures = [400]
    async with aiohttp.ClientSession() as session:
        ok = await post_webhook(
            session, receiver.url, {"text": "hi"}, WebhookPolicy(attempts=4, backoff=0.01)
        )
    assert not ok
    assert len(receiver.bodies) == 1


class RecordingKube:
    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.statuses: list[dict[str, Any]] = []

    async def create_event(self, namespace: str, body: dict[str, Any]) -> None:
        self.events.append(body)

    async def patch_status(self, kind: Any, namespace: str, name: str, status: dict[str, Any]) -> bool:
        self.statuses.append(status)
        return True


async def test_alerts_go_out_once_and_are_recorded_for_restarts(receiver: Any) -> None:
    budget = BUDGET.model_copy(update={"alert_webhook_url": receiver.url})
    resource = Resource("Budget", "team-a", "monthly", "uid-1", 1, {}, {})
    kube = RecordingKube()
    alerter = Alerter(kube, WebhookPolicy(backoff=0.01), clock=lambda: NOW)  # type: ignore[arg-type]

    alerter.check(resource, budget, Decimal("8.5"), "2026-11")
    alerter.check(resource, budget, Decimal("8.5"), "2026-11")  # while delivering: nothing more
    await alerter.close()
    assert kube.statuses == [{"alerts": {"period": "2026-11", "thresholds": [50, 80]}}]
    seen = Resource("Budget", "team-a", "monthly", "uid-1", 1, {}, kube.statuses[-1])  # the index, later
    alerter.check(seen, budget, Decimal("8.6"), "2026-11")  # delivered and recorded: nothing more
    await alerter.close()

    assert [e["message"] for e in kube.events] == [
        "Budget team-a/monthly crossed 50% of its limit: spent 8.5 of 10 USD (Monthly period 2026-11)",
        "Budget team-a/monthly crossed 80% of its limit: spent 8.5 of 10 USD (Monthly period 2026-11)",
    ]
    event = kube.events[0]
    assert (event["type"], event["reason"], event["involvedObject"]["uid"]) == (
        "Warning",
        "BudgetThreshold",
        "uid-1",
    )
    assert [b["threshold"] for b in receiver.bodies] == [50, 80]
    assert kube.statuses == [{"alerts": {"period": "2026-11", "thresholds": [50, 80]}}]

    # A restarted operator reads what was sent from the status: no repeat.
    restarted = Alerter(kube, WebhookPolicy(backoff=0.01), clock=lambda: NOW)  # type: ignore[arg-type]
    recorded = Resource("Budget", "team-a", "monthly", "uid-1", 1, {}, kube.statuses[-1])
    restarted.check(recorded, budget, Decimal("9"), "2026-11")
    await asyncio.sleep(0)
    await restarted.close()
    assert len(kube.events) == 2 and len(receiver.bodies) == 2
