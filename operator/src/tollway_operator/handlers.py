"""Kopf's side of the operator: indexes, thin event handlers, start-up and clean-up.

Handlers never call the API and never sleep. Index functions keep compact snapshots
(`cluster.py`); event handlers tell the reconciler that something relevant changed; the start-up
handler builds the services and starts the two workers (passes, spend sync) with Kopf's live
indexes, as Kopf documents for background tasks; clean-up stops them.

Nothing here needs a finalizer or writes Kopf's own annotations: deleting a resource never waits
for the operator, and the operator needs no `patch` on the resources themselves, only on `status`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import kopf

from tollway_operator.alerts import Alerter, WebhookPolicy
from tollway_operator.cluster import (
    GROUP,
    KINDS,
    VERSION,
    ClusterView,
    Resource,
    SecretData,
    snapshot_resource,
    snapshot_secret,
)
from tollway_operator.kube import Kube
from tollway_operator.metrics import OperatorMetrics
from tollway_operator.reconcile import Reconciler
from tollway_operator.settings import OperatorSettings
from tollway_operator.spend import SpendSync

log = logging.getLogger("tollway.operator")

SECRETS_INDEX = "tollway_secrets"


def index_id(plural: str) -> str:
    return f"tollway_{plural}"


@dataclass
class Operator:
    """The handlers, bound to the settings read at start-up."""

    settings: OperatorSettings
    reconciler: Reconciler | None = None
    spend: SpendSync | None = None
    kube: Kube | None = None
    alerter: Alerter | None = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    metrics: OperatorMetrics = field(default_factory=OperatorMetrics)
    _closers: list[Any] = field(default_factory=list)

    def register(self, registry: kopf.OperatorRegistry) -> None:
        for kind in KINDS:
            kopf.index(
                GROUP, VERSION, kind.plural, id=index_id(kind.plural), param=kind.name, registry=registry
            )(self.index_resource)
            kopf.on.event(
                GROUP, VERSION, kind.plural, id=f"{kind.plural}_changed", param=kind.name, registry=registry
            )(self.resource_event)
        kopf.index("v1", "secrets", id=SECRETS_INDEX, registry=registry)(self.index_secret)
        kopf.on.event("v1", "secrets", id="secrets_changed", registry=registry)(self.secret_event)
        # The same credentials as our writes: the Pod's service account, else $KUBECONFIG.
        kopf.on.login(id="login", registry=registry)(kopf.login_via_async_client)
        kopf.on.startup(id="start", registry=registry)(self.startup)
        kopf.on.cleanup(id="stop", registry=registry)(self.cleanup)
        kopf.on.probe(id="config", registry=registry)(self.probe)

    # -- indexes (fast, no I/O) -----------------------------------------------------------------------

    async def index_resource(
        self, body: kopf.Body, namespace: str | None, name: str, param: Any = None, **_: Any
    ) -> dict[tuple[str, str], Resource]:
        return {(namespace or "", name): snapshot_resource(str(param), body)}

    async def index_secret(
        self, body: kopf.Body, namespace: str | None, name: str, **_: Any
    ) -> dict[tuple[str, str], SecretData] | None:
        if (namespace, name) == self.settings.config_secret_id:
            return None  # our own output: large, and never an input
        return {(namespace or "", name): snapshot_secret(body)}

    # -- events (thin: tell the reconciler) -----------------------------------------------------------

    async def resource_event(self, type: str, body: kopf.Body, param: Any = None, **_: Any) -> None:
        if self.reconciler is not None:
            self.reconciler.resource_changed(str(param), type, body)

    async def secret_event(self, namespace: str | None, name: str, **_: Any) -> None:
        if self.reconciler is not None:
            self.reconciler.secret_changed(namespace or "", name)

    # -- life cycle -----------------------------------------------------------------------------------

    async def startup(self, **kwargs: Any) -> None:
        view = ClusterView(
            {kind.name: kwargs[index_id(kind.plural)] for kind in KINDS},
            kwargs[SECRETS_INDEX],
        )
        self.kube = kube = await Kube.connect()
        self.reconciler = reconciler = Reconciler(self.settings, kube, view, self.metrics)
        self.tasks.append(asyncio.create_task(reconciler.run(), name="tollway-reconcile"))
        if self.settings.redis_url:
            from tollway_sidecar.contract.redis_counters import RedisCounters

            password = self.settings.redis_password
            store = RedisCounters(
                self.settings.redis_url,
                timeout_s=self.settings.redis_timeout_seconds,
                password=password.get_secret_value() if password else None,
            )
            self._closers.append(store.close)
            policy = WebhookPolicy(
                attempts=self.settings.webhook_attempts,
                backoff=self.settings.webhook_backoff_seconds,
                timeout=self.settings.webhook_timeout_seconds,
            )
            self.alerter = Alerter(kube, policy)
            self.spend = SpendSync(
                store,
                kube,
                view,
                lambda: reconciler.config,
                self.alerter,
                self.settings.spend_interval,
                lambda: time.time_ns() // 1_000_000,
            )
            self.tasks.append(asyncio.create_task(self.spend.run(reconciler.ready), name="tollway-spend"))
        else:
            log.warning("no TOLLWAY_OPERATOR_REDIS_URL: spend is not synced and no budget alert fires")
        log.info(
            "serving %s; publishing the GatewayConfig to Secret %s/%s",
            "all namespaces" if self.settings.clusterwide else ", ".join(self.settings.namespaces),
            *self.settings.config_secret_id,
        )

    async def cleanup(self, **_: Any) -> None:
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.alerter is not None:
            await self.alerter.close()
        for close in self._closers:
            await close()
        if self.kube is not None:
            await self.kube.close()

    async def probe(self, **_: Any) -> str:
        config = self.reconciler.config if self.reconciler is not None else None
        return config.version if config is not None else "not compiled yet"
