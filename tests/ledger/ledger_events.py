"""Usage events for the ledger tests, built through the contract (so they are valid v1 events)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from tollway_sidecar.contract.usage_event import Attempt, Tokens, UsageData, UsageEvent, uuid7

NOV = datetime(2026, 11, 10, 9, 15, tzinfo=UTC)


def make_event(
    *,
    at: datetime = NOV,
    cost: str = "0.000123456",
    team: str = "research",
    model: str = "gpt-4o-mini",
    **data: Any,
) -> UsageEvent:
    fields: dict[str, Any] = {
        "namespace": "team-a",
        "key_name": "alice",
        "route": "chat",
        "model": model,
        "status": 200,
        "outcome": "ok",
        "cost": cost,
        "billable": True,
        "team": team,
        "user": "alice@example.com",
        "session_id": "s-1",
        "properties": {"feature": "summary"},
        "attempts": (Attempt("mock", "openai", model, 200),),
        "tokens": Tokens(input=100, output=20, cached_read=10),
        "budgets": ("team-a/monthly",),
        "latency_ms": 50,
    }
    fields.update(data)
    return UsageEvent(
        id=uuid7(), source="gateway-0", time=at, subject="team-a/alice", data=UsageData(**fields)
    )


def spread(count: int, *, at: datetime = NOV) -> list[UsageEvent]:
    """Events with distinct costs over a few teams, models and hours (sums that catch off-by-ones)."""
    teams = ("research", "sales", "ops")
    models = ("gpt-4o-mini", "claude-sonnet")
    return [
        make_event(
            at=at.replace(hour=(at.hour + i % 5) % 24, minute=i % 60),
            cost=f"0.{(i * 7919 + 13) % 10**9:09d}",
            team=teams[i % 3],
            model=models[i % 2],
            properties={"feature": f"f{i % 4}"},
            session_id=f"s-{i % 6}",
        )
        for i in range(count)
    ]
