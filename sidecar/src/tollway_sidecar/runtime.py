"""The loaded config, indexed for the request path, and the process-wide state around it."""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import hashlib
import hmac
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from tollway_sidecar.cache import Coalescer, MemoryCacheStore
from tollway_sidecar.config.models import Backend, Budget, GatewayConfig, Route, VirtualKey
from tollway_sidecar.limits import DEFAULT_MAX_RESPONSE_BYTES
from tollway_sidecar.pricing import PriceBook
from tollway_sidecar.providers.refresh import Refreshers
from tollway_sidecar.routing.plan import RoutePlan, plans_for, rewritten_by_router
from tollway_sidecar.tracing import Tracing

if TYPE_CHECKING:
    from tollway_sidecar.extproc.response_store import ResponseStore
    from tollway_sidecar.extproc.state import RequestState
    from tollway_sidecar.quota.gate import QuotaGate


@dataclass(frozen=True)
class CompiledConfig:
    """A GatewayConfig with the lookups the hot path needs, built once per config version."""

    config: GatewayConfig
    keys_by_hash: dict[str, VirtualKey]
    routes_by_model: dict[str, Route]
    routes_by_cluster: dict[str, Route]
    backends: dict[tuple[str, str], Backend]  # (route id, backend name)
    prices: PriceBook
    plans: dict[str, RoutePlan]  # route id → the backend orders Envoy has a cluster for
    budgets: dict[str, Budget] = field(default_factory=dict)  # by id ("namespace/name")

    @classmethod
    def build(cls, config: GatewayConfig, *, worker: int = 0, workers: int = 1) -> CompiledConfig:
        """`worker` of `workers`: the calls this process admits name its own copies of the clusters
        with an upstream filter (`xds.cluster_for`), so their attempts come back to it."""
        from tollway_sidecar.xds import cluster_for, cluster_name

        reachable: dict[str, tuple[str, ...]] = {}  # by namespace
        for namespace in {key.namespace for key in config.keys}:
            reachable[namespace] = tuple(sorted(r.model for r in config.routes if r.allows(namespace)))
        return cls(
            config=config,
            keys_by_hash={
                key.key_sha256: key.model_copy(update={"reachable_models": reachable[key.namespace]})
                for key in config.keys
            },
            routes_by_model={route.model: route for route in config.routes},
            routes_by_cluster={cluster_name(route): route for route in config.routes},
            backends={(route.id, b.name): b for route in config.routes for b in route.backends},
            prices=PriceBook(config),
            plans=_worker_plans(config, worker, workers, cluster_for),
            budgets={budget.id: budget for budget in config.budgets},
        )

    def authenticate(self, presented: str) -> VirtualKey | None:
        """Find a key by the SHA-256 of what the client presented.

        The lookup is by digest, so its timing says nothing about the key itself; the final
        comparison is constant-time all the same.
        """
        digest = hashlib.sha256(presented.encode()).hexdigest()
        key = self.keys_by_hash.get(digest)
        if key is None or not hmac.compare_digest(key.key_sha256, digest):
            return None
        return key

    def models_for(self, key: VirtualKey) -> list[Route]:
        return [route for route in self.config.routes if model_allowed(key, route.model)]


def _worker_plans(
    config: GatewayConfig, worker: int, workers: int, cluster_for: Callable[[str, int, int], str]
) -> dict[str, RoutePlan]:
    plans = plans_for(config)
    if workers == 1:
        return plans
    routes = {route.id: route for route in config.routes}
    return {
        route_id: plan
        if rewritten_by_router(routes[route_id])
        else replace(plan, clusters=tuple(cluster_for(c, worker, workers) for c in plan.clusters))
        for route_id, plan in plans.items()
    }


def model_allowed(key: VirtualKey, model: str) -> bool:
    if key.reachable_models is not None and model not in key.reachable_models:
        return False  # another namespace's route that does not allow this key's namespace
    return not key.models or any(fnmatch.fnmatchcase(model, pattern) for pattern in key.models)


def key_expired(key: VirtualKey, now: datetime | None = None) -> bool:
    if key.expires_at is None:
        return False
    expires = key.expires_at if key.expires_at.tzinfo else key.expires_at.replace(tzinfo=UTC)
    return (now or datetime.now(UTC)) >= expires


@dataclass
class Inflight:
    """Requests between the router-level and upstream-level filters, by the id the router assigns."""

    requests: dict[str, RequestState] = field(default_factory=dict)
    _emptied: asyncio.Event | None = field(default=None, repr=False)  # set once drained, at shutdown

    def add(self, state: RequestState) -> None:
        self.requests[state.request_id] = state

    def get(self, request_id: str) -> RequestState | None:
        return self.requests.get(request_id)

    def discard(self, request_id: str) -> None:
        self.requests.pop(request_id, None)
        if self._emptied is not None and not self.requests:
            self._emptied.set()

    async def wait_empty(self, timeout_s: float) -> bool:
        """Shutdown: wait until no call is between its filters, at most `timeout_s`; whether none is."""
        if self.requests:
            self._emptied = asyncio.Event()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._emptied.wait(), timeout_s)
        return not self.requests


class Runtime:
    """Everything the request path reads: the current config, the quota gate, in-flight requests."""

    def __init__(
        self,
        compiled: CompiledConfig,
        *,
        max_request_bytes: int,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        quota: QuotaGate | None = None,
        tracing: Tracing | None = None,
        replica: str = "",
        cache: Coalescer | None = None,
        credentials: Refreshers | None = None,
        responses: ResponseStore | None = None,
    ) -> None:
        from tollway_sidecar.extproc.response_store import MemoryResponseStore
        from tollway_sidecar.extproc.usage_record import replica_name
        from tollway_sidecar.quota.gate import QuotaGate
        from tollway_sidecar.quota.memory import MemoryStore
        from tollway_sidecar.telemetry import Metrics

        self.compiled = compiled
        self.max_request_bytes = max_request_bytes
        self.max_response_bytes = max_response_bytes
        self.replica = replica_name(replica)  # the usage events' source
        self.quota = quota or QuotaGate(MemoryStore())
        self.inflight = Inflight()
        self.worker_index = 0  # which of the Pod's sidecar workers this process is
        self.cache = cache or Coalescer(MemoryCacheStore())  # the response cache, one per process
        self._cache_tasks: set[asyncio.Task[Any]] = set()
        # Which backend stored each Responses answer (`extproc.stored_call`); written in the background.
        self.responses: ResponseStore = responses or MemoryResponseStore()
        self._response_tasks: set[asyncio.Task[Any]] = set()
        self.tracing = tracing or Tracing()  # no-op unless the app configures an exporter
        self.metrics = Metrics()
        self.metrics.config_loaded(compiled.config)
        # Each backend's credential as sent upstream: refreshed ones for backends with a source.
        self.credentials = credentials or Refreshers({})
        self.credentials.update(compiled.backends.values())
        self.quota.bind_metrics(self.metrics.registry, self.metrics.track)
        self.metrics.track_open(lambda: self.quota.open)

    def cache_soon(self, work: Coroutine[Any, Any, Any]) -> None:
        """End a cache fill (store the entry, or release its lease) after the reply has gone."""
        task = asyncio.get_running_loop().create_task(work)
        self._cache_tasks.add(task)
        task.add_done_callback(self._cache_tasks.discard)

    async def drain_cache(self) -> None:
        """Wait for the cache fills under way (shutdown, tests)."""
        while self._cache_tasks:
            await asyncio.gather(*self._cache_tasks, return_exceptions=True)

    def responses_soon(self, work: Coroutine[Any, Any, Any]) -> None:
        """Write or remove a stored-response record after the reply has gone."""
        task = asyncio.get_running_loop().create_task(work)
        self._response_tasks.add(task)
        task.add_done_callback(self._response_tasks.discard)

    async def drain_responses(self) -> None:
        """Wait for the record writes under way (shutdown, tests)."""
        while self._response_tasks:
            await asyncio.gather(*self._response_tasks, return_exceptions=True)

    def swap(self, compiled: CompiledConfig) -> None:
        """Replace the config; requests already under way keep the objects they hold."""
        self.compiled = compiled
        self.credentials.update(compiled.backends.values())
        self.metrics.config_loaded(compiled.config)
