"""What a client is told: OpenAI's rate-limit headers, and the denials. Pure.

Headers follow OpenAI: `x-ratelimit-limit-requests`, `x-ratelimit-remaining-requests`,
`x-ratelimit-reset-requests` and the same for `-tokens`, resets as Go-style durations (`1s`,
`6m0s`, `23h59m59.5s`, `20ms`). When several limits apply (the key's and the end user's, per minute
and per day), the one with the least remaining is reported.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal

from tollway_sidecar.contract.money import format_usd
from tollway_sidecar.quota.plan import Line, Plan, from_nano

__all__ = ["Denial", "decide", "go_duration", "ratelimit_headers", "remaining_usd", "unavailable"]


@dataclass(frozen=True, slots=True)
class Denial:
    status: int
    error_type: str
    code: str
    message: str
    headers: dict[str, str] = field(default_factory=dict)


def go_duration(ms: int) -> str:
    """Milliseconds as a Go duration string, as OpenAI writes its reset headers."""
    ms = max(ms, 0)
    if ms < 1000:
        return f"{ms}ms"
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    seconds = format(Decimal(rest).scaleb(-3).normalize(), "f")
    if hours:
        return f"{hours}h{minutes}m{seconds}s"
    if minutes:
        return f"{minutes}m{seconds}s"
    return f"{seconds}s"


def _reset_ms(line: Line, now_ms: int) -> int:
    if line.resets_at is None:
        return 0
    return int(line.resets_at.timestamp() * 1000) - now_ms


def ratelimit_headers(plan: Plan, used: Sequence[int], admitted: bool) -> dict[str, str]:
    headers: dict[str, str] = {}
    for metric in ("requests", "tokens"):
        best: tuple[int, int, Line] | None = None
        for line, before in zip(plan.lines, used, strict=True):
            if line.metric != metric or line.limit < 0:
                continue
            after = before + line.amount if admitted else before
            remaining = max(line.limit - after, 0)
            reset = _reset_ms(line, plan.now_ms)
            if best is None or (remaining, -reset) < (best[0], -best[1]):
                best = (remaining, reset, line)
        if best is not None:
            remaining, reset, line = best
            headers[f"x-ratelimit-limit-{metric}"] = str(line.limit)
            headers[f"x-ratelimit-remaining-{metric}"] = str(remaining)
            headers[f"x-ratelimit-reset-{metric}"] = go_duration(reset)
    return headers


def _who(plan: Plan, line: Line) -> str:
    if line.scope == "user":
        user = "the anonymous user" if line.user is None else f"user '{line.user}'"
        return f"{user} of key '{plan.key_id}'"
    return f"key '{plan.key_id}'"


def _limit_name(line: Line) -> str:
    return f"{line.metric} per {line.window}"


def _usd(nano: int) -> str:
    return "$" + format_usd(from_nano(nano))


def decide(plan: Plan, used: Sequence[int]) -> Denial | None:
    """The denial for a refused reservation (`used`: each line's value before the call), budgets
    first (waiting a minute will not help), or None when every checked line has room."""
    failing = [
        (line, before)
        for line, before in zip(plan.lines, used, strict=True)
        if line.limit >= 0 and before + line.amount > line.limit
    ]
    if not failing:
        return None
    budgets = sorted(
        ((line, before) for line, before in failing if line.metric == "usd"),
        key=lambda item: item[0].budget.id if item[0].budget else "",
    )
    headers = ratelimit_headers(plan, used, admitted=False)
    if budgets:
        line, before = budgets[0]
        assert line.budget is not None
        budget = line.budget
        remaining = max(line.limit - before, 0)
        whose = "" if line.user is None or not budget.per_user else f" for user '{line.user}'"
        if line.resets_at is None:
            resets = "it is a Total budget and never resets"
        else:
            resets = f"it resets at {line.resets_at.strftime('%Y-%m-%dT%H:%M:%SZ')}"
            headers["x-tollway-budget-reset"] = line.resets_at.strftime("%Y-%m-%dT%H:%M:%SZ")
        message = (
            f"Budget '{budget.id}'{whose} is exhausted: {_usd(remaining)} of its {budget.period} limit of "
            f"{_usd(line.limit)} remains and this call may cost up to {_usd(line.amount)}; {resets}."
        )
        headers["x-tollway-budget"] = budget.id
        headers["x-should-retry"] = "false"
        return Denial(429, "insufficient_quota", "budget_exceeded", message, headers)
    # Rate limits: retry once every failing window has reset.
    line, before = failing[0]
    wait_ms = max(_reset_ms(other, plan.now_ms) for other, _ in failing)
    too_large = [(other, value) for other, value in failing if other.amount > other.limit]
    if too_large:
        line, before = too_large[0]
        message = (
            f"Request too large for {_who(plan, line)} on {_limit_name(line)}: limit {line.limit}, "
            f"requested {line.amount}. Lower max_tokens (or max_completion_tokens) or shorten the prompt."
        )
        headers["x-should-retry"] = "false"
        return Denial(429, line.metric, "rate_limit_exceeded", message, headers)
    seconds = max(1, math.ceil(wait_ms / 1000))
    message = (
        f"Rate limit reached for {_who(plan, line)} on {_limit_name(line)}: limit {line.limit}, "
        f"used {before}, requested {line.amount}. Please try again in {go_duration(wait_ms)}."
    )
    headers["retry-after"] = str(seconds)
    headers["retry-after-ms"] = str(max(wait_ms, 0))
    return Denial(429, line.metric, "rate_limit_exceeded", message, headers)


def unavailable(plan: Plan) -> Denial:
    """FailClosed while the quota store cannot be reached."""
    return Denial(
        503,
        "api_error",
        "quota_store_unavailable",
        "The gateway's quota store (Redis) is unreachable, and a budget or limit of key "
        f"'{plan.key_id}' is FailClosed, so the call was not sent. Retry shortly.",
        {"retry-after": "1"},
    )


def remaining_usd(limit: Decimal, spent: Decimal, reserved: Decimal) -> Decimal:
    return max(limit - spent - reserved, Decimal(0))
