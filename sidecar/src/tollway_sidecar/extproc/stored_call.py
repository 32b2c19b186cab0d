"""Stored Responses: record which backend created each, and pin the calls that name one to it.

A Responses answer from a backend that keeps them (`KeepsResponses`: OpenAI, Azure passed through)
is recorded as `id → (key, route, backend)` in the background (`record_soon`) unless the request
said `store: false`. `GET`/`DELETE /v1/responses/{id}`, `GET …/input_items` and a POST's
`previous_response_id` are then looked up (`look_up`): only the key that created the response
finds it; every other key, and an unknown id, gets the same 404. A found one is sent to exactly
that backend (`pin`, `pinned_cluster`): no other backend could resolve the id, so there is no
fallback.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

from tollway_sidecar.config.models import Backend, Route, VirtualKey
from tollway_sidecar.extproc.response_store import ResponseStoreUnavailable, StoredResponse
from tollway_sidecar.extproc.state import RequestState, StoredCall
from tollway_sidecar.providers.adapters.base import KeepsResponses
from tollway_sidecar.providers.adapters.registry import adapter_for
from tollway_sidecar.routing.plan import pinned_cluster
from tollway_sidecar.runtime import CompiledConfig, Runtime, model_allowed
from tollway_sidecar.xds import CLUSTER_HEADER, ROUTE_HEADER

__all__ = [
    "Pin",
    "Refusal",
    "find",
    "forget_soon",
    "keeps_responses",
    "look_up",
    "not_found",
    "parse",
    "pin",
    "pin_headers",
    "record_soon",
]

log = logging.getLogger("tollway.stored")

# OpenAI's ids are `resp_` and hex; any other backend's may differ, so only URL-safe characters.
_PATH = re.compile(r"/v1/responses/(?P<id>[A-Za-z0-9_.-]{1,256})(?P<items>/input_items)?")


def parse(path: str, method: str) -> StoredCall | str | None:
    """The stored-response call a path names; a str (the methods it takes) for a wrong method;
    None for a path that names none."""
    match = _PATH.fullmatch(path)
    if match is None:
        return None
    allowed = ("GET",) if match.group("items") else ("GET", "DELETE")
    if method not in allowed:
        return " or ".join(allowed)
    return StoredCall(method=method, response_id=match.group("id"))


def not_found(response_id: str) -> str:
    """OpenAI's own message for an id it does not know."""
    return f"Response with id '{response_id}' not found."


@dataclass(frozen=True, slots=True)
class Refusal:
    status: int
    message: str
    error_type: str
    code: str
    param: str | None


async def find(
    runtime: Runtime, compiled: CompiledConfig, key: VirtualKey, response_id: str, param: str | None
) -> Pin | Refusal:
    """Where the calls naming `response_id` go for `key`, or why they are refused (`param`: the
    field that named it)."""
    try:
        record = await look_up(runtime, key, response_id)
    except ResponseStoreUnavailable as exc:
        log.error("stored-response lookup failed: %s", exc)
        return Refusal(
            503,
            f"The gateway could not look up the response '{response_id}'; retry shortly.",
            "api_error",
            "response_store_unavailable",
            param,
        )
    found = pin(compiled, record) if record is not None else None
    if found is None:  # unknown, another key's, or its backend left the config: all alike
        return Refusal(404, not_found(response_id), "invalid_request_error", "response_not_found", param)
    if not model_allowed(key, found.route.model):
        return Refusal(
            403,
            f"The key '{key.name}' is not allowed to use the model '{found.route.model}'.",
            "invalid_request_error",
            "model_not_allowed",
            None,
        )
    return found


def pin_headers(state: RequestState, found: Pin) -> dict[str, str]:
    """Send the call to the pinned backend only: the headers naming its route and cluster."""
    route = found.route
    state.cluster = pinned_cluster(route, found.index)
    state.order, state.choice = (found.backend.name,), "stored"
    state.deadline = state.started + route.timeout_ms * route.fallback.max_attempts / 1000
    return {ROUTE_HEADER: route.id, CLUSTER_HEADER: state.cluster}


async def look_up(runtime: Runtime, key: VirtualKey, response_id: str) -> StoredResponse | None:
    """The record of a response `key` created; None for an unknown id or another key's.

    Raises `ResponseStoreUnavailable` when the store cannot be read."""
    record = await runtime.responses.get(key.namespace, response_id)
    if record is None or record.key != key.id:
        return None
    return record


@dataclass(frozen=True, slots=True)
class Pin:
    route: Route
    index: int  # of the backend in route.backends
    backend: Backend


def pin(compiled: CompiledConfig, record: StoredResponse) -> Pin | None:
    """Where a record's calls go; None once its route or backend is gone from the config."""
    route = next((r for r in compiled.config.routes if r.id == record.route), None)
    if route is None:
        return None
    for index, backend in enumerate(route.backends):
        if backend.name == record.backend and isinstance(
            adapter_for("responses", backend.provider), KeepsResponses
        ):
            return Pin(route, index, backend)
    return None


def keeps_responses(route: Route) -> bool:
    """Whether any backend of the route stores the Responses it answers."""
    return any(isinstance(adapter_for("responses", b.provider), KeepsResponses) for b in route.backends)


def record_soon(runtime: Runtime, state: RequestState, response_id: str | None) -> None:
    """Record a created response's backend after the reply, unless it was not stored."""
    key, route, backend, body = state.key, state.route, state.backend, state.body
    if response_id is None or key is None or route is None or backend is None or state.stored is not None:
        return
    if state.operation != "responses" or body is None or body.get("store") is False:
        return
    if not isinstance(adapter_for("responses", backend.provider), KeepsResponses):
        return  # a translated answer: the gateway made its id, no backend keeps it
    record = StoredResponse(key=key.id, route=route.id, backend=backend.name)
    runtime.responses_soon(_write(runtime, "put", key.namespace, response_id, record))


def forget_soon(runtime: Runtime, state: RequestState) -> None:
    """Remove the record of a response its backend deleted (or no longer knows)."""
    if state.key is None or state.stored is None:
        return
    runtime.responses_soon(_write(runtime, "forget", state.key.namespace, state.stored.response_id, None))


async def _write(
    runtime: Runtime, operation: str, namespace: str, response_id: str, record: StoredResponse | None
) -> None:
    try:
        if record is not None:
            await runtime.responses.put(namespace, response_id, record)
        else:
            await runtime.responses.forget(namespace, response_id)
    except ResponseStoreUnavailable as exc:
        # The answer has gone already: only later calls naming this id are affected.
        runtime.metrics.response_store_errors.labels(operation).inc()
        log.warning("stored-response record %s %s failed: %s", operation, response_id, exc)
