"""The gate's failure policies against a store that goes away and comes back (the memory store behind
a switch), with a driven clock."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from decimal import Decimal

from tollway_sidecar.config.models import Backend, Budget, GatewayConfig, Limits, Pricing, Route, VirtualKey
from tollway_sidecar.pricing import PriceBook
from tollway_sidecar.quota.decision import Denial
from tollway_sidecar.quota.gate import Admission, QuotaGate
from tollway_sidecar.quota.memory import MemoryStore
from tollway_sidecar.quota.plan import Charge, Plan, Settlement, budget_key, key_month_key
from tollway_sidecar.quota.store import Batch, ReserveResult, StoreUnavailable

NOW = int(datetime(2026, 3, 14, 12, 0, tzinfo=UTC).timestamp() * 1000)
BACKEND = Backend(
    name="b",
    provider="openai-compatible",
    model="gpt-4o-mini",
    base_url="http://x",
    pricing=Pricing(input_per_million=Decimal("1"), output_per_million=Decimal("1")),
)
ROUTE = Route(id="r", name="r", namespace="default", model="gpt-4o-mini", backends=(BACKEND,))
PRICES = PriceBook(GatewayConfig(routes=(ROUTE,)))
BODY = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 91}  # 9 + 91 = 100 tokens


class Switch:
    """The memory store, unreachable while `down`."""

    name = "switch"

    def __init__(self) -> None:
        self.inner = MemoryStore()
        self.down = False

    def _check(self) -> None:
        if self.down:
            raise StoreUnavailable("down")

    async def reserve(self, plan: Plan, expiry_event: str | None = None) -> ReserveResult:
        self._check()
        return await self.inner.reserve(plan, expiry_event)

    async def settle(self, plan: Plan, settlement: Settlement, now_ms: int, event: str | None = None) -> bool:
        self._check()
        return await self.inner.settle(plan, settlement, now_ms, event)

    async def emit(self, event: str, namespace: str | None = None) -> None:
        self._check()
        await self.inner.emit(event, namespace)

    async def apply(self, batch: Batch) -> bool:
        self._check()
        return await self.inner.apply(batch)

    async def read(self, namespace: str, keys: Sequence[str], now_ms: int) -> dict[str, dict[str, int]]:
        self._check()
        return await self.inner.read(namespace, keys, now_ms)

    async def ping(self) -> None:
        self._check()

    async def close(self) -> None:
        return None


def budget(policy: str) -> Budget:
    return Budget(name="cap", namespace="default", limit_usd=Decimal("1"), failure_policy=policy)  # type: ignore[arg-type]


def key(*budgets: str, limits: Limits | None = None) -> VirtualKey:
    return VirtualKey(
        name="app", namespace="default", key_sha256="0" * 64, budgets=budgets, limits=limits or Limits()
    )


async def admit(
    gate: QuotaGate,
    vkey: VirtualKey,
    budgets: dict[str, Budget],
    expiry_event: Callable[[Plan, uuid.UUID], str] | None = None,
) -> Admission | Denial:
    return await gate.admit(
        key=vkey,
        budgets=budgets,
        route=ROUTE,
        prices=PRICES,
        operation="chat",
        body=BODY,
        user=None,
        rid="rid-1",
        expiry_event=expiry_event,
    )


async def test_fail_closed_answers_503_naming_the_store() -> None:
    store = Switch()
    gate = QuotaGate(store, clock=lambda: NOW)
    store.down = True
    denial = await admit(gate, key("default/cap"), {"default/cap": budget("FailClosed")})
    assert isinstance(denial, Denial)
    assert (denial.status, denial.code) == (503, "quota_store_unavailable")
    assert "quota store (Redis) is unreachable" in denial.message


async def test_limits_without_a_budget_follow_the_configured_policy() -> None:
    store = Switch()
    store.down = True
    limited = key(limits=Limits(requests_per_minute=5))
    closed = await admit(QuotaGate(store, clock=lambda: NOW), limited, {})
    assert isinstance(closed, Denial) and closed.status == 503
    opened = await admit(QuotaGate(store, clock=lambda: NOW, failure_policy="FailOpen"), limited, {})
    assert isinstance(opened, Admission) and opened.local
    nothing = await admit(QuotaGate(store, clock=lambda: NOW), key(), {})  # nothing to enforce
    assert isinstance(nothing, Admission) and nothing.local


async def test_fail_open_counts_locally_and_reconciles_once_the_store_answers() -> None:
    store = Switch()
    gate = QuotaGate(store, clock=lambda: NOW)
    budgets = {"default/cap": budget("FailOpen")}
    store.down = True
    admission = await admit(gate, key("default/cap"), budgets)
    assert isinstance(admission, Admission) and admission.local
    await gate.settle(admission, Charge(9, 41, 50_000))
    # counters: the budget, and the key's usd, requests, in, out; plus the release of the reservation
    # the failed reserve may have made after all (a no-op when it made none)
    assert gate.pending == 6
    with contextlib.suppress(StoreUnavailable):
        await gate.reconcile()
    assert gate.pending == 2  # still down: kept, as one batch for the namespace and the release
    store.down = False
    await gate.reconcile()
    assert gate.pending == 0
    now = datetime.fromtimestamp(NOW / 1000, tz=UTC)
    cap = budget_key(budgets["default/cap"], now)
    month = key_month_key(key(), now)
    counters = await store.read("default", [cap, month], NOW)
    assert counters[cap] == {"usd": 50_000}
    assert counters[month] == {"usd": 50_000, "req": 1, "in": 9, "out": 41}


async def test_a_settle_that_fails_is_retried_until_the_store_answers() -> None:
    store = Switch()
    gate = QuotaGate(store, clock=lambda: NOW)
    budgets = {"default/cap": budget("FailClosed")}
    admission = await admit(gate, key("default/cap"), budgets)
    assert isinstance(admission, Admission) and not admission.local
    assert admission.estimate.total_tokens == 100
    store.down = True
    await gate.settle(admission, Charge(9, 1, 10_000))
    assert gate.pending == 1
    store.down = False
    await gate.reconcile()
    cap = budget_key(budgets["default/cap"], datetime.fromtimestamp(NOW / 1000, tz=UTC))
    assert (await store.read("default", [cap], NOW))[cap] == {"usd": 10_000, "usd_r": 0}
    await gate.close()


async def test_a_settle_retried_after_an_outage_carries_its_event_once() -> None:
    store = Switch()
    gate = QuotaGate(store, clock=lambda: NOW)
    admission = await admit(gate, key("default/cap"), {"default/cap": budget("FailClosed")})
    assert isinstance(admission, Admission)
    built: list[Charge] = []

    def event(charge: Charge) -> str:
        built.append(charge)
        return f'{{"cost_nanos": {charge.nano_usd}}}'

    store.down = True
    await gate.settle(admission, Charge(9, 1, 10_000), event)
    store.down = False
    await gate.reconcile()
    await gate.reconcile()  # nothing left: no second settle, no second event
    assert list(store.inner.outbox) == ['{"cost_nanos": 10000}']
    assert built == [Charge(9, 1, 10_000)]  # built once, from the charge the counters got
    await gate.close()


async def test_a_refused_calls_event_is_built_and_appended_in_the_background() -> None:
    store = Switch()
    gate = QuotaGate(store, clock=lambda: NOW)
    gate.emit_soon(lambda: '{"billable": false}', namespace="default")
    assert list(store.inner.outbox) == []  # not on the caller's path
    await gate.drain()
    assert list(store.inner.outbox) == ['{"billable": false}']
    await gate.close()


async def test_a_refused_calls_event_waits_for_an_unreachable_store_and_is_appended_once() -> None:
    store = Switch()
    gate = QuotaGate(store, clock=lambda: NOW, retry_s=3600)  # reconciled by hand below
    store.down = True
    gate.emit_soon(lambda: '{"refused": 1}', namespace="default")
    await gate.drain()  # an unreachable store never raises: the event is kept
    assert gate.pending == 1
    with contextlib.suppress(StoreUnavailable):
        await gate.reconcile()  # still down: it waits in its namespace's batch
    assert list(store.inner.outbox) == []
    store.down = False
    await gate.reconcile()
    await gate.reconcile()  # nothing left: no second copy
    assert gate.pending == 0
    assert list(store.inner.outbox) == ['{"refused": 1}']
    await gate.close()


async def test_an_admission_keeps_its_expiry_event_with_the_reservation_under_the_calls_id() -> None:
    store = Switch()
    now = [NOW]
    gate = QuotaGate(store, clock=lambda: now[0], reservation_ttl_s=30)
    made: list[tuple[Plan, uuid.UUID]] = []

    def expiry(plan: Plan, event_id: uuid.UUID) -> str:
        made.append((plan, event_id))
        return f'{{"expired": "{event_id}"}}'

    admission = await admit(gate, key("default/cap"), {"default/cap": budget("FailClosed")}, expiry)
    assert isinstance(admission, Admission) and admission.event_id is not None
    assert made == [(admission.plan, admission.event_id)]  # one id for the call, made at admission
    assert list(store.inner.outbox) == []  # kept with the reservation, not appended
    now[0] = NOW + 30_000
    await gate.settle(admission, Charge(9, 1, 10_000), lambda charge: "settled")  # too late
    assert list(store.inner.outbox) == [f'{{"expired": "{admission.event_id}"}}']
    await gate.close()


async def test_a_fail_open_calls_event_is_added_with_its_counts_once() -> None:
    store = Switch()
    gate = QuotaGate(store, clock=lambda: NOW)
    store.down = True
    admission = await admit(gate, key("default/cap"), {"default/cap": budget("FailOpen")})
    assert isinstance(admission, Admission) and admission.local
    await gate.settle(admission, Charge(9, 41, 50_000), lambda charge: f'{{"n": {charge.nano_usd}}}')
    assert list(store.inner.outbox) == []
    with contextlib.suppress(StoreUnavailable):
        await gate.reconcile()  # still down: the event waits in the batch
    store.down = False
    await gate.reconcile()
    await gate.reconcile()
    assert gate.pending == 0
    assert list(store.inner.outbox) == ['{"n": 50000}']
    await gate.close()
