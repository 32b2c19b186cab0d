"""FailOpen while the store is away: the limits still hold against what this process last read from
the store plus what it has admitted since (quota/blind.py), with a driven clock."""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime
from decimal import Decimal

from test_quota_gate import NOW, Switch, admit, key

from tollway_sidecar.config.models import Budget, Limits
from tollway_sidecar.quota.blind import BlindCounts
from tollway_sidecar.quota.decision import Denial
from tollway_sidecar.quota.gate import Admission, QuotaGate
from tollway_sidecar.quota.plan import Charge, budget_key
from tollway_sidecar.quota.store import StoreUnavailable

ESTIMATE_NANO = 100_000  # the test body's 100 tokens at $1 per million
# Three calls' estimates.
CAP = {
    "default/cap": Budget(
        name="cap", namespace="default", limit_usd=Decimal("0.0003"), failure_policy="FailOpen"
    )
}


async def test_a_budget_holds_through_an_outage_from_the_counts_last_read() -> None:
    store = Switch()
    gate = QuotaGate(store, clock=lambda: NOW, retry_s=3600)
    for _ in range(2):  # the store counts two calls, each charged its estimate
        admission = await admit(gate, key("default/cap"), CAP)
        assert isinstance(admission, Admission) and not admission.local
        await gate.settle(admission, Charge(9, 91, ESTIMATE_NANO))
    store.down = True
    third = await admit(gate, key("default/cap"), CAP)
    assert isinstance(third, Admission) and third.local  # 200k + 100k fits 300k
    fourth = await admit(gate, key("default/cap"), CAP)  # the third is still running
    assert isinstance(fourth, Denial) and (fourth.status, fourth.code) == (429, "budget_exceeded")
    await gate.settle(third, Charge(9, 41, 50_000))
    fifth = await admit(gate, key("default/cap"), CAP)  # 200k + 50k + 100k > 300k
    assert isinstance(fifth, Denial) and fifth.code == "budget_exceeded"
    store.down = False
    await gate.reconcile()
    cap = budget_key(CAP["default/cap"], datetime.fromtimestamp(NOW / 1000, tz=UTC))
    assert (await store.read("default", [cap], NOW))[cap]["usd"] == 250_000
    # The applied batch moved into the counts as last read: the same figure if the store goes again.
    assert gate._blind.used(third.plan)[0] == 250_000
    await gate.close()


async def test_a_process_that_never_read_a_counter_admits_at_most_the_limit_blind() -> None:
    store = Switch()
    store.down = True
    gate = QuotaGate(store, clock=lambda: NOW, retry_s=3600)
    admitted = [await admit(gate, key("default/cap"), CAP) for _ in range(4)]
    assert [isinstance(a, Admission) and a.local for a in admitted] == [True, True, True, False]
    assert isinstance(admitted[3], Denial) and admitted[3].code == "budget_exceeded"
    await gate.close()


async def test_a_rate_limit_holds_blind_and_a_new_window_starts_from_zero() -> None:
    store = Switch()
    store.down = True
    now = [NOW]
    gate = QuotaGate(store, clock=lambda: now[0], failure_policy="FailOpen", retry_s=3600)
    limited = key(limits=Limits(requests_per_minute=2))
    first = [await admit(gate, limited, {}) for _ in range(3)]
    assert [type(a).__name__ for a in first] == ["Admission", "Admission", "Denial"]
    assert isinstance(first[2], Denial) and (first[2].status, first[2].code) == (429, "rate_limit_exceeded")
    for admission in first[:2]:
        assert isinstance(admission, Admission)
        await gate.settle(admission, Charge(9, 1, 10_000))
    with contextlib.suppress(StoreUnavailable):
        await gate.reconcile()
    now[0] = NOW + 61_000  # the next minute: its counter has never been counted
    assert isinstance(await admit(gate, limited, {}), Admission)
    await gate.close()


async def test_fail_closed_is_not_changed_by_what_was_read() -> None:
    store = Switch()
    gate = QuotaGate(store, clock=lambda: NOW)
    closed = {"default/cap": CAP["default/cap"].model_copy(update={"failure_policy": "FailClosed"})}
    assert isinstance(await admit(gate, key("default/cap"), closed), Admission)
    store.down = True
    denial = await admit(gate, key("default/cap"), closed)
    assert isinstance(denial, Denial) and denial.status == 503
    await gate.close()


async def test_the_counters_remembered_are_bounded_keeping_the_most_recently_read() -> None:
    store = Switch()
    gate = QuotaGate(store, clock=lambda: NOW, retry_s=3600)
    gate._blind = BlindCounts(max_counters=4)
    budgets = {f"default/cap{i}": CAP["default/cap"].model_copy(update={"name": f"cap{i}"}) for i in range(6)}
    for name in budgets:  # one checked counter each: its budget's
        admission = await admit(gate, key(name), {name: budgets[name]})
        assert isinstance(admission, Admission)
        await gate.settle(admission, Charge(9, 91, ESTIMATE_NANO))
        assert len(gate._blind) <= 4
    store.down = True
    last = await admit(gate, key("default/cap5"), {"default/cap5": budgets["default/cap5"]})
    assert isinstance(last, Admission) and gate._blind.used(last.plan)[0] == 2 * ESTIMATE_NANO
    first = await admit(gate, key("default/cap0"), {"default/cap0": budgets["default/cap0"]})
    assert isinstance(first, Admission) and gate._blind.used(first.plan)[0] == ESTIMATE_NANO  # forgotten
    await gate.close()
