"""The usage event (contract v1) of one call, from what its state says when it finishes.

`facts_of` reads the finished call's state once (cheap field reads; the event's UUIDv7 is made
there, once per call). `usage_event` turns those facts and the settled `Charge` into the event; the
quota gate calls it in the settle's background task, so building and serialising the event stays
off the client's reply. The cost is the charge's nano-USD, so the ledger equals /spend exactly.

`expiry_record` builds, at reserve time, the event of the same call (same id) for the case its
reservation expires unsettled; the store keeps it with the reservation and appends it only then.
"""

from __future__ import annotations

import functools
import socket
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from importlib import metadata

from tollway_sidecar.contract.money import format_usd, from_nano
from tollway_sidecar.contract.usage_event import (
    MAX_PROPERTIES,
    MAX_PROPERTY_NAME,
    MAX_PROPERTY_VALUE,
    MAX_TEXT,
    PROPERTY_NAME,
    Attempt,
    Tokens,
    UsageData,
    UsageEvent,
    uuid7,
)
from tollway_sidecar.extproc.captured import PendingContent, content
from tollway_sidecar.extproc.state import RequestState
from tollway_sidecar.pricing import BackendPrice
from tollway_sidecar.providers.usage import TokenUsage
from tollway_sidecar.quota.plan import Charge, Plan

__all__ = [
    "CLIENT_CLOSED",
    "CallFacts",
    "bounded_properties",
    "budgets_of",
    "call_facts",
    "clip",
    "facts_of",
    "replica_name",
    "trace_id_of",
    "usage_event",
]

CLIENT_CLOSED = 499  # the status of a call whose client left before any answer (no HTTP status)


def replica_name(configured: str) -> str:
    """The events' `source`: the configured name (`TOLLWAY_REPLICA`), else the host name."""
    return clip(configured or socket.gethostname() or "tollway") or "tollway"


@functools.cache
def _catalog_version() -> str:
    try:
        return f"genai-prices {metadata.version('genai-prices')}"
    except metadata.PackageNotFoundError:
        return ""


def clip(text: str | None, limit: int = MAX_TEXT) -> str:
    """Client-sent text the contract accepts: no NUL, no lone surrogate, at most `limit` characters
    (a header or body field is the client's; an event refused by the contract would be lost)."""
    if not text:
        return ""
    if text.isascii() and "\x00" not in text:  # the usual case, without the encode round trip
        return text[:limit]
    clean = text.replace("\x00", "").encode("utf-8", "replace").decode("utf-8")
    return clean[:limit]


def bounded_properties(properties: Mapping[str, str]) -> dict[str, str]:
    """The properties the contract allows: valid names only, values clipped, at most 16 (in order)."""
    kept: dict[str, str] = {}
    for name, value in properties.items():
        if len(kept) == MAX_PROPERTIES:
            break
        if len(name) <= MAX_PROPERTY_NAME and PROPERTY_NAME.fullmatch(name):
            kept[name] = clip(value, MAX_PROPERTY_VALUE)
    return kept


@dataclass(frozen=True, slots=True)
class CallFacts:
    """Everything the event says that is known when the call finishes (the charge comes later)."""

    id: uuid.UUID
    source: str
    at: datetime
    namespace: str
    key_name: str
    model: str
    status: int
    outcome: str
    team: str = ""
    user: str = ""
    end_user: str = ""
    session_id: str = ""
    session_path: str = ""
    session_name: str = ""
    properties: dict[str, str] = field(default_factory=dict)
    route: str = ""
    attempts: tuple[Attempt, ...] = ()
    usage: TokenUsage | None = None
    price_source: str = ""
    price_version: str = ""
    budgets: tuple[str, ...] = ()
    latency_ms: int = 0
    ttft_ms: int | None = None
    streamed: bool = False
    request_id: str = ""
    trace_id: str = ""
    cache: str = ""  # the response cache's outcome; "" on a route without one
    saved: str = ""  # a hit's saving (USD decimal string)


def _attempts(state: RequestState) -> tuple[Attempt, ...]:
    models = {b.name: b.model for b in state.route.backends} if state.route is not None else {}
    tries = [
        Attempt(clip(a.backend), clip(a.provider), clip(models.get(a.backend, "")), a.status)
        for a in state.attempts.log
    ]
    if not tries and state.backend is not None:  # one backend, rewritten by the router: no log
        backend = state.backend
        tries = [Attempt(clip(backend.name), clip(backend.provider), clip(backend.model), state.status)]
    return tuple(tries)


def _outcome(status: int, *, denied: bool) -> str:
    if denied:
        return "denied"
    if status == 0:
        return "cancelled"
    return "ok" if status < 400 else "error"


def budgets_of(plan: Plan | None) -> tuple[str, ...]:
    """The budgets a call's reservation counts against, as `namespace/name`, once each."""
    if plan is None:
        return ()
    names = (f"{line.budget.namespace}/{line.budget.name}" for line in plan.lines if line.budget)
    return tuple(dict.fromkeys(names))


def trace_id_of(span: object) -> str:
    """The span's trace id as 32 hex digits, or empty."""
    context = getattr(span, "get_span_context", None)
    if context is None:
        return ""
    trace = context().trace_id
    return f"{trace:032x}" if trace else ""


def admitted_at(plan: Plan) -> datetime:
    """The reservation's clock, exactly (no float division of the milliseconds)."""
    return datetime.fromtimestamp(plan.now_ms // 1000, tz=UTC) + timedelta(milliseconds=plan.now_ms % 1000)


def facts_of(
    state: RequestState,
    *,
    price: BackendPrice | None,
    now: datetime,
    monotonic: float,
    source: str,
    denied: bool = False,
    event_id: uuid.UUID | None = None,
) -> CallFacts:
    """Read the call's state once; `monotonic` is `time.monotonic()` at the end of the call. The id
    is the one its admission made (which its expiry event carries too), else a new UUIDv7."""
    status = state.status if 100 <= state.status <= 599 else CLIENT_CLOSED
    quota = state.quota
    return call_facts(
        state,
        id=event_id or (quota.event_id if quota is not None else None) or uuid7(),
        source=source,
        # The admission's time, which keyed the call's counters: the event lands in the same month
        # as its budget's counter even when the call ends after midnight at a month's end.
        at=admitted_at(quota.plan) if quota is not None else now,
        plan=quota.plan if quota is not None else None,
        status=status,
        outcome=_outcome(state.status, denied=denied),
        attempts=_attempts(state),
        price_source=price.source if price is not None else "",
        price_version=_catalog_version() if price is not None and price.source == "catalog" else "",
        latency_ms=max(0, int((monotonic - state.started) * 1000)),
        ttft_ms=(
            max(0, int((state.first_chunk_at - state.started) * 1000))
            if state.first_chunk_at is not None
            else None
        ),
    )


def call_facts(
    state: RequestState,
    *,
    id: uuid.UUID,
    source: str,
    at: datetime,
    plan: Plan | None,
    status: int,
    outcome: str,
    attempts: tuple[Attempt, ...],
    price_source: str,
    price_version: str,
    latency_ms: int,
    ttft_ms: int | None,
) -> CallFacts:
    """The facts every event of the call shares (who, what, the client's labels), plus its outcome."""
    key = state.key
    assert key is not None  # only calls that passed authentication have an event
    return CallFacts(
        id=id,
        source=source,
        at=at,
        namespace=key.namespace,
        key_name=key.name,
        model=clip(state.client_model) or "unknown",
        status=status,
        outcome=outcome,
        team=clip(key.owner_team),
        user=clip(key.owner_user),
        end_user=clip(state.end_user),
        session_id=clip(state.session),
        session_path=clip(state.session_path),
        session_name=clip(state.session_name),
        properties=bounded_properties(state.properties),
        route=state.route.id if state.route is not None else "",
        attempts=attempts,
        usage=state.usage,
        price_source=price_source,
        price_version=price_version,
        budgets=budgets_of(plan),
        latency_ms=latency_ms,
        ttft_ms=ttft_ms,
        streamed=state.stream,
        request_id=clip(state.envoy_request_id or state.request_id),
        trace_id=trace_id_of(state.span),
        cache=state.cache.lookup.outcome if state.cache is not None else "",
        saved=format_usd(from_nano(state.cache.saved_nano)) if state.cache and state.cache.entry else "",
    )


def usage_event(
    facts: CallFacts, charge: Charge | None, captured: PendingContent | None = None
) -> UsageEvent:
    """The event; `charge` None for a refused call (cost 0, not billable); `captured` the content of
    a capturing route, redacted here. Raises `UsageEventError` when a field is outside the contract
    (not expected: `facts_of` bounds what the client sent)."""
    usage = facts.usage
    denied = facts.outcome == "denied"
    tokens = Tokens(
        input=charge.input_tokens if charge is not None else 0,
        output=charge.output_tokens if charge is not None else 0,
        cached_read=usage.cache_read_tokens if usage is not None else 0,
        cache_write=usage.cache_write_tokens if usage is not None else 0,
        reasoning=usage.reasoning_tokens if usage is not None else 0,
    )
    data = UsageData(
        namespace=facts.namespace,
        key_name=facts.key_name,
        route=facts.route,
        model=facts.model,
        status=facts.status,
        outcome=facts.outcome,
        cost=format_usd(from_nano(charge.nano_usd if charge is not None else 0)),
        billable=charge is not None and not denied,
        team=facts.team,
        user=facts.user,
        end_user=facts.end_user,
        session_id=facts.session_id,
        session_path=facts.session_path,
        session_name=facts.session_name,
        properties=facts.properties,
        attempts=facts.attempts,
        tokens=tokens,
        price_source=facts.price_source,
        price_version=facts.price_version,
        budgets=facts.budgets,
        latency_ms=facts.latency_ms,
        ttft_ms=facts.ttft_ms,
        streamed=facts.streamed,
        request_id=facts.request_id,
        trace_id=facts.trace_id,
        cache=facts.cache,
        saved=facts.saved,
        content=content(captured) if captured is not None else None,
    )
    return UsageEvent(
        id=facts.id,
        source=facts.source,
        time=facts.at,
        subject=f"{facts.namespace}/{facts.key_name}",
        data=data,
    )


def event_json(facts: CallFacts, charge: Charge | None, captured: PendingContent | None = None) -> str:
    return usage_event(facts, charge, captured).to_json()


def settle_event(
    state: RequestState, price: BackendPrice | None, *, source: str, captured: PendingContent | None = None
) -> Callable[[Charge], str]:
    """What a settle appends for the call: its facts read now, at its end; the event built from the
    settled charge (and any captured content redacted) in the settle's background task, off the reply."""
    facts = facts_of(state, price=price, now=datetime.now(UTC), monotonic=time.monotonic(), source=source)
    return functools.partial(event_json, facts, captured=captured)
