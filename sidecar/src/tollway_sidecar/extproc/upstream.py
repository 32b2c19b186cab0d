"""The upstream-level filter: rewrite one attempt for the backend Envoy picked, and watch its answer.

Envoy runs this filter once per attempt (the first try and every retry), after it has chosen an
endpoint. The endpoint's metadata names the backend; its adapter (`providers.adapters.registry`)
says how that backend wants the path, the credentials and the body. Headers an earlier attempt set are still
present on a retry, so every header a rewrite touches is set or removed on every attempt, and
`content-length` always matches the body this attempt sends; the body starts from the original.

The request-headers reply asks Envoy (`mode_override`) for only the phases this attempt needs: the
request body only when it is rewritten (otherwise `content-length` is reset to the original's in
that reply), the response headers only when the route may retry (otherwise the router filter
records the answer: `final_attempt`).

On the way back the filter sees the attempt's status before Envoy decides whether to retry: it
records the status, any `retry-after`, and (for errors) the body, so that the router filter can answer
with the most useful failure when every attempt failed.

An attempt that returns to a backend which asked to wait (`retry-after`, when `maxAttempts` exceeds
the backends) is held until then, if that is before the call's deadline (`timeout` times `maxAttempts`
from its arrival); otherwise the call ends there, with the most useful failure so far.
"""

from __future__ import annotations

import logging
import re
import time
from typing import Any

from envoy.service.ext_proc.v3 import external_processor_pb2 as ep
from google.protobuf import struct_pb2

from tollway_sidecar.config.models import Backend
from tollway_sidecar.extproc import messages as msg
from tollway_sidecar.extproc import spans
from tollway_sidecar.extproc.dispatch import call_id_of
from tollway_sidecar.extproc.state import RequestState
from tollway_sidecar.providers.adapters.base import AttemptRequest, Refused
from tollway_sidecar.providers.adapters.registry import adapter_for, removals
from tollway_sidecar.providers.attempts import MAX_ERROR_BODY, Attempt
from tollway_sidecar.runtime import Runtime
from tollway_sidecar.xds import INTERNAL_HEADERS, RID_HEADER

log = logging.getLogger("tollway.upstream")

_BACKEND_RE = re.compile(r'key: "backend"\s*value\s*\{\s*string_value: "((?:[^"\\]|\\.)*)"')


def backend_from_metadata(text: str) -> str | None:
    """The backend name from `xds.upstream_host_metadata` (a text-format core.v3.Metadata)."""
    match = _BACKEND_RE.search(text)
    return match.group(1) if match else None


def attribute(request: ep.ProcessingRequest, name: str) -> Any:
    for struct in request.attributes.values():
        if name in struct.fields:
            value: struct_pb2.Value = struct.fields[name]
            kind = value.WhichOneof("kind")
            return getattr(value, kind) if kind else None
    return None


class UpstreamAttempt:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.state: RequestState | None = None
        self.backend: Backend | None = None
        self.attempt: Attempt | None = None
        self.hold_seconds = 0.0  # wait this long before answering the request headers
        self.body: bytes | None = None  # this attempt's rewritten body, if it needs one
        self.watching = True  # the response-headers phase runs (the route may retry)

    # -- request --------------------------------------------------------------------------------

    def on_request_headers(self, request: ep.ProcessingRequest) -> ep.ProcessingResponse:
        headers = msg.headers_of(request.request_headers)
        rid = call_id_of(request) or headers.get(RID_HEADER, "")
        state = self.runtime.inflight.get(rid)
        metadata = attribute(request, "xds.upstream_host_metadata")
        name = backend_from_metadata(metadata) if isinstance(metadata, str) else None
        if state is None or state.route is None or name is None or state.operation is None:
            # Not a call the router filter admitted: never let it reach a provider.
            log.error("upstream attempt without router state (rid=%r, backend=%r)", rid, name)
            return msg.error(
                500, "The gateway lost track of this request.", error_type="api_error", code="gateway_error"
            )
        backend = self.runtime.compiled.backends.get((state.route.id, name))
        adapter = adapter_for(state.operation, backend.provider) if backend is not None else None
        if backend is None or adapter is None:
            return msg.error(
                500,
                f"Backend '{name}' is not in the current configuration.",
                error_type="api_error",
                code="gateway_error",
            )
        self.state, self.backend = state, backend
        count = attribute(request, "upstream.request_attempt_count")
        number = int(count) if isinstance(count, float) else state.attempts.count + 1
        now = time.monotonic()

        wait_until = state.attempts.wait_until(name)
        if wait_until > now:
            if wait_until > state.deadline:
                # The provider asked for longer than this call has left: stop here.
                state.attempts.give_up()
                log.info("call %s: backend %s asked to wait past the deadline", state.request_id, name)
                return msg.error(
                    503, "Every backend failed.", error_type="api_error", code="all_backends_failed"
                )
            self.hold_seconds = wait_until - now

        self.attempt = state.attempts.begin(backend, number, now + self.hold_seconds)
        trace_headers = spans.start_attempt(self.runtime.tracing, state, self.attempt, backend)

        # The client's path, not this attempt's `:path`: that may be an earlier attempt's rewrite.
        try:
            rewrite = adapter.request(
                AttemptRequest(
                    backend=backend,
                    client_path=state.path,
                    client_headers=headers,
                    body=state.body,
                    raw=None,
                    credential=self.runtime.credentials.credential(backend),
                    now=time.time(),
                    stream=state.stream,
                )
            )
        except Refused as exc:  # the router checked it already; never expected here
            return msg.error(
                exc.status, exc.message, error_type="invalid_request_error", code=None, param=exc.param
            )
        set_headers = {":path": rewrite.path, **rewrite.set_headers, **trace_headers}
        # A route that never retries has nothing to learn from the attempt's answer before Envoy
        # sends it on: the router filter records it (`final_attempt.record`), one message fewer.
        self.watching = state.route.fallback.max_attempts > 1
        self.body = rewrite.body
        if rewrite.body is None and state.body is not None:
            # Nothing to rewrite, so no body phase. An earlier attempt may have set another length:
            # this attempt sends the body the router filter passed on.
            set_headers["content-length"] = str(state.body_length)
        return msg.continue_headers(
            "request_headers",
            set_headers=set_headers,
            remove=[*INTERNAL_HEADERS, *removals(rewrite)],
            mode_override=msg.UPSTREAM_MODES[(rewrite.body is not None or state.body is None, self.watching)],
        )

    def on_request_body(self, message: ep.HttpBody) -> ep.ProcessingResponse:
        if self.body is None:
            return msg.continue_body("request_body")
        return msg.continue_body(
            "request_body", body=self.body, set_headers={"content-length": str(len(self.body))}
        )

    # -- response -------------------------------------------------------------------------------

    def on_response_headers(self, message: ep.HttpHeaders) -> ep.ProcessingResponse:
        attempt = self.attempt
        if attempt is None or self.state is None:
            return msg.continue_headers("response_headers")
        headers = msg.headers_of(message)
        attempt.answered(headers, time.monotonic())
        self._count(str(attempt.status))
        if attempt.status >= 400 and not message.end_of_stream:
            # Keep the error's body, in case it turns out to be the most useful answer.
            return msg.continue_headers("response_headers", mode_override=msg.response_body_mode("BUFFERED"))
        if attempt.status >= 400:
            attempt.error_body = b""
            spans.end_attempt(attempt)
        attempt.ended = time.monotonic()
        return msg.continue_headers("response_headers", mode_override=msg.response_body_mode("NONE"))

    def on_response_body(self, message: ep.HttpBody) -> ep.ProcessingResponse:
        attempt = self.attempt
        if attempt is not None and len(message.body) <= MAX_ERROR_BODY:
            attempt.error_body = bytes(message.body)
        if attempt is not None:
            attempt.ended = time.monotonic()
            spans.end_attempt(attempt)
        return msg.continue_body("response_body")

    def on_stream_closed(self) -> None:
        attempt = self.attempt
        if attempt is not None and attempt.status == 0 and self.watching:
            attempt.ended = time.monotonic()
            self._count("no_response")
            spans.end_attempt(attempt, "no_response")

    def _count(self, outcome: str) -> None:
        state, backend = self.state, self.backend
        if state is not None and state.route is not None and backend is not None:
            self.runtime.metrics.attempts.labels(state.route.id, backend.name, outcome).inc()
