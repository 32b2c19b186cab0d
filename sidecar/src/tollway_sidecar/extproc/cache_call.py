"""The response cache in one call: look it up before admission, answer a hit, fill the entry on a miss.

The router filter keeps what the cache did as one `CacheCall` on `RequestState.cache` (None when the
route has no cache and the client sent no cache header). A hit is answered at request-body time,
before any reservation; a miss carries the `Fill` that `end` completes or abandons exactly once,
when the call is accounted (`accounting.finish`) or its ext_proc stream closes, in the background.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Final

from envoy.service.ext_proc.v3 import external_processor_pb2 as ep

from tollway_sidecar.cache import (
    Api,
    CacheDecision,
    CacheEntry,
    Lookup,
    StreamFill,
    Unstorable,
    cache_key,
    decide,
    entry_from_json,
    responses_uncacheable,
    wall_ms,
)
from tollway_sidecar.config.models import CacheSettings, Route, cache_for
from tollway_sidecar.contract.money import format_usd, from_nano, to_nano
from tollway_sidecar.extproc import messages as msg
from tollway_sidecar.extproc import semantic_call
from tollway_sidecar.extproc.state import RequestState
from tollway_sidecar.limits import MESSAGE_TIMEOUT_MS
from tollway_sidecar.runtime import Runtime

__all__ = ["WAIT_S", "CacheCall", "end", "hit_reply", "look_up", "start_stream"]

log = logging.getLogger("tollway.cache")

# A waiter answers Envoy's request-body message, which Envoy waits for at most MESSAGE_TIMEOUT_MS:
# wait less, with room for the reply, then go upstream (and perhaps store the answer too).
WAIT_S: Final = MESSAGE_TIMEOUT_MS / 1000 - 0.5
_APIS: Final[dict[str, Api]] = {"chat": "chat", "messages": "messages", "responses": "responses"}


@dataclass(slots=True)
class CacheCall:
    """What the cache did for a call, and on a miss what it is filling."""

    decision: CacheDecision
    settings: CacheSettings
    api: Api
    lookup: Lookup
    semantic: semantic_call.SemanticLookup | None = None  # on a Semantic route, after an exact miss
    stream_fill: StreamFill | None = None  # a streamed miss: the bytes the client received
    answer_body: bytes | None = None  # a buffered miss: the body the client received
    ended: bool = False

    @property
    def entry(self) -> CacheEntry | None:
        return self.lookup.entry

    @property
    def headers(self) -> dict[str, str]:
        return dict(self.decision.answer_headers(self.lookup.outcome))

    @property
    def saved_nano(self) -> int:
        return self.entry.cost_nano if self.entry is not None else 0


async def look_up(
    runtime: Runtime, state: RequestState, route: Route, headers: Mapping[str, str], body: Mapping[str, Any]
) -> CacheCall | None:
    """The call's cache lookup over the client's body (before the gateway rewrites it). Raises
    `BadCacheHeader` for a malformed cache header on a route whose cache is on."""
    api = _APIS.get(state.operation or "")
    if api is None or state.key is None:
        return None
    settings = cache_for(route, state.key)
    decision = decide(settings, headers)
    if not decision.enabled and not decision.asked:
        return None
    if api == "responses" and (why := responses_uncacheable(body)) is not None:
        # Reported as a BYPASS, as a `Cache-Control: no-store` call is: the cache is on, not used.
        log.debug("call %s not looked up: %s", state.request_id, why)
        decision = replace(decision, read=False, write=False)
    lookup = Lookup("BYPASS")
    if decision.active:
        key = cache_key(
            partition=settings.partition,
            key=state.key,
            route_id=route.id,
            client_model=state.client_model,
            path=state.path,
            body=body,
            extra_parts=decision.partition_parts,
        )
        lookup = await runtime.cache.lookup(
            key,
            decision,
            wait_s=min(WAIT_S, route.timeout_ms / 1000),
            # About as long as the filler's upstream call may take: every attempt's timeout.
            lease_s=route.timeout_ms * route.fallback.max_attempts / 1000,
        )
    semantic = None
    if settings.semantic is not None:  # a Semantic route: after an exact miss, compare the meaning
        lookup, semantic = await semantic_call.after_exact(
            runtime, state, route, settings, decision, lookup, api, body
        )
    if decision.enabled:
        runtime.metrics.cache_looked_up(lookup.outcome, unavailable=lookup.unavailable)
    return CacheCall(decision, settings, api, lookup, semantic)


def hit_reply(
    call: CacheCall, state: RequestState, body: Mapping[str, Any], info: Mapping[str, str]
) -> ep.ProcessingResponse:
    """The immediate 200 for a hit: SSE for a client that asked for a stream (`body`, the client's,
    says whether it wants the usage chunk), JSON otherwise."""
    entry = call.entry
    assert entry is not None
    if state.stream:
        options = body.get("stream_options")
        include_usage = isinstance(options, dict) and bool(options.get("include_usage"))
        replay, content_type = entry.to_sse(include_usage=include_usage), "text/event-stream"
    else:
        replay, content_type = entry.to_json(), "application/json"
    headers = {
        **info,
        **call.headers,
        "age": str(entry.age_s(wall_ms())),
        "x-tollway-cost-usd": "0",
        "x-tollway-cost-saved-usd": format_usd(from_nano(entry.cost_nano)),
    }
    if state.stream:
        headers["cache-control"] = "no-cache"
    return msg.immediate(200, replay, headers=headers, content_type=content_type, details="cache_hit")


def start_stream(state: RequestState) -> None:
    """A streamed answer begins: read it for the entry when this call fills one."""
    call = state.cache
    if call is not None and call.lookup.fill is not None and not call.ended:
        call.stream_fill = StreamFill(call.api, max_entry_bytes=call.settings.max_entry_bytes)


def end(runtime: Runtime, state: RequestState) -> None:
    """Complete or abandon the call's fill, once, in the background (the answer does not wait)."""
    call = state.cache
    if call is None or call.ended or call.lookup.fill is None:
        return
    call.ended = True
    fill = call.lookup.fill
    try:
        entry = _entry(call, state)
    except Unstorable as exc:
        log.debug("answer of call %s not cached: %s", state.request_id, exc.reason)
        runtime.cache_soon(fill.abandon())
        return
    runtime.cache_soon(semantic_call.complete(runtime.cache, fill, entry, call.semantic))


def _entry(call: CacheCall, state: RequestState) -> CacheEntry:
    if state.usage is None:
        raise Unstorable("the answer's usage is unknown")
    if state.cost is None:
        raise Unstorable("the answer has no price")  # a hit would claim a saving it cannot state
    cost_nano, created_ms = to_nano(state.cost), wall_ms()
    limit = call.settings.max_entry_bytes
    if call.stream_fill is not None:
        return call.stream_fill.finish(
            status=state.status, cost_nano=cost_nano, created_ms=created_ms, usage=state.usage
        )
    if call.answer_body is not None:
        return entry_from_json(
            call.api,
            state.status,
            call.answer_body,
            cost_nano=cost_nano,
            created_ms=created_ms,
            max_entry_bytes=limit,
            usage=state.usage,
        )
    raise Unstorable("no answer body was seen")
