"""The end of a call, once: its price, its settle, its metrics and its span.

Called by the router filter when the answer is complete (the buffered body, the provider's last
streamed event), or when the ext_proc stream closes first (a client gone mid-stream, a call admitted
but never sent): usage is then what was seen, or none.
"""

from __future__ import annotations

import functools
import time
from datetime import UTC, datetime
from decimal import Decimal

from tollway_sidecar.extproc import cache_call, captured, spans, usage_record
from tollway_sidecar.extproc.state import RequestState
from tollway_sidecar.providers.usage import ParsedStream, TokenUsage
from tollway_sidecar.runtime import CompiledConfig, Runtime

__all__ = ["BAD_BODY", "BODY_CUT", "finish", "refused", "unpriced_reason"]

BAD_BODY = "bad_body"  # a 2xx body that is not an answer (not JSON, cut, empty): the client got a 502
BODY_CUT = "body_cut"  # a 2xx whose headers came but whose whole body never did


def unpriced_reason(error: str | None, *, complete: bool = True) -> str:
    """Why a successful answer has no usable usage, from the usage parser's `error`: a bounded
    label for `tollway_unpriced_calls_total` and the span. `complete` is False for a stream that
    ended before its end marker."""
    if not complete:
        return "stream_cut"
    if error is None or error in ("no usage field", "no usage in stream"):
        return "no_usage"
    if error in ("empty body", "body is not JSON", "body is not a JSON object"):
        return BAD_BODY
    return "invalid_usage"


def finish(
    runtime: Runtime,
    compiled: CompiledConfig,
    state: RequestState,
    usage: TokenUsage | None,
    stream: ParsedStream | None = None,
) -> None:
    """Price, settle, count and trace the call once; `stream` is what a streamed answer said."""
    if state.finished:
        return
    state.finished = True
    state.usage = usage
    backend = state.backend
    key = state.key
    if key is None or state.route is None:
        return
    free = state.stored is not None  # reading or deleting a stored response costs nothing
    price = compiled.prices.price_for(state.route.id, backend.name) if backend and not free else None
    cost = price.cost(usage, at=datetime.now(UTC)) if usage is not None and price is not None else None
    state.cost = cost = Decimal(0) if free else cost
    if backend is not None and usage is None and state.status < 400 and not free:
        state.unpriced = state.unpriced or "no_answer"  # the ext_proc stream closed first
        runtime.metrics.unpriced.labels(backend.name).inc()
        runtime.metrics.unpriced_calls.labels(backend.name, state.unpriced).inc()
    if state.quota is not None:
        runtime.quota.settle_soon(
            state.quota,
            usage=usage,
            cost=cost,
            status=state.status,
            reached_backend=backend is not None,
            stream=stream,
            price=price,
            event=usage_record.settle_event(
                state, price, source=runtime.replica, captured=captured.pending(runtime.tracing, state)
            ),
        )
    runtime.metrics.observe_call(
        key=key.id,
        model=state.client_model,
        backend=backend.name if backend else "",
        status=state.status,
        input_tokens=usage.input_tokens if usage else None,
        output_tokens=usage.output_tokens if usage else None,
        cost=cost,
        seconds=time.monotonic() - state.started,
        provider=backend.provider if backend else "",
        ttft=(state.first_chunk_at - state.started) if state.first_chunk_at is not None else None,
        route=state.route.id,
        attempts=state.attempts.reported,
    )
    spans.finished(runtime.tracing, state, state.completion)
    cache_call.end(runtime, state)  # after pricing: the entry keeps the cost each hit saves


def refused(runtime: Runtime, state: RequestState, status: int) -> None:
    """A call refused by a limit or budget: its usage event (cost 0, not billable), appended in the
    background. Calls refused before admission (401, 403, 404) and 503s have no event."""
    if state.key is None:
        return
    state.status = status
    facts = usage_record.facts_of(
        state,
        price=None,
        now=datetime.now(UTC),
        monotonic=time.monotonic(),
        source=runtime.replica,
        denied=True,
    )
    runtime.quota.emit_soon(
        functools.partial(usage_record.event_json, facts, None), namespace=facts.namespace
    )
