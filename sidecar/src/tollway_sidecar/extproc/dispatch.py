"""The router filter's routing step: can this route serve this call, and in which backend order.

Called once per call from the request-body phase. `check` refuses a call no backend order could
serve: a backend with no adapter for the client's API (an Anthropic client on a route with OpenAI
backends), or a request one backend's adapter cannot express; `route_headers` picks the call's
backend order (`routing.select`) and returns the headers that make Envoy use that order's cluster.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from envoy.service.ext_proc.v3 import external_processor_pb2 as ep

from tollway_sidecar.config.models import Backend, Route
from tollway_sidecar.extproc.state import RequestState
from tollway_sidecar.providers.adapters.base import Adapter
from tollway_sidecar.providers.adapters.registry import adapter_for
from tollway_sidecar.routing.select import choose, estimate_tokens
from tollway_sidecar.runtime import CompiledConfig
from tollway_sidecar.xds import CALL_METADATA_NAMESPACE, CLUSTER_HEADER

__all__ = ["Refusal", "attach_call_id", "call_id_of", "check", "route_headers"]

_random = random.SystemRandom()


@dataclass(frozen=True, slots=True)
class Refusal:
    status: int
    message: str
    code: str
    param: str | None = None


# What each operation's backends serve, for the refusal naming those that do not.
_SERVES = {
    "chat": "chat completions",
    "embeddings": "embeddings",
    "responses": "Responses API calls",
}


def check(
    route: Route, operation: str, body: dict[str, Any], backends: Sequence[Backend] | None = None
) -> Refusal | None:
    """`backends`: those the call may reach, when not every backend of the route (a pinned call)."""
    adapters: dict[Adapter, None] = {}
    unserved = []
    for backend in route.backends if backends is None else backends:
        adapter = adapter_for(operation, backend.provider, backend.model)
        if adapter is None:
            unserved.append(backend)
        else:
            adapters[adapter] = None
    if unserved and operation == "messages":
        others = sorted(b.name for b in unserved)
        return Refusal(
            400,
            f"The model '{route.model}' (RouteRule {route.namespace}/{route.name}) is served by "
            f"non-Anthropic backends ({', '.join(others)}); /v1/messages reaches only anthropic "
            "backends. Call /v1/chat/completions instead.",
            "unsupported_route",
            "model",
        )
    if unserved:
        providers = ", ".join(sorted({b.provider for b in unserved}))
        names = sorted(b.name for b in unserved)
        return Refusal(
            400,
            f"The model '{route.model}' has {providers} backends ({', '.join(names)}), which serve no "
            f"{_SERVES.get(operation, operation)}.",
            "unsupported_route",
            "model",
        )
    for adapter in adapters:  # each adapter once, however many backends it serves
        refused = adapter.check(body)
        if refused is not None:
            return Refusal(refused.status, refused.message, refused.code, refused.param)
    return None


def route_headers(
    compiled: CompiledConfig, state: RequestState, route: Route, body: dict[str, Any], raw_length: int
) -> dict[str, str]:
    """Choose this call's backend order; return the header naming its Envoy cluster."""
    plan = compiled.plans[route.id]

    def price(index: int) -> Any:
        return compiled.prices.price_for(route.id, route.backends[index].name)

    choice = choose(
        route,
        plan,
        random=_random.random,
        user=state.end_user,
        tokens=estimate_tokens(body, raw_length) if route.strategy == "Cost" else (0, 0),
        prices=price,
    )
    state.cluster = plan.clusters[choice.index]
    state.order = tuple(route.backends[i].name for i in choice.order)
    state.choice = choice.reason
    state.deadline = state.started + route.timeout_ms * route.fallback.max_attempts / 1000
    return {CLUSTER_HEADER: state.cluster}


def attach_call_id(reply: ep.ProcessingResponse, request_id: str) -> None:
    """Put the call's id into Envoy's dynamic metadata, where every upstream attempt can read it.

    A header would not do: Envoy carries an attempt's header removals into the next attempt, so a
    header removed before the first attempt reaches a provider is gone for the retry too.
    """
    reply.dynamic_metadata.fields[CALL_METADATA_NAMESPACE].struct_value.fields[
        "rid"
    ].string_value = request_id


def call_id_of(request: ep.ProcessingRequest) -> str | None:
    """The call id an upstream attempt was forwarded (`attach_call_id`)."""
    namespace = request.metadata_context.filter_metadata.get(CALL_METADATA_NAMESPACE)
    if namespace is None or "rid" not in namespace.fields:
        return None
    value: str = namespace.fields["rid"].string_value
    return value or None
