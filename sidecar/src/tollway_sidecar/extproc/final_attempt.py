"""The answer of an attempt the upstream filter did not watch, recorded by the router filter.

On a route that never retries (`maxAttempts: 1`) the upstream filter skips the response-headers
phase, one ext_proc message fewer per call; a route with one backend has no upstream filter at all
(`direct`). The router filter sees the same answer a moment later (Envoy passes it on unchanged)
and records what the upstream filter would have: the attempt's status, `retry-after` and content
type, its outcome metric, and the end of its span. An answer Envoy made itself (the backend
refused, reset or timed out) is no answer: that attempt is recorded as `no_response`, as the
upstream filter does when its stream closes without one.

On a one-backend route Envoy retries without asking anyone: only the final attempt is seen. Its
number is Envoy's attempt count; the attempts before it are counted with the outcome `retried`
(their statuses are not known).
"""

from __future__ import annotations

import time

from tollway_sidecar.extproc import spans
from tollway_sidecar.extproc.state import RequestState
from tollway_sidecar.routing.plan import rewritten_by_router
from tollway_sidecar.runtime import Runtime

__all__ = ["VIA_UPSTREAM", "record"]

# Envoy's `response.code_details` for an answer that came from the upstream.
VIA_UPSTREAM = "via_upstream"


def record(runtime: Runtime, state: RequestState, headers: dict[str, str], details: str | None) -> None:
    route = state.route
    if route is None or not state.attempts.log:
        return
    by_router = rewritten_by_router(route)
    if route.fallback.max_attempts > 1 and not by_router:
        return  # the upstream filter watched every attempt
    attempt = state.attempts.log[-1]
    if attempt.status or attempt.ended is not None:
        return
    unseen = state.attempts.renumber_latest() if by_router else 0
    if unseen:
        # Envoy retried on its own: the earlier attempts' answers were never seen.
        runtime.metrics.attempts.labels(route.id, attempt.backend, "retried").inc(unseen)
        if attempt.span is not None:
            attempt.span.set_attribute("tollway.attempt", attempt.number)
    attempt.ended = time.monotonic()
    if details != VIA_UPSTREAM:
        outcome = "no_response"
        spans.end_attempt(attempt, outcome)
    else:
        attempt.answered(headers, attempt.ended)
        outcome = str(attempt.status)
        if attempt.status >= 400:
            spans.end_attempt(attempt)  # a success's span ends with the call, carrying its usage
    runtime.metrics.attempts.labels(route.id, attempt.backend, outcome).inc()
