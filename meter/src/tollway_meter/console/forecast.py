"""Budgets on the overview: limit, spend in the current period, a linear forecast to the period's end
and the projected run-out date. Integer nano-USD and integer microseconds: no float anywhere.

The ledger knows what each budget was charged (events name their budgets), not the limits: those
come from the Budget resources (`--budgets-from kubernetes`: listed with the meter's
ServiceAccount) or, without a cluster, from the compiled GatewayConfig the sidecar reads
(`--budgets-from FILE`, e.g. the `config.json` in `tollway dev`'s state folder).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Literal, Protocol, cast

from tollway_meter.console.access import KubeClient
from tollway_sidecar.contract.periods import period_bounds
from tollway_sidecar.contract.usage_event import UsageEventError, usd_to_nanos

PeriodName = Literal["Daily", "Weekly", "Monthly", "Total"]
PERIODS: tuple[PeriodName, ...] = ("Daily", "Weekly", "Monthly", "Total")
_US = timedelta(microseconds=1)


class BadBudgets(ValueError):
    """The budgets file is not a GatewayConfig with valid budgets: names the file and the field."""


@dataclass(frozen=True)
class Limit:
    id: str  # "namespace/name", as usage events name it
    namespace: str
    limit_nanos: int
    period: PeriodName
    per_user: bool = False


@dataclass(frozen=True)
class Forecast:
    id: str
    limit_nanos: int
    period: PeriodName
    per_user: bool
    start: datetime
    end: datetime | None  # None: a Total budget never resets
    spent_nanos: int  # charged since the period's start, up to now
    forecast_nanos: int | None  # at the period's end at the current rate; None: no period end
    runs_out: datetime | None  # when the projection reaches the limit, if before the period ends
    reached: bool  # the limit is already spent


def _micros(delta: timedelta) -> int:
    return delta // _US


def forecast(limit: Limit, spent_nanos: int, now: datetime) -> Forecast:
    """Project this period's spend linearly: spent * period length / time elapsed (rounded down to
    the nano-dollar); the run-out moment is start + elapsed * limit / spent (rounded up to the
    microsecond), shown only when it falls before the period's end. A per-user budget's limit
    applies to each user, so the total is not projected against it."""
    start, end = period_bounds(limit.period, now)
    reached = spent_nanos >= limit.limit_nanos and not limit.per_user
    elapsed = _micros(now - start)
    if end is None or limit.per_user or elapsed <= 0:
        return Forecast(
            limit.id,
            limit.limit_nanos,
            limit.period,
            limit.per_user,
            start,
            end,
            spent_nanos,
            None,
            None,
            reached,
        )
    length = _micros(end - start)
    projected = spent_nanos * length // elapsed
    runs_out = None
    if not reached and spent_nanos > 0 and projected >= limit.limit_nanos:
        at = -(-elapsed * limit.limit_nanos // spent_nanos)  # ceiling division
        if at < length:
            runs_out = start + timedelta(microseconds=at)
    return Forecast(
        limit.id,
        limit.limit_nanos,
        limit.period,
        limit.per_user,
        start,
        end,
        spent_nanos,
        projected,
        runs_out,
        reached,
    )


def _field(budget: dict[str, Any], *names: str) -> Any:
    """A field under its JSON name or its Python one (the file may be either dump)."""
    for name in names:
        if name in budget:
            return budget[name]
    return None


def _limit(
    where: str, name: object, namespace: object, limit_text: object, period: object, per_user: object
) -> Limit:
    if not isinstance(name, str) or not isinstance(namespace, str) or not name or not namespace:
        raise BadBudgets(f"{where}: expected a name and a namespace")
    try:
        limit = Decimal(str(limit_text))
    except InvalidOperation:
        raise BadBudgets(f"{where}.limit_usd: not a decimal: {limit_text!r}") from None
    if not limit.is_finite() or limit <= 0:
        raise BadBudgets(f"{where}.limit_usd: expected more than 0, got {limit_text!r}")
    try:
        limit_nanos = usd_to_nanos(limit)
    except UsageEventError:
        raise BadBudgets(f"{where}.limit_usd: finer than a nano-dollar: {limit_text!r}") from None
    if period not in PERIODS:
        raise BadBudgets(f"{where}.period: expected one of {', '.join(PERIODS)}, got {period!r}")
    ident = f"{namespace}/{name}"
    return Limit(ident, namespace, limit_nanos, period, bool(per_user))


def load_limits(path: Path) -> dict[str, Limit]:
    """Each Budget's limit from a compiled GatewayConfig (JSON, as `tollway dev` writes it)."""
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise BadBudgets(f"{path}: not a readable JSON GatewayConfig: {exc}") from None
    budgets = config.get("budgets") if isinstance(config, dict) else None
    if not isinstance(budgets, list):
        raise BadBudgets(f"{path}: expected a GatewayConfig with a `budgets` list")
    found: dict[str, Limit] = {}
    for i, raw in enumerate(budgets):
        if not isinstance(raw, dict):
            raise BadBudgets(f"{path}: budgets[{i}]: expected an object")
        b = cast(dict[str, Any], raw)
        limit = _limit(
            f"{path}: budgets[{i}]",
            b.get("name"),
            b.get("namespace"),
            _field(b, "limit_usd", "limitUsd"),
            b.get("period", "Monthly"),
            _field(b, "per_user", "perUser"),
        )
        found[limit.id] = limit
    return found


def limits_of_resources(listing: dict[str, Any]) -> dict[str, Limit]:
    """Each Budget's limit from a Kubernetes list of budgets.tollway.dev; one the API server let
    through but that this cannot read is left out rather than failing the page."""
    found: dict[str, Limit] = {}
    for item in listing.get("items") or []:
        meta, spec = item.get("metadata") or {}, item.get("spec") or {}
        try:
            limit = _limit(
                f"Budget {meta.get('namespace')}/{meta.get('name')}",
                meta.get("name"),
                meta.get("namespace"),
                spec.get("limit"),
                spec.get("period", "Monthly"),
                spec.get("perUser", False),
            )
        except BadBudgets:
            continue
        found[limit.id] = limit
    return found


class BudgetSource(Protocol):
    """Where the overview gets the Budgets' limits from."""

    async def limits(self) -> dict[str, Limit]: ...


class BudgetFile:
    """The limits in a budgets file, re-read when the file changes (`tollway dev` rewrites it)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._seen: tuple[int, int] | None = None
        self._limits: dict[str, Limit] = {}

    async def limits(self) -> dict[str, Limit]:
        return await asyncio.to_thread(self.read)

    def read(self) -> dict[str, Limit]:
        stat = self.path.stat()
        if self._seen != (stat.st_mtime_ns, stat.st_size):
            self._limits = load_limits(self.path)
            self._seen = (stat.st_mtime_ns, stat.st_size)
        return self._limits


class ClusterBudgets:
    """The limits of every Budget in the cluster, listed with the meter's ServiceAccount
    (`list budgets.tollway.dev`) at most every `ttl` seconds."""

    BUDGETS = "/apis/tollway.dev/v1alpha1/budgets"

    def __init__(
        self, client: KubeClient, ttl: float = 30.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.client = client
        self.ttl = ttl
        self.clock = clock
        self._cached: tuple[float, dict[str, Limit]] | None = None

    async def limits(self) -> dict[str, Limit]:
        if self._cached is None or self._cached[0] <= self.clock():
            listing = await self.client.call("GET", self.BUDGETS)
            self._cached = (self.clock() + self.ttl, limits_of_resources(listing))
        return self._cached[1]
