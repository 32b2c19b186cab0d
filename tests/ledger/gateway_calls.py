"""Calls charged the way the gateway charges them: the sidecar's own Redis store reserves and settles
each one, and the settle script appends its usage event to the stream in the same step."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

from ledger_events import make_event

from tollway_sidecar.config.models import Budget, GatewayConfig, VirtualKey
from tollway_sidecar.contract.money import format_usd, from_nano
from tollway_sidecar.quota.estimate import Estimate
from tollway_sidecar.quota.plan import Charge, Plan, build_plan, settlement_for
from tollway_sidecar.quota.redis_store import RedisStore

MONTHLY = Budget(name="monthly", namespace="team-a", limit_usd=Decimal("1000"))
PER_USER = Budget(name="per-user", namespace="team-a", limit_usd=Decimal("1000"), per_user=True)
DAILY = Budget(name="daily", namespace="team-a", limit_usd=Decimal("1000"), period="Daily")
ALICE = VirtualKey(
    name="alice", namespace="team-a", key_sha256="a" * 64, budgets=("team-a/monthly", "team-a/per-user")
)
BOB = VirtualKey(
    name="bob", namespace="team-a", key_sha256="b" * 64, budgets=("team-a/monthly", "team-a/daily")
)
CONFIG = GatewayConfig(keys=(ALICE, BOB), budgets=(MONTHLY, PER_USER, DAILY))
BUDGETS = {b.id: b for b in CONFIG.budgets}
# Estimates above every actual cost: the settle corrects the counters down, as for a real call.
ESTIMATE = Estimate(prompt_tokens=100, output_tokens=100, cost_usd=Decimal("0.01"))


@dataclass
class Gateway:
    store: RedisStore
    calls: int = 0

    def plan(self, key: VirtualKey, at: datetime, user: str | None) -> Plan:
        self.calls += 1
        return build_plan(
            key=key,
            budgets=BUDGETS,
            user=user,
            estimate=ESTIMATE,
            rid=f"call-{self.calls}",
            now_ms=int(at.timestamp() * 1000),
            reservation_ttl_ms=3_600_000,
        )

    async def call(self, key: VirtualKey, at: datetime, nanos: int, user: str | None = None) -> Plan:
        """Reserve, then settle at `nanos` with the call's event (its time: the admission)."""
        plan = self.plan(key, at, user)
        assert (await self.store.reserve(plan)).admitted
        event = make_event(
            at=at.astimezone(UTC),
            cost=format_usd(from_nano(nanos)),
            key_name=key.name,
            end_user=user or "",
            budgets=tuple(key.budgets),
        )
        assert await self.store.settle(
            plan, settlement_for(plan, Charge(10, 10, nanos)), plan.now_ms, event.to_json()
        )
        return plan

    async def in_flight(self, key: VirtualKey, at: datetime) -> Plan:
        """Reserved, not settled yet: its estimate is in `usd_r`, and it has no event."""
        plan = self.plan(key, at, None)
        assert (await self.store.reserve(plan)).admitted
        return plan
