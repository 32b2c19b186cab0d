"""The quota gate on the request path: reserve before a call, settle after it, whatever the store does.

`admit` estimates the call (estimate.py), plans its counters (plan.py) and reserves them in one
store operation; it answers a `Denial` (429 rate limit / budget, or 503 when the store is
unreachable and the key is FailClosed) or an `Admission`. `settle` charges what the call used (or,
when usage is unknown, what `charge_for` decides) in one more operation.

When the store cannot be reached:
- FailClosed (any Block budget of the key says so, or the key has limits and the default policy
  says so): 503 `quota_store_unavailable`.
- FailOpen: the call is served without a reservation, unless the counters as this process last
  read them plus what it has admitted since (blind.py) put it over a limit; what it used is counted
  locally and added to the store by a background task once the store answers again (each batch
  once, by its mark).
  A settle that fails after a successful reserve is retried the same way; if the reservation
  expires first, the call stays charged at its estimate (and its expiry event is the call's one).
- A refused call's event that cannot be appended waits in the same journal and is appended with
  the next batch (once, by the batch mark).

Each admission makes the call's event id (a UUIDv7): the event its settle appends and the one its
expiry would append carry it, so the ledger counts the call once whichever way it ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from prometheus_client import CollectorRegistry, Gauge, Histogram

from tollway_sidecar.config.models import Budget, FailurePolicy, Route, VirtualKey
from tollway_sidecar.contract.usage_event import uuid7
from tollway_sidecar.pricing import BackendPrice, PriceBook
from tollway_sidecar.providers.usage import ParsedStream, TokenUsage
from tollway_sidecar.quota.blind import BlindCounts
from tollway_sidecar.quota.decision import Denial, decide, ratelimit_headers, unavailable
from tollway_sidecar.quota.estimate import Estimate, estimate_call
from tollway_sidecar.quota.plan import (
    Charge,
    Plan,
    Settlement,
    build_plan,
    for_hit,
    settlement_for,
    to_nano,
)
from tollway_sidecar.quota.store import Batch, BatchLine, QuotaStore, StoreUnavailable

__all__ = ["Admission", "QuotaGate", "charge_for", "wall_clock_ms"]

log = logging.getLogger("tollway.quota")

# Prompts larger than this are tokenized on a worker thread, off the event loop.
_THREAD_TOKENIZE_BYTES = 64 * 1024


def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(slots=True)
class Admission:
    plan: Plan
    estimate: Estimate
    headers: dict[str, str]  # x-ratelimit-* for the response
    local: bool = False  # FailOpen while the store was unreachable: nothing is reserved
    settled: bool = False
    event_id: uuid.UUID | None = None  # the call's usage event id (its settle's and its expiry's)
    saved_nano: int = 0  # a cache hit's saving, tallied by its settle


def charge_for(
    estimate: Estimate,
    *,
    usage: TokenUsage | None,
    cost: Decimal | None,
    status: int,
    reached_backend: bool,
    stream: ParsedStream | None,
    price: BackendPrice | None,
) -> Charge:
    """What a finished call is charged.

    - Usage reported: that usage at its price (a stream cut short is charged at least one output
      token per content event it carried).
    - No backend reached, or an error status: nothing (providers do not bill refusals).
    - A stream without usage (the client hung up, the upstream broke off or stalled): the estimated
      prompt plus one token per content event streamed.
    - Any other answer without readable usage — none seen (the client left first), a broken body
      (not JSON, cut short, empty), no usage, invalid usage: the estimated prompt, which the
      provider was sent; nothing proves what it produced, so no output is charged.
    """
    if usage is not None and stream is not None and not stream.complete:
        usage = TokenUsage(
            input_tokens=usage.input_tokens,
            output_tokens=max(usage.output_tokens, stream.output_chunks),
            cache_read_tokens=min(usage.cache_read_tokens, usage.input_tokens),
        )
        cost = price.cost(usage) if price is not None else None
    if usage is not None:
        if cost is None:
            return Charge(usage.input_tokens, usage.output_tokens, to_nano(estimate.cost_usd), True)
        return Charge(usage.input_tokens, usage.output_tokens, to_nano(cost))
    if not reached_backend or status >= 400:
        return Charge(0, 0, 0)
    received = TokenUsage(estimate.prompt_tokens, stream.output_chunks if stream is not None else 0)
    money = price.cost(received) if price is not None else estimate.cost_usd
    return Charge(received.input_tokens, received.output_tokens, to_nano(money), True)


@dataclass
class _Journal:
    """Counts kept while the store is unreachable, per namespace, until a batch carries them."""

    counts: dict[tuple[str, str, str], list[int]] = field(default_factory=dict)  # -> [amount, drop_at]
    batches: list[Batch] = field(default_factory=list)
    settles: list[tuple[Plan, Settlement, str | None]] = field(default_factory=list)  # + event JSON
    events: dict[str, list[str]] = field(default_factory=dict)  # namespace -> events of counted calls

    @property
    def pending(self) -> int:
        return len(self.counts) + len(self.batches) + len(self.settles) + len(self.events)


def _build_event(event: Callable[[Charge], str] | None, charge: Charge, rid: str) -> str | None:
    """The event's JSON; a call whose event cannot be built is still settled (and logged)."""
    if event is None:
        return None
    try:
        return event(charge)
    except ValueError as exc:  # UsageEventError: a field outside the contract
        log.error("usage event of call %s not built: %s", rid, exc)
        return None


def _build_expiry(
    expiry: Callable[[Plan, uuid.UUID], str] | None, plan: Plan, event_id: uuid.UUID
) -> str | None:
    """The call's event if its reservation expires; a call whose one cannot be built is still
    reserved (and logged), as a settle without its event is still settled."""
    if expiry is None:
        return None
    try:
        return expiry(plan, event_id)
    except ValueError as exc:  # UsageEventError
        log.error("expiry usage event of call %s not built: %s", plan.rid, exc)
        return None


class QuotaGate:
    def __init__(
        self,
        store: QuotaStore,
        *,
        default_max_tokens: int = 4096,
        reservation_ttl_s: float = 600,
        failure_policy: FailurePolicy = "FailClosed",
        retry_s: float = 0.5,
        clock: Callable[[], int] = wall_clock_ms,
        observe: Callable[[str, str, float], None] | None = None,
    ) -> None:
        self.store = store
        self.default_max_tokens = default_max_tokens
        self.reservation_ttl_ms = int(reservation_ttl_s * 1000)
        self.failure_policy: FailurePolicy = failure_policy
        self.retry_s = retry_s
        self.clock = clock
        self._observe = observe  # (operation, outcome, seconds)
        self._journal = _Journal()
        self._blind = BlindCounts()
        self._task: asyncio.Task[None] | None = None
        self.last_error: str | None = None
        self.open = 0  # admissions not settled yet
        self._settling: set[asyncio.Task[None]] = set()

    def bind_metrics(
        self,
        registry: CollectorRegistry,
        track: Callable[[Gauge, Callable[[], float]], None] | None = None,
    ) -> None:
        """Export reserve/settle latency and store failures on the sidecar's /metrics; `track`
        exports a function gauge (`telemetry.Metrics.track`), else it is read at each scrape."""
        seconds = Histogram(
            "tollway_quota_operation_seconds",
            "Quota store operations as the sidecar sees them (one round trip each), by outcome.",
            ["operation", "outcome", "store"],
            buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25),
            registry=registry,
        )
        pending = Gauge(
            "tollway_quota_pending_reconciliation",
            "Counts and settles kept locally until the quota store answers again.",
            registry=registry,
            multiprocess_mode="livesum",
        )
        if track is None:
            pending.set_function(lambda: float(self.pending))
        else:
            track(pending, lambda: float(self.pending))
        store = self.store.name

        def observe(operation: str, outcome: str, elapsed: float) -> None:
            seconds.labels(operation, outcome, store).observe(elapsed)

        self._observe = observe

    @property
    def pending(self) -> int:
        """Counts and settles waiting for the store to answer again."""
        return self._journal.pending

    def _timed(self, operation: str, outcome: str, started: float) -> None:
        if self._observe is not None:
            self._observe(operation, outcome, time.perf_counter() - started)

    # -- reserve ------------------------------------------------------------------------------------

    async def admit(
        self,
        *,
        key: VirtualKey,
        budgets: Mapping[str, Budget],
        route: Route,
        prices: PriceBook,
        operation: str,
        body: Mapping[str, Any],
        user: str | None,
        rid: str,
        body_bytes: int = 0,
        expiry_event: Callable[[Plan, uuid.UUID], str] | None = None,
    ) -> Admission | Denial:
        """`expiry_event(plan, event_id)` builds the call's usage event for an expiry (outcome
        `expired`, charged at the estimate); the store keeps it with the reservation."""
        if body_bytes > _THREAD_TOKENIZE_BYTES:
            estimate = await asyncio.to_thread(
                estimate_call, operation, body, route, prices, default_max_tokens=self.default_max_tokens
            )
        else:
            estimate = estimate_call(
                operation, body, route, prices, default_max_tokens=self.default_max_tokens
            )
        plan = self._plan(key, budgets, user, estimate, rid)
        event_id = uuid7()
        return await self._reserve(plan, estimate, _build_expiry(expiry_event, plan, event_id), event_id)

    def _plan(
        self, key: VirtualKey, budgets: Mapping[str, Budget], user: str | None, estimate: Estimate, rid: str
    ) -> Plan:
        return build_plan(
            key=key,
            budgets=dict(budgets),
            user=user,
            estimate=estimate,
            rid=rid,
            now_ms=self.clock(),
            reservation_ttl_ms=self.reservation_ttl_ms,
            default_failure_policy=self.failure_policy,
        )

    async def admit_hit(
        self,
        *,
        key: VirtualKey,
        budgets: Mapping[str, Budget],
        user: str | None,
        rid: str,
        saved_nano: int = 0,
    ) -> Admission | Denial:
        """A call answered from the response cache: one request against requests-per-minute and the
        key's monthly count, no tokens and no money reserved (it costs nothing). Its settle adds
        `saved_nano` (the cached entry's cost) to the `saved` tallies, in the same store step."""
        estimate = Estimate(0, 0, Decimal(0))
        plan = self._plan(key, budgets, user, estimate, rid)
        admission = await self._reserve(for_hit(plan), estimate, None, uuid7())
        if isinstance(admission, Admission):
            admission.saved_nano = saved_nano
        return admission

    async def _reserve(
        self, plan: Plan, estimate: Estimate, record: str | None, event_id: uuid.UUID
    ) -> Admission | Denial:
        """Reserve `plan`; `record` the event its expiry appends (None: none)."""
        started = time.perf_counter()
        try:
            result = await self.store.reserve(plan, record)
        except StoreUnavailable as exc:
            self._timed("reserve", "unavailable", started)
            self._unreachable(exc)
            # The script may have run with its reply lost (a timeout): release that reservation when
            # the store answers again, or it would expire charged at its estimate. Settling is
            # idempotent, so this is a no-op when nothing was reserved.
            self._journal.settles.append((plan, settlement_for(plan, Charge(0, 0, 0)), None))
            self._kick()
            if plan.failure_policy == "FailClosed":
                return unavailable(plan)
            denial = decide(plan, self._blind.used(plan))
            if denial is not None:
                return denial
            self._blind.reserve(plan)
            self.open += 1
            return Admission(plan, estimate, {}, local=True, event_id=event_id)
        self._timed("reserve", "admitted" if result.admitted else "denied", started)
        self.last_error = None
        if not result.admitted:
            denial = decide(plan, result.used)
            if denial is None:  # the store refused what the plan says fits: trust the store
                denial = Denial(429, "requests", "rate_limit_exceeded", "Rate limit reached.", {})
            return denial
        self.open += 1
        self._blind.saw(plan, result.used)
        headers = ratelimit_headers(plan, result.used, admitted=True)
        return Admission(plan, estimate, headers, event_id=event_id)

    # -- settle -------------------------------------------------------------------------------------

    def settle_soon(
        self,
        admission: Admission,
        *,
        usage: TokenUsage | None,
        cost: Decimal | None,
        status: int,
        reached_backend: bool,
        stream: ParsedStream | None,
        price: BackendPrice | None,
        event: Callable[[Charge], str] | None = None,
    ) -> None:
        """Settle in the background: the response does not wait for the round trip. `drain()`
        (which /spend awaits) waits for every settle started so far. `event` builds the call's
        usage event JSON from its charge; it runs in that background task, off the reply."""
        if admission.settled:
            return
        charge = charge_for(
            admission.estimate,
            usage=usage,
            cost=cost,
            status=status,
            reached_backend=reached_backend,
            stream=stream,
            price=price,
        )
        self._in_background(self.settle(admission, charge, event))

    def emit_soon(self, event: Callable[[], str], *, namespace: str) -> None:
        """Build and append a usage event that settles nothing (a refused call of `namespace`) in
        the background; kept in the journal while the store cannot be reached, and appended once
        with the next batch of that namespace when it answers again."""
        self._in_background(self._emit(event, namespace))

    def _in_background(self, work: Coroutine[Any, Any, None]) -> None:
        """Run `work` as a task that `drain()` waits for."""
        task = asyncio.get_running_loop().create_task(work)
        self._settling.add(task)
        task.add_done_callback(self._settling.discard)

    async def _emit(self, event: Callable[[], str], namespace: str) -> None:
        try:
            record = event()
        except ValueError as exc:  # UsageEventError: a field outside the contract, as in a settle
            log.error("usage event of a refused call not built: %s", exc)
            return
        try:
            await self.store.emit(record, namespace)
        except StoreUnavailable as exc:
            # If the append ran and only its reply was lost, the batch appends it a second time:
            # the same event id, which the ledger counts once.
            self._unreachable(exc)
            self._journal.events.setdefault(namespace, []).append(record)
            self._kick()

    async def drain(self) -> None:
        while self._settling:
            await asyncio.gather(*self._settling, return_exceptions=True)

    async def settle(
        self, admission: Admission, charge: Charge, event: Callable[[Charge], str] | None = None
    ) -> None:
        if admission.settled:
            return
        admission.settled = True
        self.open -= 1
        plan = admission.plan
        settlement = settlement_for(plan, charge, saved_nano=admission.saved_nano)
        record = _build_event(event, charge, plan.rid)
        if admission.local:
            self._count_locally(plan, settlement, record)
            return
        started = time.perf_counter()
        try:
            applied = await self.store.settle(plan, settlement, self.clock(), record)
        except StoreUnavailable as exc:
            self._timed("settle", "unavailable", started)
            self._unreachable(exc)
            self._journal.settles.append((plan, settlement, record))
            self._kick()
            return
        self._timed("settle", "settled" if applied else "expired", started)
        if not applied:
            log.warning("reservation %s had expired before it was settled: charged at its estimate", plan.rid)

    def _unreachable(self, exc: StoreUnavailable) -> None:
        if self.last_error is None:
            log.error("quota store unreachable: %s", exc)
        self.last_error = str(exc)

    def _count_locally(self, plan: Plan, settlement: Settlement, event: str | None = None) -> None:
        """FailOpen: what a call used, kept until the store answers (see module docstring)."""
        amounts: dict[tuple[str, str], int] = {}
        drop_at: dict[str, int] = {}
        for line in plan.lines:
            amounts[(line.key, line.used_field)] = amounts.get((line.key, line.used_field), 0) + line.amount
            drop_at[line.key] = 0 if line.ttl_ms == 0 else plan.now_ms + line.ttl_ms
        for item in (*settlement.deltas, *settlement.tallies):
            amounts[(item.key, item.field)] = amounts.get((item.key, item.field), 0) + item.amount
        self._blind.settled(plan, amounts)
        for (key, name), amount in amounts.items():
            if amount:
                entry = self._journal.counts.setdefault((plan.namespace, key, name), [0, drop_at[key]])
                entry[0] += amount
        if event is not None:  # added by the batch that carries these counts, in the same script
            self._journal.events.setdefault(plan.namespace, []).append(event)
        self._kick()

    # -- reconcile ----------------------------------------------------------------------------------

    def _kick(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._reconcile_loop())

    async def _reconcile_loop(self) -> None:
        while self._journal.pending:
            await asyncio.sleep(self.retry_s)
            with contextlib.suppress(StoreUnavailable):
                await self.reconcile()

    async def reconcile(self) -> None:
        """Send what was kept locally; raises StoreUnavailable (keeping the rest) if the store fails."""
        journal = self._journal
        now = self.clock()
        if journal.counts or journal.events:
            by_namespace: dict[str, list[BatchLine]] = {namespace: [] for namespace in journal.events}
            for (namespace, key, name), (amount, drop_at) in journal.counts.items():
                if drop_at and drop_at <= now:
                    self._blind.dropped(key, name, amount)
                    continue  # the window is over: nothing left to enforce there
                ttl = 0 if not drop_at else drop_at - now
                by_namespace.setdefault(namespace, []).append(BatchLine(key, name, amount, ttl))
            events, journal.counts, journal.events = journal.events, {}, {}
            journal.batches += [
                Batch(namespace, uuid.uuid4().hex, now, tuple(lines), tuple(events.get(namespace, ())))
                for namespace, lines in by_namespace.items()
                if lines or events.get(namespace)
            ]
        while journal.batches:
            batch = journal.batches[0]
            try:
                await self.store.apply(batch)  # a retried batch is applied once (its mark)
            except StoreUnavailable as exc:
                self._unreachable(exc)
                raise
            journal.batches.pop(0)
            self._blind.applied(batch.lines)
        while journal.settles:
            plan, settlement, record = journal.settles[0]
            try:
                await self.store.settle(plan, settlement, self.clock(), record)
            except StoreUnavailable as exc:
                self._unreachable(exc)
                raise
            journal.settles.pop(0)
        if self.last_error is not None:
            log.info("quota store reachable again; local counts reconciled")
        self.last_error = None

    async def close(self) -> None:
        await self.drain()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(StoreUnavailable):
            await self.reconcile()
        await self.store.close()
