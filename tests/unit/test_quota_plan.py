"""Planning, money, denials, headers and what a finished call is charged: the pure half of quotas."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest
from redis.crc import key_slot

from tollway_sidecar.config.models import Budget, Limits, VirtualKey
from tollway_sidecar.providers.usage import ParsedStream, TokenUsage
from tollway_sidecar.quota.decision import decide, go_duration, ratelimit_headers
from tollway_sidecar.quota.estimate import Estimate
from tollway_sidecar.quota.gate import charge_for
from tollway_sidecar.quota.plan import Charge, build_plan, for_hit, from_nano, settlement_for, to_nano

NOW = int(datetime(2026, 3, 14, 12, 0, 15, tzinfo=UTC).timestamp() * 1000)
KEY = VirtualKey(
    name="app",
    namespace="team-a",
    key_sha256="0" * 64,
    limits=Limits(requests_per_minute=10, tokens_per_minute=1000, tokens_per_day=50_000),
    per_user_limits=Limits(requests_per_minute=2),
    budgets=("team-a/daily", "team-a/per-user", "team-a/watch"),
)
BUDGETS = {
    "team-a/daily": Budget(name="daily", namespace="team-a", limit_usd=Decimal("5"), period="Daily"),
    "team-a/per-user": Budget(
        name="per-user", namespace="team-a", limit_usd=Decimal("1"), per_user=True, failure_policy="FailOpen"
    ),
    "team-a/watch": Budget(name="watch", namespace="team-a", limit_usd=Decimal("1"), action="Alert"),
}
ESTIMATE = Estimate(prompt_tokens=120, output_tokens=80, cost_usd=Decimal("0.0000125"))


def plan(user: str | None = "ana", key: VirtualKey = KEY) -> object:
    return build_plan(
        key=key,
        budgets=BUDGETS,
        user=user,
        estimate=ESTIMATE,
        rid="r1",
        now_ms=NOW,
        reservation_ttl_ms=60_000,
    )


@pytest.mark.parametrize(
    ("usd", "nano"),
    [
        (Decimal("0.000000001"), 1),
        (Decimal("0.0000000011"), 2),  # a fraction of a nano-dollar rounds up
        (Decimal("0.00000735"), 7350),  # whole: unchanged
        (Decimal("10"), 10_000_000_000),
        (Decimal("0"), 0),
    ],
)
def test_money_is_whole_nano_dollars_rounded_up_only_when_needed(usd: Decimal, nano: int) -> None:
    assert to_nano(usd) == nano
    assert from_nano(7350) == Decimal("0.00000735")


def test_every_key_one_call_touches_is_in_one_redis_cluster_slot() -> None:
    built = build_plan(
        key=KEY,
        budgets=BUDGETS,
        user="ana",
        estimate=ESTIMATE,
        rid="r1",
        now_ms=NOW,
        reservation_ttl_ms=60_000,
    )
    names = [*built.keys, built.reservation_key, built.index_key]
    assert len(built.keys) == 8  # key minute/day, user minute, 4 budget counters, key month
    assert {key_slot(name.encode()) for name in names} == {key_slot(b"{team-a}")}
    assert all(name.startswith("tw:{team-a}:") for name in names)


def test_plan_lines_carry_limits_amounts_and_the_strictest_failure_policy() -> None:
    built = build_plan(
        key=KEY,
        budgets=BUDGETS,
        user="ana",
        estimate=ESTIMATE,
        rid="r1",
        now_ms=NOW,
        reservation_ttl_ms=60_000,
    )
    summary = [(line.scope, line.metric, line.window, line.amount, line.limit) for line in built.lines]
    assert summary == [
        ("key", "requests", "minute", 1, 10),
        ("key", "tokens", "minute", 200, 1000),
        ("key", "tokens", "day", 200, 50_000),
        ("user", "requests", "minute", 1, 2),
        ("budget", "usd", "period", 12_500, 5_000_000_000),
        ("budget", "usd", "period", 12_500, 1_000_000_000),  # ana's copy of the perUser budget
        ("tally", "usd", "period", 12_500, -1),  # its total over all users
        ("budget", "usd", "period", 12_500, -1),  # Alert: counted, never checked
        ("tally", "usd", "month", 12_500, -1),
        ("tally", "requests", "month", 1, -1),
    ]
    assert built.failure_policy == "FailClosed"  # one FailClosed Block budget decides


def test_settlement_moves_only_what_differs_from_the_reservation() -> None:
    built = build_plan(
        key=KEY, budgets={}, user=None, estimate=ESTIMATE, rid="r1", now_ms=NOW, reservation_ttl_ms=60_000
    )
    settlement = settlement_for(built, Charge(100, 50, 9_000))
    deltas = {(item.key.rsplit(":", 2)[-2], item.field): item.amount for item in settlement.deltas}
    assert deltas == {("m", "tok"): -50, ("d", "tok"): -50, ("mo", "usd"): -3_500}
    assert [(item.field, item.amount) for item in settlement.tallies] == [("in", 100), ("out", 50)]


def test_a_hit_reserves_only_requests_and_its_settle_tallies_saved_on_every_usd_counter() -> None:
    built = build_plan(
        key=KEY,
        budgets=BUDGETS,
        user="ana",
        estimate=ESTIMATE,
        rid="r1",
        now_ms=NOW,
        reservation_ttl_ms=60_000,
    )
    hit = for_hit(built)
    summary = [(line.scope, line.metric, line.window, line.amount, line.limit) for line in hit.lines]
    assert summary == [
        ("key", "requests", "minute", 1, 10),
        ("user", "requests", "minute", 1, 2),
        ("budget", "usd", "period", 0, -1),  # kept at zero, unchecked: the counters the saving goes to
        ("budget", "usd", "period", 0, -1),
        ("tally", "usd", "period", 0, -1),
        ("budget", "usd", "period", 0, -1),
        ("tally", "usd", "month", 0, -1),
        ("tally", "requests", "month", 1, -1),
    ]
    assert hit.on_expiry == () and hit.hit and not built.hit
    settlement = settlement_for(hit, Charge(0, 0, 0), saved_nano=7_350)
    assert settlement.deltas == ()  # it costs nothing
    saved = [item.key for item in settlement.tallies if item.field == "saved"]
    assert saved == [line.key for line in hit.lines if line.metric == "usd"]
    assert len(set(saved)) == 5  # daily, ana's copy and the total, the Alert budget, the key's month
    assert all(item.amount == 7_350 for item in settlement.tallies if item.field == "saved")
    # Nothing saved, nothing tallied; and only a hit saves.
    assert all(item.field != "saved" for item in settlement_for(hit, Charge(0, 0, 0)).tallies)
    assert all(item.field != "saved" for item in settlement_for(built, Charge(100, 50, 9_000)).tallies)
    with pytest.raises(ValueError, match="cache hit"):
        settlement_for(built, Charge(100, 50, 9_000), saved_nano=7_350)


@pytest.mark.parametrize(
    ("ms", "text"),
    [(0, "0ms"), (20, "20ms"), (1000, "1s"), (59_500, "59.5s"), (360_000, "6m0s"), (86_399_000, "23h59m59s")],
)
def test_reset_durations_are_written_as_openai_does(ms: int, text: str) -> None:
    assert go_duration(ms) == text


def test_headers_report_the_limit_with_the_least_remaining() -> None:
    built = build_plan(
        key=KEY, budgets={}, user="ana", estimate=ESTIMATE, rid="r1", now_ms=NOW, reservation_ttl_ms=60_000
    )
    # used before the call: key rpm 3, key tpm 500, key tpd 900, user rpm 1, tallies
    headers = ratelimit_headers(built, [3, 500, 900, 1, 0, 0], admitted=True)
    assert headers == {
        "x-ratelimit-limit-requests": "2",  # the user's limit: 0 left after this call
        "x-ratelimit-remaining-requests": "0",
        "x-ratelimit-reset-requests": "45s",
        "x-ratelimit-limit-tokens": "1000",
        "x-ratelimit-remaining-tokens": "300",
        "x-ratelimit-reset-tokens": "45s",
    }


def test_a_spent_budget_is_named_with_when_it_resets_and_wins_over_rate_limits() -> None:
    built = build_plan(
        key=KEY,
        budgets=BUDGETS,
        user="ana",
        estimate=ESTIMATE,
        rid="r1",
        now_ms=NOW,
        reservation_ttl_ms=60_000,
    )
    used = [10, 0, 0, 0, 4_999_990_000, 0, 0, 0, 0, 0]  # rpm full, and the daily budget too
    denial = decide(built, used)
    assert denial is not None
    assert (denial.status, denial.error_type, denial.code) == (429, "insufficient_quota", "budget_exceeded")
    assert denial.message == (
        "Budget 'team-a/daily' is exhausted: $0.00001 of its Daily limit of $5 remains and this call may "
        "cost up to $0.0000125; it resets at 2026-03-15T00:00:00Z."
    )
    assert denial.headers["x-tollway-budget"] == "team-a/daily"
    assert denial.headers["x-should-retry"] == "false"


def test_a_rate_limit_denial_says_when_to_retry() -> None:
    built = build_plan(
        key=KEY, budgets={}, user="ana", estimate=ESTIMATE, rid="r1", now_ms=NOW, reservation_ttl_ms=60_000
    )
    denial = decide(built, [0, 0, 0, 2, 0, 0])
    assert denial is not None
    assert (denial.status, denial.error_type, denial.code) == (429, "requests", "rate_limit_exceeded")
    assert denial.message == (
        "Rate limit reached for user 'ana' of key 'team-a/app' on requests per minute: limit 2, used 2, "
        "requested 1. Please try again in 45s."
    )
    assert denial.headers["retry-after"] == "45"
    assert denial.headers["retry-after-ms"] == "45000"
    assert decide(built, [0, 0, 0, 1, 0, 0]) is None


STREAM_CUT = ParsedStream(None, "m", (), complete=False, error="stream ended", output_chunks=17)


@pytest.mark.parametrize(
    ("usage", "cost", "status", "reached", "stream", "expected"),
    [
        (TokenUsage(10, 5), Decimal("0.000001"), 200, True, None, Charge(10, 5, 1_000)),
        (None, None, 503, False, None, Charge(0, 0, 0)),  # Envoy answered: no backend was reached
        (None, None, 429, True, None, Charge(0, 0, 0)),  # the provider refused: it bills nothing
        (None, None, 200, True, STREAM_CUT, Charge(120, 17, 120 * 150 + 17 * 600, True)),
        (None, None, 0, True, None, Charge(120, 0, 120 * 150, True)),  # the client left first
        # Usage unreadable (a broken body, no or invalid usage): the prompt, not the reservation.
        (None, None, 200, True, None, Charge(120, 0, 120 * 150, True)),
    ],
)
def test_what_a_finished_call_is_charged(
    usage: TokenUsage | None,
    cost: Decimal | None,
    status: int,
    reached: bool,
    stream: ParsedStream | None,
    expected: Charge,
) -> None:
    from tollway_sidecar.config.models import Backend, Pricing
    from tollway_sidecar.pricing import resolve_price

    backend = Backend(
        name="b",
        provider="openai-compatible",
        model="m",
        base_url="http://x",
        pricing=Pricing(input_per_million=Decimal("0.15"), output_per_million=Decimal("0.6")),
    )
    got = charge_for(
        ESTIMATE,
        usage=usage,
        cost=cost,
        status=status,
        reached_backend=reached,
        stream=stream,
        price=resolve_price(backend),
    )
    assert got == expected
