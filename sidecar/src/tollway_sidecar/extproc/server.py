"""The grpc.aio ExternalProcessor: one stream per request (router filter) or per attempt (upstream)."""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from typing import Any

import grpc
from envoy.service.ext_proc.v3 import external_processor_pb2 as ep
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as ep_grpc
from google.protobuf import duration_pb2

from tollway_sidecar.extproc import messages as msg
from tollway_sidecar.extproc import spans
from tollway_sidecar.extproc.router import RouterCall
from tollway_sidecar.extproc.upstream import UpstreamAttempt, attribute, backend_from_metadata
from tollway_sidecar.limits import MESSAGE_TIMEOUT_MS
from tollway_sidecar.runtime import Runtime
from tollway_sidecar.xds import FILTER_ROLE_HEADER

log = logging.getLogger("tollway.extproc")

# A reply slower than this is logged: past Envoy's message timeout Envoy has already answered the
# client (504), and half of it is the warning that this is coming.
SLOW_REPLY_S = MESSAGE_TIMEOUT_MS / 2000


def note_slow(role: str, phase: str | None, started: float, request_id: str) -> None:
    """Log a reply that took more than half of Envoy's message timeout (no key, only the ids)."""
    elapsed = time.perf_counter() - started
    if elapsed <= SLOW_REPLY_S:
        return
    late = elapsed * 1000 > MESSAGE_TIMEOUT_MS
    log.warning(
        "%s filter took %.0f ms on %s (request %s); Envoy's message timeout is %d ms%s",
        role,
        elapsed * 1000,
        phase,
        request_id or "-",
        MESSAGE_TIMEOUT_MS,
        ": Envoy has answered the client with a 504" if late else "",
    )


class ExternalProcessor(ep_grpc.ExternalProcessorServicer):  # type: ignore[misc]
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        worker = str(runtime.worker_index)
        self._streams = {
            role: runtime.metrics.streams.labels(role, worker) for role in ("router", "upstream")
        }

    async def Process(self, request_iterator: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        role = dict(context.invocation_metadata() or ()).get(FILTER_ROLE_HEADER, "router")
        self._streams["upstream" if role == "upstream" else "router"].inc()
        if role == "upstream":
            await self._upstream(context)
        else:
            await self._router(context)

    async def _router(self, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        call = RouterCall(self.runtime)
        try:
            while True:
                request = await context.read()
                if request is grpc.aio.EOF:
                    return
                which = request.WhichOneof("request")
                started = time.perf_counter()
                try:
                    if which == "request_headers":
                        headers_reply = call.on_request_headers(request.request_headers)
                        # A stored response's call is looked up (async) at its headers.
                        reply = await headers_reply if inspect.isawaitable(headers_reply) else headers_reply
                    elif which == "request_body":
                        reply = await call.on_request_body(request.request_body)
                    elif which == "response_headers":
                        reply = call.on_response_headers(
                            request.response_headers, final_attempt(request), code_details(request)
                        )
                    elif which == "response_body":
                        reply = call.on_response_body(request.response_body)
                    else:
                        reply = _passthrough(which)
                except Exception as exc:
                    reply = _router_failed(call, which, exc)
                note_slow("router", which, started, call.state.envoy_request_id)
                await context.write(reply)
        finally:
            call.on_stream_closed()

    async def _upstream(self, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        attempt = UpstreamAttempt(self.runtime)
        try:
            while True:
                request = await context.read()
                if request is grpc.aio.EOF:
                    return
                which = request.WhichOneof("request")
                try:
                    if which == "request_headers":
                        reply = attempt.on_request_headers(request)
                    elif which == "request_body":
                        reply = attempt.on_request_body(request.request_body)
                    elif which == "response_headers":
                        reply = attempt.on_response_headers(request.response_headers)
                    elif which == "response_body":
                        reply = attempt.on_response_body(request.response_body)
                    else:
                        reply = _passthrough(which)
                except Exception as exc:
                    rid = attempt.state.request_id if attempt.state is not None else "?"
                    log.exception(
                        "upstream filter failed on %s of call %s (%s)", which, rid, type(exc).__name__
                    )
                    messages = attempt.state is not None and attempt.state.operation == "messages"
                    reply = _internal_error(which, exc, rid, anthropic=messages)
                if attempt.hold_seconds > 0:
                    await _hold(context, attempt.hold_seconds)
                    attempt.hold_seconds = 0.0
                await context.write(reply)
        finally:
            attempt.on_stream_closed()


async def _hold(context: grpc.aio.ServicerContext[Any, Any], seconds: float) -> None:
    """Wait before answering, first extending Envoy's per-message timeout to cover the wait."""
    extend = duration_pb2.Duration()
    extend.FromMilliseconds(int((seconds + 1) * 1000))
    await context.write(ep.ProcessingResponse(override_message_timeout=extend))
    await asyncio.sleep(seconds)


def final_attempt(request: ep.ProcessingRequest) -> tuple[str | None, int | None]:
    """(backend name, attempt count) of the answer Envoy is about to send, from its attributes."""
    metadata = attribute(request, "xds.upstream_host_metadata")
    count = attribute(request, "upstream.request_attempt_count")
    return (
        backend_from_metadata(metadata) if isinstance(metadata, str) and metadata else None,
        int(count) if isinstance(count, float) and count > 0 else None,
    )


def code_details(request: ep.ProcessingRequest) -> str | None:
    """Envoy's `response.code_details`: `via_upstream` when a backend gave this answer."""
    details = attribute(request, "response.code_details")
    return details if isinstance(details, str) else None


def _passthrough(which: str | None) -> ep.ProcessingResponse:
    if which in ("request_headers", "response_headers"):
        return msg.continue_headers(which)
    if which in ("request_body", "response_body"):
        return msg.continue_body(which)
    if which == "request_trailers":
        return ep.ProcessingResponse(request_trailers=ep.TrailersResponse())
    return ep.ProcessingResponse(response_trailers=ep.TrailersResponse())


_STAGES = {
    "request_headers": "request headers",
    "request_body": "request body",
    "response_headers": "response headers",
}


def _router_failed(call: RouterCall, which: str | None, exc: Exception) -> ep.ProcessingResponse:
    """Log what failed (never a key: the call's id, path, key name and route) and answer it."""
    state = call.state
    log.exception(
        "router filter failed on %s of call %s (%s %s, key %s, route %s): %s",
        which,
        state.request_id,
        state.operation or "-",
        state.path or "-",
        state.key.name if state.key is not None else "-",
        state.route.id if state.route is not None else "-",
        type(exc).__name__,
    )
    reply = _internal_error(which, exc, state.request_id, anthropic=state.operation == "messages")
    if reply.HasField("immediate_response"):
        state.status = 500
        call.runtime.metrics.denials.labels("gateway_error").inc()
        spans.denied(state, 500, "gateway_error", f"{which} failed: {type(exc).__name__}")
    return reply


def _internal_error(
    which: str | None, exc: Exception, request_id: str, *, anthropic: bool = False
) -> ep.ProcessingResponse:
    if which not in _STAGES:
        # A response body or trailers: headers have left already; let it through rather than cut it.
        return _passthrough(which)
    return msg.error(
        500,
        f"The gateway failed while processing the {_STAGES[which]} ({type(exc).__name__}); "
        f"the failure is logged as call {request_id}.",
        error_type="api_error",
        code="gateway_error",
        anthropic=anthropic,
    )
