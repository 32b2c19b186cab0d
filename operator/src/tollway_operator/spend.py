"""Live spend: read the gateway's counters from the quota store into Budget and VirtualKey status.

The counters are the ones the sidecar's quota store keeps: one per budget and period, one per key and
month, named by the key schema both share (`tollway_sidecar.contract`). Reading them is one
`CounterReader.read` per namespace. A status is
patched only when what it shows changed, so an idle cluster sees no writes.

`lastUsed` is not a counter: it is the time of the sync that first saw a key's request count grow,
so it is exact to within one interval.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, Final

import kopf

from tollway_operator.alerts import Alerter
from tollway_operator.cluster import BUDGET, VIRTUALKEY, ClusterView
from tollway_operator.kube import Kube
from tollway_sidecar.config.models import Budget, GatewayConfig
from tollway_sidecar.contract.counters import CounterReader, StoreUnavailable
from tollway_sidecar.contract.keys import budget_key, key_month_key
from tollway_sidecar.contract.money import format_usd, from_nano
from tollway_sidecar.contract.periods import ms_to_datetime, period_bounds, period_key

log = logging.getLogger("tollway.operator.spend")

OK: Final = "Ok"
WARNING: Final = "Warning"
EXCEEDED: Final = "Exceeded"


@dataclass(frozen=True)
class BudgetSpend:
    spent: Decimal
    reserved: Decimal
    period: str  # e.g. "2026-11"
    start: datetime
    end: datetime | None
    saved: Decimal = Decimal(0)  # what the response cache's hits saved this period


@dataclass(frozen=True)
class KeySpend:
    spent: Decimal
    requests: int


@dataclass(frozen=True)
class Spend:
    budgets: Mapping[str, BudgetSpend]  # by budget id "namespace/name"
    keys: Mapping[str, KeySpend]  # by key id "namespace/name"


def _money(fields: Mapping[str, int]) -> tuple[Decimal, Decimal]:
    """(spent, reserved) of a counter: `usd` holds settled and reserved nano-USD, `usd_r` the latter."""
    used, reserved = fields.get("usd", 0), fields.get("usd_r", 0)
    return from_nano(used - reserved), from_nano(reserved)


async def read_spend(store: CounterReader, config: GatewayConfig, now_ms: int) -> Spend:
    """The current period's spend of every budget and key in `config`. Raises StoreUnavailable."""
    now = ms_to_datetime(now_ms)
    wanted: dict[str, list[str]] = {}
    for budget in config.budgets:
        wanted.setdefault(budget.namespace, []).append(budget_key(budget, now))
    for key in config.keys:
        wanted.setdefault(key.namespace, []).append(key_month_key(key, now))
    counters: dict[str, dict[str, int]] = {}
    for namespace, keys in sorted(wanted.items()):
        counters.update(await store.read(namespace, list(dict.fromkeys(keys)), now_ms))
    budgets = {}
    for budget in config.budgets:
        fields = counters.get(budget_key(budget, now), {})
        spent, reserved = _money(fields)
        start, end = period_bounds(budget.period, now)
        budgets[budget.id] = BudgetSpend(
            spent, reserved, period_key(budget.period, now), start, end, from_nano(fields.get("saved", 0))
        )
    key_spend = {}
    for key in config.keys:
        fields = counters.get(key_month_key(key, now), {})
        key_spend[key.id] = KeySpend(_money(fields)[0], fields.get("req", 0))
    return Spend(budgets, key_spend)


def budget_state(budget: Budget, spent: Decimal) -> str:
    """Exceeded at the limit; Warning from the first threshold on; Ok below it."""
    if spent >= budget.limit_usd:
        return EXCEEDED
    if budget.thresholds and spent * 100 >= budget.limit_usd * min(budget.thresholds):
        return WARNING
    return OK


def _rfc3339(moment: datetime | None) -> str | None:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ") if moment is not None else None


def budget_status(budget: Budget, spend: BudgetSpend) -> dict[str, Any]:
    remaining = max(budget.limit_usd - spend.spent - spend.reserved, Decimal(0))
    return {
        "spent": format_usd(spend.spent),
        "reserved": format_usd(spend.reserved),
        "remaining": format_usd(remaining),
        "saved": format_usd(spend.saved),
        "periodStart": _rfc3339(spend.start),
        "periodEnd": _rfc3339(spend.end),
        "state": budget_state(budget, spend.spent),
    }


def key_status(spend: KeySpend, previous: Mapping[str, Any], now: datetime) -> dict[str, Any]:
    before = previous.get("requests")
    grew = spend.requests > 0 and (not isinstance(before, int) or spend.requests > before)
    return {
        "spent": format_usd(spend.spent),
        "requests": spend.requests,
        "lastUsed": _rfc3339(now) if grew else previous.get("lastUsed"),
    }


def changed(current: Mapping[str, Any], desired: Mapping[str, Any]) -> dict[str, Any] | None:
    patch = {field: value for field, value in desired.items() if current.get(field) != value}
    return patch or None


class SpendSync:
    """Every `interval` seconds: read spend, patch what changed, raise threshold alerts."""

    def __init__(
        self,
        store: CounterReader,
        kube: Kube,
        view: ClusterView,
        config: Any,  # () -> GatewayConfig | None: the last compiled config
        alerter: Alerter,
        interval: float,
        clock_ms: Any,
    ) -> None:
        self.store = store
        self.kube = kube
        self.view = view
        self.config = config
        self.alerter = alerter
        self.interval = interval
        self.clock_ms = clock_ms
        self.syncs = 0

    async def run(self, ready: asyncio.Event) -> None:
        await ready.wait()
        while True:
            try:
                await self.sync_once()
            except StoreUnavailable as exc:
                log.warning("spend not synced: %s", exc)
            except (kopf.TemporaryError, kopf.PermanentError) as exc:
                log.warning("spend not fully synced: %s", exc)
            except Exception:
                log.exception("spend sync failed")
            await asyncio.sleep(self.interval)  # a worker's pace, not a handler

    async def sync_once(self) -> None:
        config: GatewayConfig | None = self.config()
        if config is None:
            return
        now_ms = self.clock_ms()
        spend = await read_spend(self.store, config, now_ms)
        now = ms_to_datetime(now_ms)
        failures: list[str] = []
        for budget in config.budgets:
            resource = self.view.resource(BUDGET.name, budget.namespace, budget.name)
            entry = spend.budgets.get(budget.id)
            if resource is None or entry is None:
                continue
            patch = changed(resource.status, budget_status(budget, entry))
            if patch is not None:
                try:
                    await self.kube.patch_status(BUDGET, budget.namespace, budget.name, patch)
                except (kopf.TemporaryError, kopf.PermanentError) as exc:
                    failures.append(str(exc))
            self.alerter.check(resource, budget, entry.spent, entry.period)
        for key in config.keys:
            resource = self.view.resource(VIRTUALKEY.name, key.namespace, key.name)
            entry_k = spend.keys.get(key.id)
            if resource is None or entry_k is None:
                continue
            patch = changed(resource.status, key_status(entry_k, resource.status, now))
            if patch is not None:
                try:
                    await self.kube.patch_status(VIRTUALKEY, key.namespace, key.name, patch)
                except (kopf.TemporaryError, kopf.PermanentError) as exc:
                    failures.append(str(exc))
        self.syncs += 1
        if failures:
            raise kopf.TemporaryError("; ".join(failures[:5]), delay=self.interval)
