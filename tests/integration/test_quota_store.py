"""One suite, both quota stores: the in-memory store, a real redis-server and a real 3-primary Redis
Cluster must behave the same.

Every test drives the clock (the `now_ms` the stores are given) instead of sleeping, and uses its own
namespace, so the Redis tests share one server without seeing each other's counters.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from decimal import Decimal

import pytest
import redis.asyncio
from rediscluster import RedisCluster
from redisserver import RedisServer

from tollway_sidecar.config.models import Budget, Limits, VirtualKey
from tollway_sidecar.contract.money import from_nano
from tollway_sidecar.contract.redis_counters import RedisCounters, bounded_client
from tollway_sidecar.contract.usage_event import USAGE_FIELD, USAGE_STREAM, UsageEvent, uuid7
from tollway_sidecar.extproc.expiry_record import EXPIRED_STATUS, expiry_event_json
from tollway_sidecar.extproc.state import RequestState
from tollway_sidecar.quota.estimate import Estimate
from tollway_sidecar.quota.memory import MemoryStore
from tollway_sidecar.quota.plan import (
    Charge,
    Plan,
    budget_key,
    build_plan,
    for_hit,
    key_minute_key,
    key_month_key,
    settlement_for,
    user_tag,
)
from tollway_sidecar.quota.redis_store import RedisStore
from tollway_sidecar.quota.store import Batch, BatchLine, QuotaStore

TTL_MS = 600_000


def at(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp() * 1000)


@pytest.fixture(params=["memory", "redis", "cluster"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[QuotaStore]:
    if request.param == "memory":
        yield MemoryStore()
        return
    server: RedisServer | RedisCluster = request.getfixturevalue(
        "redis_server" if request.param == "redis" else "redis_cluster"
    )
    redis_store = RedisStore(server.url, timeout_s=1.0)
    try:
        yield redis_store
    finally:
        await redis_store.close()


@pytest.fixture
def namespace() -> str:
    return f"t{uuid.uuid4().hex[:12]}"


def make_key(
    namespace: str,
    *,
    limits: Limits | None = None,
    per_user: Limits | None = None,
    budgets: tuple[str, ...] = (),
) -> VirtualKey:
    return VirtualKey(
        name="app",
        namespace=namespace,
        key_sha256="0" * 64,
        limits=limits or Limits(),
        per_user_limits=per_user or Limits(),
        budgets=tuple(f"{namespace}/{name}" for name in budgets),
    )


def make_budget(namespace: str, limit: str, **fields: object) -> Budget:
    return Budget(name="cap", namespace=namespace, limit_usd=Decimal(limit), **fields)  # type: ignore[arg-type]


def plan_for(
    key: VirtualKey,
    now_ms: int,
    *,
    budgets: tuple[Budget, ...] = (),
    cost: str = "0.3",
    tokens: tuple[int, int] = (100, 50),
    user: str | None = None,
    ttl_ms: int = TTL_MS,
) -> Plan:
    return build_plan(
        key=key,
        budgets={budget.id: budget for budget in budgets},
        user=user,
        estimate=Estimate(tokens[0], tokens[1], Decimal(cost)),
        rid=uuid.uuid4().hex,
        now_ms=now_ms,
        reservation_ttl_ms=ttl_ms,
    )


async def budget_fields(store: QuotaStore, budget: Budget, now_ms: int) -> dict[str, int]:
    key = budget_key(budget, datetime.fromtimestamp(now_ms / 1000, tz=UTC))
    return (await store.read(budget.namespace, [key], now_ms))[key]


async def test_budget_admits_until_its_limit_and_a_refusal_reserves_nothing(
    store: QuotaStore, namespace: str
) -> None:
    budget = make_budget(namespace, "1.00")
    key = make_key(namespace, budgets=("cap",))
    now = at("2026-03-14T12:00:00")
    results = [await store.reserve(plan_for(key, now, budgets=(budget,))) for _ in range(4)]
    assert [r.admitted for r in results] == [True, True, True, False]
    assert [r.used[0] for r in results] == [0, 300_000_000, 600_000_000, 900_000_000]
    fields = await budget_fields(store, budget, now)
    assert fields == {"usd": 900_000_000, "usd_r": 900_000_000}  # 3 x $0.3 reserved, nothing spent


async def test_settle_replaces_the_estimate_with_the_actual_cost_once(
    store: QuotaStore, namespace: str
) -> None:
    budget = make_budget(namespace, "1.00")
    key = make_key(namespace, budgets=("cap",))
    now = at("2026-03-14T12:00:00")
    plan = plan_for(key, now, budgets=(budget,))
    assert (await store.reserve(plan)).admitted
    settlement = settlement_for(plan, Charge(80, 20, 123_456_789))
    assert await store.settle(plan, settlement, now + 1000) is True
    assert await budget_fields(store, budget, now) == {"usd": 123_456_789, "usd_r": 0}
    # Settling again (a retry, a duplicate) changes nothing.
    assert await store.settle(plan, settlement, now + 2000) is False
    assert await budget_fields(store, budget, now) == {"usd": 123_456_789, "usd_r": 0}
    month = key_month_key(key, datetime.fromtimestamp(now / 1000, tz=UTC))
    tally = (await store.read(namespace, [month], now))[month]
    assert tally == {"usd": 123_456_789, "usd_r": 0, "req": 1, "in": 80, "out": 20}


async def test_unsettled_reservation_expires_charged_at_its_estimate(
    store: QuotaStore, namespace: str
) -> None:
    budget = make_budget(namespace, "1.00")
    key = make_key(namespace, budgets=("cap",))
    now = at("2026-03-14T12:00:00")
    plan = plan_for(key, now, budgets=(budget,), ttl_ms=30_000, tokens=(100, 50))
    assert (await store.reserve(plan)).admitted
    assert await budget_fields(store, budget, now + 29_999) == {"usd": 300_000_000, "usd_r": 300_000_000}
    later = now + 30_000
    assert await budget_fields(store, budget, later) == {"usd": 300_000_000, "usd_r": 0}
    # The sidecar comes back with a settle after the expiry: too late, nothing changes.
    assert await store.settle(plan, settlement_for(plan, Charge(1, 1, 1)), later + 5) is False
    assert await budget_fields(store, budget, later) == {"usd": 300_000_000, "usd_r": 0}
    month = key_month_key(key, datetime.fromtimestamp(now / 1000, tz=UTC))
    tally = (await store.read(namespace, [month], later))[month]
    assert tally == {"usd": 300_000_000, "usd_r": 0, "req": 1, "in": 100, "out": 50, "expired": 1}


async def test_daily_budget_spent_yesterday_admits_calls_today(store: QuotaStore, namespace: str) -> None:
    budget = make_budget(namespace, "0.50", period="Daily")
    key = make_key(namespace, budgets=("cap",))
    yesterday = at("2026-03-14T23:59:59.500")
    first = plan_for(key, yesterday, budgets=(budget,), cost="0.5")
    assert (await store.reserve(first)).admitted
    await store.settle(first, settlement_for(first, Charge(10, 10, 500_000_000)), yesterday)
    assert not (await store.reserve(plan_for(key, yesterday + 499, budgets=(budget,), cost="0.01"))).admitted
    today = at("2026-03-15T00:00:00")
    result = await store.reserve(plan_for(key, today, budgets=(budget,), cost="0.5"))
    assert result.admitted and result.used[0] == 0
    assert await budget_fields(store, budget, today) == {"usd": 500_000_000, "usd_r": 500_000_000}


async def test_monthly_and_total_budgets_roll_over_at_their_own_periods(
    store: QuotaStore, namespace: str
) -> None:
    monthly = Budget(name="month", namespace=namespace, limit_usd=Decimal("1"), period="Monthly")
    total = Budget(name="total", namespace=namespace, limit_usd=Decimal("2"), period="Total")
    key = make_key(namespace, budgets=("month", "total"))
    march = at("2026-03-31T23:00:00")
    assert (await store.reserve(plan_for(key, march, budgets=(monthly, total), cost="1"))).admitted
    assert not (await store.reserve(plan_for(key, march, budgets=(monthly, total), cost="1"))).admitted
    april = at("2026-04-01T00:00:00")
    assert (await store.reserve(plan_for(key, april, budgets=(monthly, total), cost="1"))).admitted
    may = at("2026-05-01T00:00:00")
    refused = await store.reserve(plan_for(key, may, budgets=(monthly, total), cost="1"))
    assert not refused.admitted
    assert refused.used[:2] == (0, 2_000_000_000)  # May's budget is fresh; the Total one is spent


async def test_requests_per_minute_use_fixed_utc_minutes(store: QuotaStore, namespace: str) -> None:
    key = make_key(namespace, limits=Limits(requests_per_minute=2))
    start = at("2026-03-14T12:00:10")
    outcomes = [(await store.reserve(plan_for(key, start + i))).admitted for i in range(3)]
    assert outcomes == [True, True, False]
    assert (await store.reserve(plan_for(key, at("2026-03-14T12:00:59.999")))).admitted is False
    assert (await store.reserve(plan_for(key, at("2026-03-14T12:01:00")))).admitted is True


async def test_tokens_per_minute_are_freed_by_settling_below_the_estimate(
    store: QuotaStore, namespace: str
) -> None:
    key = make_key(namespace, limits=Limits(tokens_per_minute=1000))
    now = at("2026-03-14T12:00:00")
    big = plan_for(key, now, tokens=(200, 600))
    assert (await store.reserve(big)).admitted
    assert not (await store.reserve(plan_for(key, now + 1, tokens=(200, 100)))).admitted  # 800 + 300
    await store.settle(big, settlement_for(big, Charge(200, 50, 0)), now + 2)
    minute = key_minute_key(key, now // 60_000)
    assert (await store.read(namespace, [minute], now + 3))[minute] == {"tok": 250, "tok_r": 0}
    assert (await store.reserve(plan_for(key, now + 4, tokens=(200, 100)))).admitted


async def test_per_user_limits_count_each_user_and_anonymous_callers_share_one_bucket(
    store: QuotaStore, namespace: str
) -> None:
    key = make_key(namespace, per_user=Limits(requests_per_minute=1))
    now = at("2026-03-14T12:00:00")
    outcomes = [
        (await store.reserve(plan_for(key, now + i, user=user))).admitted
        for i, user in enumerate(["ana", "bo", "ana", None, None])
    ]
    assert outcomes == [True, True, False, True, False]


async def test_per_user_budget_gives_each_user_a_copy_and_keeps_a_total(
    store: QuotaStore, namespace: str
) -> None:
    budget = make_budget(namespace, "0.6", per_user=True)
    key = make_key(namespace, budgets=("cap",))
    now = at("2026-03-14T12:00:00")
    outcomes = [
        (await store.reserve(plan_for(key, now, budgets=(budget,), user=user))).admitted
        for user in ["ana", "ana", "ana", "bo", "bo"]
    ]
    assert outcomes == [True, True, False, True, True]
    assert await budget_fields(store, budget, now) == {"usd": 1_200_000_000, "usd_r": 1_200_000_000}


async def test_a_hits_settle_tallies_its_saving_on_every_usd_counter_once(
    store: QuotaStore, namespace: str
) -> None:
    budget = make_budget(namespace, "0.5")
    per_user = Budget(name="each", namespace=namespace, limit_usd=Decimal("1"), per_user=True)
    key = make_key(namespace, budgets=("cap", "each"))
    now = at("2026-03-14T12:00:00")
    # The budget is spent: no call fits, a hit still does (and counts nothing but its request).
    first = plan_for(key, now, budgets=(budget, per_user), user="ana", cost="0.5")
    assert (await store.reserve(first)).admitted
    assert not (await store.reserve(plan_for(key, now, budgets=(budget, per_user), user="ana"))).admitted
    # A hit on counters no call has created yet (a fresh user's copy) still lands its saving.
    hits = [
        for_hit(plan_for(key, now + n, budgets=(budget, per_user), user=user)) for n, user in enumerate("ab")
    ]
    for hit in hits:
        assert (await store.reserve(hit)).admitted
        settlement = settlement_for(hit, Charge(0, 0, 0), saved_nano=300_000_001)
        assert await store.settle(hit, settlement, now + 1000) is True
        assert await store.settle(hit, settlement, now + 2000) is False  # a retry adds nothing
    moment = datetime.fromtimestamp(now / 1000, tz=UTC)
    month = key_month_key(key, moment)
    names = [
        budget_key(budget, moment),
        budget_key(per_user, moment),  # the total over all users
        budget_key(per_user, moment, user_tag("b")),
    ]
    counters = await store.read(namespace, [month, *names], now)
    assert counters[names[0]] == {"usd": 500_000_000, "usd_r": 500_000_000, "saved": 600_000_002}
    assert counters[names[1]] == {"usd": 500_000_000, "usd_r": 500_000_000, "saved": 600_000_002}
    assert counters[names[2]] == {"usd": 0, "usd_r": 0, "saved": 300_000_001}  # b's copy
    assert counters[month] == {
        "usd": 500_000_000,
        "usd_r": 500_000_000,
        "req": 3,
        "in": 0,
        "out": 0,
        "saved": 600_000_002,
    }


async def test_alert_budget_counts_but_never_refuses(store: QuotaStore, namespace: str) -> None:
    budget = make_budget(namespace, "0.5", action="Alert")
    key = make_key(namespace, budgets=("cap",))
    now = at("2026-03-14T12:00:00")
    assert all([(await store.reserve(plan_for(key, now, budgets=(budget,)))).admitted for _ in range(3)])
    assert (await budget_fields(store, budget, now))["usd"] == 900_000_000


async def test_200_concurrent_reservations_admit_exactly_what_fits(store: QuotaStore, namespace: str) -> None:
    budget = make_budget(namespace, "3.70")  # 37 x $0.10
    key = make_key(namespace, budgets=("cap",), limits=Limits(tokens_per_minute=10**9))
    now = at("2026-03-14T12:00:00")
    plans = [plan_for(key, now, budgets=(budget,), cost="0.1") for _ in range(200)]
    results = await asyncio.gather(*(store.reserve(plan) for plan in plans))
    assert sum(result.admitted for result in results) == 37
    assert await budget_fields(store, budget, now) == {"usd": 3_700_000_000, "usd_r": 3_700_000_000}


async def test_a_batch_of_local_counts_is_applied_once(store: QuotaStore, namespace: str) -> None:
    key = f"tw:{{{namespace}}}:b:cap:2026-03-14"
    now = at("2026-03-14T12:00:00")
    batch = Batch(namespace, uuid.uuid4().hex, now, (BatchLine(key, "usd", 700, 60_000),))
    assert await store.apply(batch) is True
    assert await store.apply(batch) is False  # the retry of a batch whose answer was lost
    assert (await store.read(namespace, [key], now))[key] == {"usd": 700}


async def outbox(store: QuotaStore, namespace: str) -> list[str]:
    """The usage events a store appended that mention `namespace` (tests share one Redis)."""
    if isinstance(store, MemoryStore):
        events = list(store.outbox)
    else:
        assert isinstance(store, RedisStore)
        # The namespace's own stream on a cluster, in its counters' slot; the one stream otherwise.
        client = bounded_client(store.url, timeout_s=5.0, max_connections=2, decode_responses=False)
        try:
            entries = await client.xrange(store.stream(namespace))
        finally:
            await client.aclose()
        events = [fields[USAGE_FIELD.encode()].decode() for _id, fields in entries]
    return [event for event in events if f'"{namespace}"' in event]


async def test_a_settle_appends_its_event_once_with_the_counters(store: QuotaStore, namespace: str) -> None:
    budget = make_budget(namespace, "1.00")
    key = make_key(namespace, budgets=("cap",))
    now = at("2026-03-14T12:00:00")
    plan = plan_for(key, now, budgets=(budget,))
    assert (await store.reserve(plan)).admitted
    event = json.dumps({"namespace": namespace, "cost": "0.123456789"})
    settlement = settlement_for(plan, Charge(80, 20, 123_456_789))
    assert await store.settle(plan, settlement, now + 1000, event) is True
    assert await outbox(store, namespace) == [event]
    # A settle retried after a lost reply changes no counter and adds no second event.
    assert await store.settle(plan, settlement, now + 2000, event) is False
    assert await outbox(store, namespace) == [event]
    assert await budget_fields(store, budget, now) == {"usd": 123_456_789, "usd_r": 0}


async def test_an_expired_reservation_settles_nothing_and_appends_no_event(
    store: QuotaStore, namespace: str
) -> None:
    key = make_key(namespace)
    now = at("2026-03-14T12:00:00")
    plan = plan_for(key, now, ttl_ms=1000)
    assert (await store.reserve(plan)).admitted
    event = json.dumps({"namespace": namespace})
    assert await store.settle(plan, settlement_for(plan, Charge(1, 1, 1)), now + 5000, event) is False
    assert await outbox(store, namespace) == []


def expiry_event(key: VirtualKey, plan: Plan) -> str:
    """The event the gate keeps with a reservation: the call charged at its estimate."""
    state = RequestState(request_id=plan.rid, started=0.0)
    state.key = key
    state.client_model = "gpt-4o-mini"
    return expiry_event_json(state, plan, uuid7(), source="gw-0")


async def test_an_expired_reservation_appends_its_one_event_charged_what_the_counters_keep(
    store: QuotaStore, namespace: str
) -> None:
    budget = make_budget(namespace, "1.00")
    key = make_key(namespace, budgets=("cap",))
    now = at("2026-03-14T12:00:00")
    plan = plan_for(key, now, budgets=(budget,), ttl_ms=30_000, tokens=(100, 50), cost="0.123456789")
    expiry = expiry_event(key, plan)
    assert (await store.reserve(plan, expiry)).admitted
    other = plan_for(key, now + 29_999, budgets=(budget,), ttl_ms=30_000)
    assert (await store.reserve(other)).admitted  # its sweep finds nothing due yet
    assert await outbox(store, namespace) == []
    # Another call's reserve, after the expiry, sweeps it: one event, the counters keep its estimate.
    assert (await store.reserve(plan_for(key, now + 30_000, budgets=(budget,), cost="0"))).admitted
    assert await outbox(store, namespace) == [expiry]
    event = UsageEvent.from_json(expiry)
    assert (event.data.outcome, event.data.status, event.data.billable) == ("expired", EXPIRED_STATUS, True)
    assert event.data.cost_nanos == 123_456_789
    assert (event.data.tokens.input, event.data.tokens.output) == (100, 50)
    assert event.data.budgets == (f"{namespace}/cap",)
    fields = await budget_fields(store, budget, now + 30_000)
    assert fields["usd"] - 300_000_000 == event.data.cost_nanos  # the other call holds $0.3
    month = key_month_key(key, datetime.fromtimestamp(now / 1000, tz=UTC))
    tally = (await store.read(namespace, [month], now + 30_000))[month]
    assert (tally["usd"] - 300_000_000, tally["in"], tally["out"]) == (123_456_789, 100, 50)
    # The call's own settle comes back late: it changes nothing and adds no second event.
    settled = json.dumps({"namespace": namespace, "settled": True})
    assert await store.settle(plan, settlement_for(plan, Charge(1, 1, 1)), now + 31_000, settled) is False
    assert await outbox(store, namespace) == [expiry]
    assert (await budget_fields(store, budget, now + 31_000))["usd"] == fields["usd"]


async def test_a_read_sweeps_expired_reservations_and_appends_their_events_once(
    store: QuotaStore, namespace: str
) -> None:
    budget = make_budget(namespace, "10")
    key = make_key(namespace, budgets=("cap",))
    now = at("2026-03-14T12:00:00")
    plans = [plan_for(key, now + i, budgets=(budget,), ttl_ms=1000, cost="0.001") for i in range(3)]
    events = [expiry_event(key, plan) for plan in plans]
    for plan, event in zip(plans, events, strict=True):
        assert (await store.reserve(plan, event)).admitted
    # One settled in time: its event, and its expiry event is gone with its reservation.
    settled = json.dumps({"namespace": namespace, "settled": True})
    assert await store.settle(plans[0], settlement_for(plans[0], Charge(1, 1, 500)), now + 500, settled)
    # The read (/spend, the operator's status) sweeps the other two: one event each.
    fields = await budget_fields(store, budget, now + 1002)
    assert await outbox(store, namespace) == [settled, events[1], events[2]]
    assert await budget_fields(store, budget, now + 5000) == fields  # swept once: nothing more
    assert await outbox(store, namespace) == [settled, events[1], events[2]]
    charged = sum(UsageEvent.from_json(event).data.cost_nanos for event in events[1:])
    assert fields == {"usd": 500 + charged, "usd_r": 0}
    assert from_nano(charged) == Decimal("0.002")  # two estimates of $0.001


@pytest.mark.parametrize("where", ["redis_server", "redis_cluster"])
async def test_the_operators_reader_sweeps_too_and_appends_the_expired_calls_event(
    where: str, request: pytest.FixtureRequest, namespace: str
) -> None:
    server: RedisServer | RedisCluster = request.getfixturevalue(where)
    store = RedisStore(server.url, timeout_s=1.0)
    operator = RedisCounters(server.url, timeout_s=1.0)  # what the operator's status reads with
    try:
        budget = make_budget(namespace, "1.00")
        key = make_key(namespace, budgets=("cap",))
        now = at("2026-03-14T12:00:00")
        plan = plan_for(key, now, budgets=(budget,), ttl_ms=1000)
        expiry = expiry_event(key, plan)
        assert (await store.reserve(plan, expiry)).admitted
        cap = budget_key(budget, datetime.fromtimestamp(now / 1000, tz=UTC))
        assert (await operator.read(namespace, [cap], now + 999))[cap] == {
            "usd": 300_000_000,
            "usd_r": 300_000_000,
        }
        assert await outbox(store, namespace) == []
        assert (await operator.read(namespace, [cap], now + 1000))[cap] == {"usd": 300_000_000, "usd_r": 0}
        assert await outbox(store, namespace) == [expiry]
        await operator.read(namespace, [cap], now + 2000)
        assert await outbox(store, namespace) == [expiry]
    finally:
        await operator.close()
        await store.close()


async def test_a_settle_sweeps_others_expired_reservations_and_appends_their_events(
    store: QuotaStore, namespace: str
) -> None:
    key = make_key(namespace)
    now = at("2026-03-14T12:00:00")
    stale = plan_for(key, now, ttl_ms=1000)
    expiry = expiry_event(key, stale)
    assert (await store.reserve(stale, expiry)).admitted
    fresh = plan_for(key, now + 1, ttl_ms=60_000)
    assert (await store.reserve(fresh)).admitted
    assert await store.settle(fresh, settlement_for(fresh, Charge(1, 1, 1)), now + 2000) is True
    assert await outbox(store, namespace) == [expiry]


async def test_a_settle_without_an_event_appends_none_and_emit_appends_one(
    store: QuotaStore, namespace: str
) -> None:
    key = make_key(namespace)
    now = at("2026-03-14T12:00:00")
    plan = plan_for(key, now)
    assert (await store.reserve(plan)).admitted
    assert await store.settle(plan, settlement_for(plan, Charge(1, 1, 1)), now + 1) is True
    assert await outbox(store, namespace) == []
    refused = json.dumps({"namespace": namespace, "billable": False})
    await store.emit(refused, namespace)
    assert await outbox(store, namespace) == [refused]


async def test_a_batch_appends_the_events_of_the_calls_it_counts_once(
    store: QuotaStore, namespace: str
) -> None:
    key = f"tw:{{{namespace}}}:b:cap:2026-03-14"
    now = at("2026-03-14T12:00:00")
    events = tuple(json.dumps({"namespace": namespace, "n": n}) for n in range(3))
    batch = Batch(namespace, uuid.uuid4().hex, now, (BatchLine(key, "usd", 700, 60_000),), events)
    assert await store.apply(batch) is True
    assert await store.apply(batch) is False  # a retry after a lost answer: no second copy
    assert await outbox(store, namespace) == list(events)
    assert (await store.read(namespace, [key], now))[key] == {"usd": 700}


async def test_the_redis_usage_stream_is_capped_when_no_meter_reads_it(redis_server: RedisServer) -> None:
    store = RedisStore(redis_server.url, timeout_s=1.0, usage_stream_maxlen=200)
    client = redis.asyncio.from_url(redis_server.url)
    try:
        await client.delete(USAGE_STREAM)
        for n in range(2000):
            await store.emit(json.dumps({"n": n}))
        length = await client.xlen(USAGE_STREAM)
        assert 200 <= length < 2000  # approximate: Redis trims whole nodes
        newest = await client.xrevrange(USAGE_STREAM, count=1)
        assert json.loads(newest[0][1][USAGE_FIELD.encode()]) == {"n": 1999}
    finally:
        await client.aclose()
        await store.close()
