"""What one call reserves, and where: the store-independent half of reserve-and-settle. Pure.

A `Plan` lists the counters a call touches — its key's and end user's rate-limit windows, every
budget its key references, the key's monthly tally — as `Line`s: a counter hash, the field holding
"used" (spent + reserved), the field holding "reserved", the amount to reserve and the limit to check.
Both stores (Redis through Lua, memory through Python) execute plans the same way:

- reserve: if `used + amount > limit` for any checked line, change nothing and refuse; otherwise add
  `amount` to `used` and to `reserved` on every line and record the reservation, which expires at
  `now + ttl`.
- settle: if the reservation is still recorded, add `actual - amount` to `used`, take `amount` out
  of `reserved`, apply the tally increments, and forget the reservation; otherwise change nothing.
- a hit (a call answered from the response cache, `for_hit`) reserves and checks only its request
  lines; its settle's tallies add what it saved to the `saved` field of every usd counter.
- expiry (swept by every operation in the namespace): take `amount` out of `reserved` and leave
  `used` alone, so the call stays charged at its estimate.

Money is integer nano-USD (`to_nano` rounds a cost up to the next nano-dollar when it is not whole).
Windows are fixed and in UTC: the minute and the day for rate limits, the calendar period for budgets.
The key names, periods and money helpers are the operator's too: they live in `tollway_sidecar.contract`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import datetime
from typing import Final, Literal

from tollway_sidecar.config.models import Budget, FailurePolicy, Limits, VirtualKey
from tollway_sidecar.contract.keys import (
    KEY_PERIOD,
    anonymous_user,
    budget_key,
    index_key,
    key_day_key,
    key_minute_key,
    key_month_key,
    namespace_prefix,
    reservation_prefix,
    user_tag,
)
from tollway_sidecar.contract.money import NANO_PER_USD, from_nano, to_nano
from tollway_sidecar.contract.periods import ms_to_datetime, period_bounds
from tollway_sidecar.quota.estimate import Estimate

__all__ = [
    "KEY_PERIOD",
    "NANO_PER_USD",
    "Charge",
    "Increment",
    "Line",
    "Plan",
    "Settlement",
    "anonymous_user",
    "budget_key",
    "build_plan",
    "expiry_charge",
    "for_hit",
    "from_nano",
    "key_day_key",
    "key_minute_key",
    "key_month_key",
    "ms_to_datetime",
    "namespace_prefix",
    "settlement_for",
    "to_nano",
    "user_tag",
]

MINUTE_MS: Final = 60_000
DAY_MS: Final = 86_400_000
# How long a window's counters outlive the window (late settles still land; /spend still reads them).
_MINUTE_GRACE_MS: Final = 2 * MINUTE_MS
_DAY_GRACE_MS: Final = 60 * MINUTE_MS
_PERIOD_GRACE_MS: Final = DAY_MS

Metric = Literal["requests", "tokens", "usd"]
Scope = Literal["key", "user", "budget", "tally"]
Window = Literal["minute", "day", "period", "month"]


def _datetime_ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


@dataclass(frozen=True, slots=True)
class Line:
    """One counter a call reserves against. `limit` -1: counted, never checked."""

    key: str
    used_field: str
    rsv_field: str  # "" when the counter keeps no reserved amount (requests)
    amount: int
    limit: int
    ttl_ms: int  # from now until the counter may be dropped; 0 = never
    metric: Metric
    scope: Scope
    window: Window
    resets_at: datetime | None  # the window's end; None for a Total budget
    budget: Budget | None = None
    user: str | None = None  # the end user, for perUser lines (as the client sent it)


@dataclass(frozen=True, slots=True)
class Increment:
    key: str
    field: str
    amount: int


@dataclass(frozen=True, slots=True)
class Plan:
    namespace: str
    rid: str
    now_ms: int
    ttl_ms: int  # how long the reservation lives unless settled
    lines: tuple[Line, ...]
    on_expiry: tuple[Increment, ...]  # tallies an expired reservation adds (its estimated tokens)
    key_id: str = ""
    failure_policy: FailurePolicy = "FailClosed"
    hit: bool = False  # answered from the response cache (`for_hit`)
    keys: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "keys", tuple(dict.fromkeys(line.key for line in self.lines)))

    @property
    def prefix(self) -> str:
        return namespace_prefix(self.namespace)

    @property
    def reservation_key(self) -> str:
        return reservation_prefix(self.namespace) + self.rid

    @property
    def index_key(self) -> str:
        return index_key(self.namespace)

    @property
    def reservation_prefix(self) -> str:
        return reservation_prefix(self.namespace)

    @property
    def expires_at_ms(self) -> int:
        return self.now_ms + self.ttl_ms


def _limit_lines(
    limits: Limits,
    minute_key: str,
    day_key: str,
    tokens: int,
    now_ms: int,
    scope: Scope,
    user: str | None,
) -> list[Line]:
    minute_end = (now_ms // MINUTE_MS + 1) * MINUTE_MS
    day_end = (now_ms // DAY_MS + 1) * DAY_MS
    minute_ttl = minute_end - now_ms + _MINUTE_GRACE_MS
    day_ttl = day_end - now_ms + _DAY_GRACE_MS
    minute_reset, day_reset = ms_to_datetime(minute_end), ms_to_datetime(day_end)
    lines = []
    if limits.requests_per_minute is not None:
        lines.append(
            Line(minute_key, "req", "", 1, limits.requests_per_minute, minute_ttl,
                 "requests", scope, "minute", minute_reset, user=user)
        )  # fmt: skip
    if limits.tokens_per_minute is not None:
        lines.append(
            Line(minute_key, "tok", "tok_r", tokens, limits.tokens_per_minute, minute_ttl,
                 "tokens", scope, "minute", minute_reset, user=user)
        )  # fmt: skip
    if limits.tokens_per_day is not None:
        lines.append(
            Line(day_key, "tok", "tok_r", tokens, limits.tokens_per_day, day_ttl,
                 "tokens", scope, "day", day_reset, user=user)
        )  # fmt: skip
    return lines


def build_plan(
    *,
    key: VirtualKey,
    budgets: dict[str, Budget],
    user: str | None,
    estimate: Estimate,
    rid: str,
    now_ms: int,
    reservation_ttl_ms: int,
    default_failure_policy: FailurePolicy = "FailClosed",
) -> Plan:
    """Every counter the call touches, with what it reserves and the limit it must stay within."""
    now = ms_to_datetime(now_ms)
    tokens = estimate.total_tokens
    usd = to_nano(estimate.cost_usd)
    minute, day = now_ms // MINUTE_MS, now_ms // DAY_MS
    lines = _limit_lines(
        key.limits, key_minute_key(key, minute), key_day_key(key, day), tokens, now_ms, "key", None
    )
    if not key.per_user_limits.empty:
        tag = user_tag(user)
        prefix = f"{namespace_prefix(key.namespace)}u:{key.name}:{tag}"
        lines += _limit_lines(
            key.per_user_limits, f"{prefix}:m:{minute}", f"{prefix}:d:{day}", tokens, now_ms, "user", user
        )
    policies: list[FailurePolicy] = []
    for budget_id in dict.fromkeys(key.budgets):
        budget = budgets.get(budget_id)
        if budget is None:
            continue
        _start, end = period_bounds(budget.period, now)
        ttl = 0 if end is None else _datetime_ms(end) - now_ms + _PERIOD_GRACE_MS
        limit = to_nano(budget.limit_usd) if budget.action == "Block" else -1
        if budget.action == "Block":
            policies.append(budget.failure_policy)
        if budget.per_user:
            lines.append(
                Line(budget_key(budget, now, user_tag(user)), "usd", "usd_r", usd, limit, ttl,
                     "usd", "budget", "period", end, budget=budget, user=user)
            )  # fmt: skip
            # The total over all users, for /spend.
            lines.append(
                Line(budget_key(budget, now), "usd", "usd_r", usd, -1, ttl,
                     "usd", "tally", "period", end, budget=budget)
            )  # fmt: skip
        else:
            lines.append(
                Line(budget_key(budget, now), "usd", "usd_r", usd, limit, ttl,
                     "usd", "budget", "period", end, budget=budget)
            )  # fmt: skip
    month_key = key_month_key(key, now)
    _start, month_end = period_bounds(KEY_PERIOD, now)
    assert month_end is not None
    month_ttl = _datetime_ms(month_end) - now_ms + _PERIOD_GRACE_MS
    lines.append(Line(month_key, "usd", "usd_r", usd, -1, month_ttl, "usd", "tally", "month", month_end))
    lines.append(Line(month_key, "req", "", 1, -1, month_ttl, "requests", "tally", "month", month_end))
    on_expiry = (
        Increment(month_key, "in", estimate.prompt_tokens),
        Increment(month_key, "out", estimate.output_tokens),
        Increment(month_key, "expired", 1),
    )
    if "FailClosed" in policies:
        policy: FailurePolicy = "FailClosed"
    elif policies:
        policy = "FailOpen"
    elif not key.limits.empty or not key.per_user_limits.empty:
        policy = default_failure_policy
    else:
        policy = "FailOpen"  # nothing to enforce: only counting
    return Plan(
        namespace=key.namespace,
        rid=rid,
        now_ms=now_ms,
        ttl_ms=reservation_ttl_ms,
        lines=tuple(lines),
        on_expiry=on_expiry,
        key_id=key.id,
        failure_policy=policy,
    )


def for_hit(plan: Plan) -> Plan:
    """The plan of a call answered from the response cache: its request lines as planned, its usd
    lines at zero and never checked (a hit costs nothing, so a used-up Block budget still serves
    it), no token lines and nothing added on expiry. The usd lines stay because the reserve then
    creates and keeps every counter the hit's saving goes to: a settle adds tallies only to
    counters that exist."""
    lines = tuple(
        line if line.metric == "requests" else dataclasses.replace(line, amount=0, limit=-1)
        for line in plan.lines
        if line.metric != "tokens"
    )
    return dataclasses.replace(plan, lines=lines, on_expiry=(), hit=True)


@dataclass(frozen=True, slots=True)
class Charge:
    """What a finished call is charged: tokens and nano-USD, and whether usage was estimated."""

    input_tokens: int
    output_tokens: int
    nano_usd: int
    estimated: bool = False

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens


@dataclass(frozen=True, slots=True)
class Settlement:
    """`deltas`: `actual - reserved` per used field (non-zero only); `tallies`: the key's counts."""

    deltas: tuple[Increment, ...]
    tallies: tuple[Increment, ...]


def expiry_charge(plan: Plan) -> Charge:
    """What a reservation that expires unsettled leaves charged: the `used` its usd lines keep (the
    estimate's nano-USD, the same on every usd line) and the tokens its `on_expiry` tallies add."""
    month = next(line for line in plan.lines if line.window == "month" and line.metric == "usd")
    tallies = {item.field: item.amount for item in plan.on_expiry}
    return Charge(tallies["in"], tallies["out"], month.amount, estimated=True)


def settlement_for(plan: Plan, charge: Charge, *, saved_nano: int = 0) -> Settlement:
    """`saved_nano`: what a hit saved (its entry's cost), tallied as `saved` on every usd counter
    of the plan — the key's month, each budget, a perUser budget's user copy and total."""
    if saved_nano and not plan.hit:
        raise ValueError("only a cache hit saves money")
    deltas: dict[tuple[str, str], int] = {}
    for line in plan.lines:
        if line.metric == "requests":
            continue  # a request stays one request
        actual = charge.total_tokens if line.metric == "tokens" else charge.nano_usd
        if actual != line.amount:
            deltas[(line.key, line.used_field)] = actual - line.amount
    month = next(line.key for line in plan.lines if line.window == "month")
    tallies = [Increment(month, "in", charge.input_tokens), Increment(month, "out", charge.output_tokens)]
    if charge.estimated:
        tallies.append(Increment(month, "unpriced", 1))
    if saved_nano:
        usd_keys = dict.fromkeys(line.key for line in plan.lines if line.metric == "usd")
        tallies += [Increment(key, "saved", saved_nano) for key in usd_keys]
    return Settlement(
        deltas=tuple(Increment(key, name, amount) for (key, name), amount in deltas.items()),
        tallies=tuple(tallies),
    )
