"""Spend recorded per virtual key and per budget, in exact Decimal USD.

This is the single-process ledger behind `/spend`. Keys are reported for the current calendar month
(UTC); budgets for their own period. Entries of past periods are dropped as periods roll over.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from tollway_sidecar.config.models import GatewayConfig, Period, VirtualKey
from tollway_sidecar.pricing import format_usd
from tollway_sidecar.providers.usage import TokenUsage
from tollway_sidecar.quota.periods import period_bounds, period_key

KEY_PERIOD: Period = "Monthly"


@dataclass
class Tally:
    spent: Decimal = Decimal(0)
    requests: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    unpriced_requests: int = 0  # calls whose usage or price was unknown
    last_used: datetime | None = None

    def add(self, usage: TokenUsage | None, cost: Decimal | None, at: datetime) -> None:
        self.requests += 1
        self.last_used = at
        if usage is not None:
            self.input_tokens += usage.input_tokens
            self.output_tokens += usage.output_tokens
        if cost is None:
            self.unpriced_requests += 1
        else:
            self.spent += cost

    def as_json(self) -> dict[str, Any]:
        return {
            "spent_usd": format_usd(self.spent),
            "requests": self.requests,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "unpriced_requests": self.unpriced_requests,
            "last_used": self.last_used.isoformat() if self.last_used else None,
        }


class SpendLedger:
    def __init__(self) -> None:
        # (kind, id, period key) → tally
        self._tallies: dict[tuple[str, str, str], Tally] = defaultdict(Tally)

    def record(
        self,
        key: VirtualKey,
        budgets: dict[str, Any],
        usage: TokenUsage | None,
        cost: Decimal | None,
        at: datetime | None = None,
    ) -> None:
        at = at or datetime.now(UTC)
        self._tallies[("key", key.id, period_key(KEY_PERIOD, at))].add(usage, cost, at)
        for budget_id in key.budgets:
            budget = budgets.get(budget_id)
            if budget is not None:
                self._tallies[("budget", budget_id, period_key(budget.period, at))].add(usage, cost, at)

    def key_tally(self, key_id: str, at: datetime | None = None) -> Tally:
        return self._tallies.get(("key", key_id, period_key(KEY_PERIOD, at or datetime.now(UTC))), Tally())

    def snapshot(self, config: GatewayConfig, at: datetime | None = None) -> dict[str, Any]:
        at = at or datetime.now(UTC)
        self._drop_past(config, at)
        start, end = period_bounds(KEY_PERIOD, at)
        keys = {}
        for key in config.keys:
            tally = self._tallies.get(("key", key.id, period_key(KEY_PERIOD, at)), Tally())
            keys[key.id] = {
                "period": KEY_PERIOD,
                "period_start": start.isoformat(),
                "period_end": end.isoformat() if end else None,
                **tally.as_json(),
            }
        budgets = {}
        for budget in config.budgets:
            b_start, b_end = period_bounds(budget.period, at)
            tally = self._tallies.get(("budget", budget.id, period_key(budget.period, at)), Tally())
            remaining = max(budget.limit_usd - tally.spent, Decimal(0))
            budgets[budget.id] = {
                "period": budget.period,
                "period_start": b_start.isoformat(),
                "period_end": b_end.isoformat() if b_end else None,
                "limit_usd": format_usd(budget.limit_usd),
                "remaining_usd": format_usd(remaining),
                **tally.as_json(),
            }
        return {"as_of": at.isoformat(), "config_version": config.version, "keys": keys, "budgets": budgets}

    def _drop_past(self, config: GatewayConfig, at: datetime) -> None:
        periods = {b.id: b.period for b in config.budgets}
        current = {("key", period_key(KEY_PERIOD, at))}
        for kind, ident, key in list(self._tallies):
            stale_key = kind == "key" and (kind, key) not in current
            stale_budget = kind == "budget" and ident in periods and key != period_key(periods[ident], at)
            if stale_key or stale_budget:
                del self._tallies[(kind, ident, key)]
