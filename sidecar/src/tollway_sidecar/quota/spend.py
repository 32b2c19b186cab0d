"""`/spend`: spent, reserved, remaining and saved (by cache hits) per budget and per key, as exact
decimal strings.

Read from the quota store (so every replica reports the same numbers), one read per namespace.
Keys are reported for the current UTC month, with their rate-limit windows; budgets for their own
period. A perUser budget reports the total over all its users; `?user=` adds that user's copy and
per-user limits.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from decimal import Decimal
from typing import Any

from tollway_sidecar.config.models import Budget, GatewayConfig, Limits, VirtualKey
from tollway_sidecar.contract.money import format_usd
from tollway_sidecar.contract.periods import period_bounds
from tollway_sidecar.quota.gate import QuotaGate
from tollway_sidecar.quota.plan import (
    DAY_MS,
    KEY_PERIOD,
    MINUTE_MS,
    budget_key,
    from_nano,
    key_day_key,
    key_minute_key,
    key_month_key,
    ms_to_datetime,
    namespace_prefix,
    user_tag,
)

__all__ = ["spend_snapshot"]


def _iso(moment: datetime | None) -> str | None:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ") if moment is not None else None


def _money(fields: dict[str, int]) -> tuple[Decimal, Decimal]:
    used, reserved = fields.get("usd", 0), fields.get("usd_r", 0)
    return from_nano(used - reserved), from_nano(reserved)


def _saved(fields: dict[str, int]) -> str:
    """What the response cache's hits saved on this counter."""
    return format_usd(from_nano(fields.get("saved", 0)))


def _budget_entry(budget: Budget, fields: dict[str, int], now: datetime) -> dict[str, Any]:
    start, end = period_bounds(budget.period, now)
    spent, reserved = _money(fields)
    remaining = None if budget.per_user else max(budget.limit_usd - spent - reserved, Decimal(0))
    return {
        "period": budget.period,
        "period_start": _iso(start),
        "period_end": _iso(end),
        "limit_usd": format_usd(budget.limit_usd),
        "spent_usd": format_usd(spent),
        "reserved_usd": format_usd(reserved),
        "remaining_usd": None if remaining is None else format_usd(remaining),
        "saved_usd": _saved(fields),
        "action": budget.action,
        "failure_policy": budget.failure_policy,
        "per_user": budget.per_user,
    }


def _limit_entries(
    limits: Limits, minute: dict[str, int], day: dict[str, int], now_ms: int
) -> dict[str, dict[str, Any]]:
    minute_reset = _iso(ms_to_datetime((now_ms // MINUTE_MS + 1) * MINUTE_MS))
    day_reset = _iso(ms_to_datetime((now_ms // DAY_MS + 1) * DAY_MS))
    out: dict[str, dict[str, Any]] = {}
    for name, limit, fields, used_field, rsv_field, reset in (
        ("requests_per_minute", limits.requests_per_minute, minute, "req", "", minute_reset),
        ("tokens_per_minute", limits.tokens_per_minute, minute, "tok", "tok_r", minute_reset),
        ("tokens_per_day", limits.tokens_per_day, day, "tok", "tok_r", day_reset),
    ):
        if limit is None:
            continue
        used = fields.get(used_field, 0)
        out[name] = {
            "limit": limit,
            "used": used,
            "reserved": fields.get(rsv_field, 0) if rsv_field else 0,
            "remaining": max(limit - used, 0),
            "resets_at": reset,
        }
    return out


def _user_keys(key: VirtualKey, tag: str, now_ms: int) -> tuple[str, str]:
    prefix = f"{namespace_prefix(key.namespace)}u:{key.name}:{tag}"
    return f"{prefix}:m:{now_ms // MINUTE_MS}", f"{prefix}:d:{now_ms // DAY_MS}"


async def spend_snapshot(gate: QuotaGate, config: GatewayConfig, user: str | None = None) -> dict[str, Any]:
    """Raises StoreUnavailable when the store cannot be read."""
    await gate.drain()  # settles this process started are in what it reports
    now_ms = gate.clock()
    now = ms_to_datetime(now_ms)
    tag = user_tag(user) if user is not None else None
    wanted: dict[str, list[str]] = {}

    def want(namespace: str, keys: Iterable[str]) -> None:
        wanted.setdefault(namespace, []).extend(keys)

    minute_id, day_id = now_ms // MINUTE_MS, now_ms // DAY_MS
    for key in config.keys:
        want(
            key.namespace, (key_month_key(key, now), key_minute_key(key, minute_id), key_day_key(key, day_id))
        )
        if tag is not None:
            want(key.namespace, _user_keys(key, tag, now_ms))
    for budget in config.budgets:
        want(budget.namespace, [budget_key(budget, now)])
        if tag is not None and budget.per_user:
            want(budget.namespace, [budget_key(budget, now, tag)])
    counters: dict[str, dict[str, int]] = {}
    for namespace, keys in sorted(wanted.items()):
        counters.update(await gate.store.read(namespace, list(dict.fromkeys(keys)), now_ms))

    budgets_out: dict[str, dict[str, Any]] = {}
    for budget in config.budgets:
        entry = _budget_entry(budget, counters.get(budget_key(budget, now), {}), now)
        if tag is not None and budget.per_user:
            fields = counters.get(budget_key(budget, now, tag), {})
            spent, reserved = _money(fields)
            entry["user"] = {
                "user": user,
                "spent_usd": format_usd(spent),
                "reserved_usd": format_usd(reserved),
                "remaining_usd": format_usd(max(budget.limit_usd - spent - reserved, Decimal(0))),
                "saved_usd": _saved(fields),
            }
        budgets_out[budget.id] = entry

    by_id = {budget.id: budget for budget in config.budgets}
    start, end = period_bounds(KEY_PERIOD, now)
    keys_out = {}
    for key in config.keys:
        month = counters.get(key_month_key(key, now), {})
        spent, reserved = _money(month)
        remaining: Decimal | None = None
        for budget_id in key.budgets:
            ref = by_id.get(budget_id)
            if ref is None or ref.action != "Block" or (ref.per_user and tag is None):
                continue
            fields = counters.get(budget_key(ref, now, tag if ref.per_user else None), {})
            b_spent, b_reserved = _money(fields)
            left = max(ref.limit_usd - b_spent - b_reserved, Decimal(0))
            remaining = left if remaining is None else min(remaining, left)
        minute = counters.get(key_minute_key(key, minute_id), {})
        day = counters.get(key_day_key(key, day_id), {})
        key_entry: dict[str, Any] = {
            "period": KEY_PERIOD,
            "period_start": _iso(start),
            "period_end": _iso(end),
            "spent_usd": format_usd(spent),
            "reserved_usd": format_usd(reserved),
            "remaining_usd": None if remaining is None else format_usd(remaining),
            "saved_usd": _saved(month),
            "budgets": list(key.budgets),
            "requests": month.get("req", 0),
            "input_tokens": month.get("in", 0),
            "output_tokens": month.get("out", 0),
            "unpriced_requests": month.get("unpriced", 0),
            "expired_reservations": month.get("expired", 0),
            "limits": _limit_entries(key.limits, minute, day, now_ms),
        }
        if tag is not None and not key.per_user_limits.empty:
            user_minute, user_day = _user_keys(key, tag, now_ms)
            key_entry["user_limits"] = _limit_entries(
                key.per_user_limits, counters.get(user_minute, {}), counters.get(user_day, {}), now_ms
            )
        keys_out[key.id] = key_entry
    return {
        "as_of": _iso(now),
        "config_version": config.version,
        "store": gate.store.name,
        "pending_reconciliation": gate.pending,
        "keys": keys_out,
        "budgets": budgets_out,
    }
