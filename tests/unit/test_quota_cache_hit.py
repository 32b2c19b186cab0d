"""`QuotaGate.admit_hit`: a call answered from the response cache is one request against
requests-per-minute and the key's monthly count, and reserves no tokens and no money."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

from tollway_sidecar.config.models import Backend, Budget, GatewayConfig, Limits, Pricing, Route, VirtualKey
from tollway_sidecar.pricing import PriceBook
from tollway_sidecar.quota.decision import Denial
from tollway_sidecar.quota.gate import Admission, QuotaGate
from tollway_sidecar.quota.memory import MemoryStore
from tollway_sidecar.quota.plan import MINUTE_MS, Charge, budget_key, key_minute_key, key_month_key

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
