"""The router filter's rewrite for a route with one backend (`routing.plan.rewritten_by_router`).

Such a route's cluster runs no upstream filter: every attempt goes to the same backend, so the
router filter rewrites the call once, in its request-body reply, exactly as the upstream filter
would have for each attempt (its adapter's `request`: path, credentials, body), and opens the
attempt's span. Envoy keeps those headers and that body for a retry, which is what a retry on the
same backend needs. The answer is recorded by the router filter (`final_attempt`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from tollway_sidecar.config.models import Backend
from tollway_sidecar.extproc import spans
from tollway_sidecar.extproc.state import RequestState
from tollway_sidecar.providers.adapters.base import AttemptRequest
from tollway_sidecar.providers.adapters.registry import adapter_for, removals
from tollway_sidecar.tracing import Tracing

__all__ = ["DirectRewrite", "rewrite"]

# The client's own credentials: never sent to a provider.
_CLIENT_CREDENTIALS = ("authorization", "x-api-key")


@dataclass(frozen=True, slots=True)
class DirectRewrite:
    set_headers: dict[str, str]
    remove: tuple[str, ...]
    body: bytes | None  # the body to send instead of the client's, if it changes


def rewrite(
    tracing: Tracing,
    state: RequestState,
    backend: Backend,
    anthropic_version: str | None,
    credential: str | None,
) -> DirectRewrite:
    """Rewrite the call for `backend` and record its first attempt; `credential` is what to send it
    (`Runtime.credentials`).

    Raises `Refused` when the body cannot be expressed for the backend (the router's
    `dispatch.check` refuses those calls first).
    """
    assert state.operation is not None  # body None: a stored response's GET or DELETE
    adapter = adapter_for(state.operation, backend.provider, backend.model)
    assert adapter is not None  # `dispatch.check` refuses a route with a backend that has none
    client = {"anthropic-version": anthropic_version} if anthropic_version else {}
    upstream = adapter.request(
        AttemptRequest(
            backend=backend,
            client_path=state.path,
            client_headers=client,
            body=state.body,
            raw=None,
            credential=credential,
            now=time.time(),
            stream=state.stream,
        )
    )
    attempt = state.attempts.begin(backend, 1, time.monotonic())
    set_headers = {":path": upstream.path, **upstream.set_headers}
    set_headers.update(spans.start_attempt(tracing, state, attempt, backend))
    remove = tuple(name for name in (*_CLIENT_CREDENTIALS, *removals(upstream)) if name not in set_headers)
    return DirectRewrite(set_headers, tuple(dict.fromkeys(remove)), upstream.body)
