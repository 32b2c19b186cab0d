"""`QuotaGate.admit_hit`: a call answered from the response cache is one request against
requests-per-minute and the key's monthly count, reserves no tokens and no money, and its settle
adds what it saved to the key's and its budgets' `saved` (shown by /spend)."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

from tollway_sidecar.config.models import Backend, Budget, GatewayConfig, Limits, Pricing, Route, VirtualKey
from tollway_sidecar.pricing import PriceBook
from tollway_sidecar.quota.decision import Denial
from tollway_sidecar.quota.gate import Admission, QuotaGate
from tollway_sidecar.quota.memory import MemoryStore
from tollway_sidecar.quota.plan import (
    MINUTE_MS,
    Charge,
    Plan,
    Settlement,
    budget_key,
    key_minute_key,
    key_month_key,
)
from tollway_sidecar.quota.spend import spend_snapshot
from tollway_sidecar.quota.store import ReserveResult, StoreUnavailable

NOW = int(datetime(2026, 3, 14, 12, 0, 5, tzinfo=UTC).timestamp() * 1000)
BACKEND = Backend(
    name="b",
    provider="openai-compatible",
    model="gpt-4o-mini",
    base_url="http://x",
    pricing=Pricing(input_per_million=Decimal("1"), output_per_million=Decimal("1")),
)
ROUTE = Route(id="r", name="r", namespace="default", model="gpt-4o-mini", backends=(BACKEND,))
PRICES = PriceBook(GatewayConfig(routes=(ROUTE,)))
BUDGET = Budget(name="cap", namespace="default", limit_usd=Decimal("1"), action="Block")
KEY = VirtualKey(
    name="app",
    namespace="default",
    key_sha256="0" * 64,
    budgets=(BUDGET.id,),
    limits=Limits(requests_per_minute=3, tokens_per_minute=1000),
)


async def test_a_hit_reserves_no_tokens_or_money_and_counts_one_request() -> None:
    store = MemoryStore()
    gate = QuotaGate(store, clock=lambda: NOW)
    budgets = {BUDGET.id: BUDGET}
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 10}
    call = await gate.admit(
        key=KEY, budgets=budgets, route=ROUTE, prices=PRICES, operation="chat", body=body, user=None, rid="c"
    )
    assert isinstance(call, Admission)
    await gate.settle(call, Charge(1500, 500, 2_000_000_000))  # over the tokens and the budget
    again = await gate.admit(
        key=KEY, budgets=budgets, route=ROUTE, prices=PRICES, operation="chat", body=body, user=None, rid="d"
    )
    assert isinstance(again, Denial)  # no upstream call fits any more; a hit still does

    hits = [await gate.admit_hit(key=KEY, budgets=budgets, user=None, rid=f"h{n}") for n in range(3)]
    first, second, third = hits
    assert isinstance(first, Admission) and isinstance(second, Admission)
    assert isinstance(third, Denial) and third.status == 429  # the third request of the minute
    for admission in (first, second):
        await gate.settle(admission, Charge(0, 0, 0))

    now = datetime.fromtimestamp(NOW / 1000, UTC)
    minute, month, spent = (
        key_minute_key(KEY, NOW // MINUTE_MS),
        key_month_key(KEY, now),
        budget_key(BUDGET, now),
    )
    counters = await store.read("default", [minute, month, spent], NOW)
    assert counters[minute]["req"] == 3  # the upstream call and two hits
    assert counters[minute]["tok"] == 2000 and counters[minute].get("tok_r", 0) == 0  # the call's only
    assert counters[month]["req"] == 3
    assert counters[month]["usd"] == 2_000_000_000 and counters[month].get("usd_r", 0) == 0
    assert counters[spent]["usd"] == 2_000_000_000
    assert gate.open == 0


class Unreachable(MemoryStore):
    """The memory store, unreachable while `down`."""

    def __init__(self) -> None:
        super().__init__()
        self.down = True

    async def reserve(self, plan: Plan, expiry_event: str | None = None) -> ReserveResult:
        if self.down:
            raise StoreUnavailable("down")
        return await super().reserve(plan, expiry_event)

    async def settle(self, plan: Plan, settlement: Settlement, now_ms: int, event: str | None = None) -> bool:
        if self.down:
            raise StoreUnavailable("down")
        return await super().settle(plan, settlement, now_ms, event)


USER_BUDGET = Budget(name="each", namespace="default", limit_usd=Decimal("1"), action="Block", per_user=True)
SAVER = VirtualKey(
    name="saver",
    namespace="default",
    key_sha256="1" * 64,
    budgets=(BUDGET.id, USER_BUDGET.id),
    limits=Limits(requests_per_minute=100),
)
CONFIG = GatewayConfig(routes=(ROUTE,), keys=(SAVER,), budgets=(BUDGET, USER_BUDGET))


async def test_hits_add_what_they_saved_to_spend_per_key_and_budget_and_spend_nothing() -> None:
    store = MemoryStore()
    gate = QuotaGate(store, clock=lambda: NOW)
    budgets = {BUDGET.id: BUDGET, USER_BUDGET.id: USER_BUDGET}
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 10}
    call = await gate.admit(
        key=SAVER,
        budgets=budgets,
        route=ROUTE,
        prices=PRICES,
        operation="chat",
        body=body,
        user="ana",
        rid="c",
    )
    assert isinstance(call, Admission)
    await gate.settle(call, Charge(15, 5, 123_456_789))  # the call that fills the entry
    for n, user in enumerate(["ana", "ana", "bo"]):
        hit = await gate.admit_hit(key=SAVER, budgets=budgets, user=user, rid=f"h{n}", saved_nano=123_456_789)
        assert isinstance(hit, Admission)
        await gate.settle(hit, Charge(0, 0, 0))
        await gate.settle(hit, Charge(0, 0, 0))  # settled once: a second settle adds nothing

    snapshot = await spend_snapshot(gate, CONFIG, user="ana")
    entry = snapshot["keys"][SAVER.id]
    assert (entry["spent_usd"], entry["saved_usd"], entry["requests"]) == ("0.123456789", "0.370370367", 4)
    cap, each = snapshot["budgets"][BUDGET.id], snapshot["budgets"][USER_BUDGET.id]
    assert (cap["spent_usd"], cap["saved_usd"]) == ("0.123456789", "0.370370367")
    assert (each["spent_usd"], each["saved_usd"]) == ("0.123456789", "0.370370367")  # all users
    assert (each["user"]["spent_usd"], each["user"]["saved_usd"]) == ("0.123456789", "0.246913578")  # ana's
    assert gate.open == 0


async def test_a_call_that_is_not_a_hit_saves_nothing() -> None:
    store = MemoryStore()
    gate = QuotaGate(store, clock=lambda: NOW)
    budgets = {BUDGET.id: BUDGET, USER_BUDGET.id: USER_BUDGET}
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 10}
    call = await gate.admit(
        key=SAVER,
        budgets=budgets,
        route=ROUTE,
        prices=PRICES,
        operation="chat",
        body=body,
        user="ana",
        rid="c",
    )
    assert isinstance(call, Admission) and call.saved_nano == 0
    await gate.settle(call, Charge(15, 5, 1_000))
    hit = await gate.admit_hit(key=SAVER, budgets=budgets, user="ana", rid="h")  # nothing stated
    assert isinstance(hit, Admission)
    await gate.settle(hit, Charge(0, 0, 0))
    snapshot = await spend_snapshot(gate, CONFIG, user="ana")
    assert snapshot["keys"][SAVER.id]["saved_usd"] == "0"
    assert snapshot["budgets"][BUDGET.id]["saved_usd"] == "0"
    assert snapshot["budgets"][USER_BUDGET.id]["user"]["saved_usd"] == "0"


async def test_a_hit_served_while_the_store_is_down_adds_its_saving_once_it_answers() -> None:
    store = Unreachable()
    open_budget = Budget(name="cap", namespace="default", limit_usd=Decimal("1"), failure_policy="FailOpen")
    gate = QuotaGate(store, clock=lambda: NOW)
    vkey = VirtualKey(name="app", namespace="default", key_sha256="0" * 64, budgets=(open_budget.id,))
    hit = await gate.admit_hit(
        key=vkey, budgets={open_budget.id: open_budget}, user=None, rid="h", saved_nano=5_000
    )
    assert isinstance(hit, Admission) and hit.local
    await gate.settle(hit, Charge(0, 0, 0))
    store.down = False
    await gate.reconcile()
    assert gate.pending == 0
    now = datetime.fromtimestamp(NOW / 1000, UTC)
    month, cap = key_month_key(vkey, now), budget_key(open_budget, now)
    counters = await store.read("default", [month, cap], NOW)
    assert counters[month] == {"req": 1, "saved": 5_000}
    assert counters[cap] == {"saved": 5_000}
