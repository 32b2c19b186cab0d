"""The Redis key schema of the quota counters, written by the sidecar and read by the operator.

Every key of a namespace shares the hash tag `{<namespace>}` (a key's budgets live in its
namespace), so one script call touches one Redis Cluster slot. Counters are hashes; money fields
(`usd`, `usd_r`) hold nano-USD, `req` requests, `tok`/`tok_r`/`in`/`out` tokens.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Final

from tollway_sidecar.config.models import Budget, Period, VirtualKey
from tollway_sidecar.contract.periods import period_key

__all__ = [
    "KEY_PERIOD",
    "anonymous_user",
    "budget_key",
    "index_key",
    "key_day_key",
    "key_minute_key",
    "key_month_key",
    "namespace_prefix",
    "reservation_prefix",
    "user_tag",
]

KEY_PERIOD: Final[Period] = "Monthly"  # the period a key's own spend is tallied and reported for


def namespace_prefix(namespace: str) -> str:
    """`tw:{<namespace>}:` — the hash tag keeps a namespace's keys in one Redis Cluster slot."""
    return f"tw:{{{namespace}}}:"


def index_key(namespace: str) -> str:
    """The sorted set of a namespace's open reservations, scored by expiry."""
    return f"{namespace_prefix(namespace)}rz"


def reservation_prefix(namespace: str) -> str:
    """What a reservation's key starts with; its call id follows."""
    return f"{namespace_prefix(namespace)}r:"


def user_tag(user: str | None) -> str:
    """How an end user appears in key names: a digest (user ids are arbitrary client text)."""
    if user is None:
        return anonymous_user()
    return hashlib.sha256(user.encode()).hexdigest()[:32]


def anonymous_user() -> str:
    return "-"


def key_minute_key(key: VirtualKey, minute: int) -> str:
    return f"{namespace_prefix(key.namespace)}k:{key.name}:m:{minute}"


def key_day_key(key: VirtualKey, day: int) -> str:
    return f"{namespace_prefix(key.namespace)}k:{key.name}:d:{day}"


def key_month_key(key: VirtualKey, now: datetime) -> str:
    return f"{namespace_prefix(key.namespace)}k:{key.name}:mo:{period_key(KEY_PERIOD, now)}"


def budget_key(budget: Budget, now: datetime, user: str | None = None) -> str:
    """The budget's counter for the period containing `now`; `user` (a `user_tag`) for perUser copies."""
    base = f"{namespace_prefix(budget.namespace)}b:{budget.name}:{period_key(budget.period, now)}"
    return base if user is None else f"{base}:u:{user}"
