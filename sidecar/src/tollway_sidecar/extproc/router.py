"""The router-level filter: authenticate, validate, pick the route, then read usage and price the call.

One instance per client request (one ext_proc stream). Envoy sends, in order: request headers,
the buffered request body, response headers, then the response body (buffered for JSON, streamed
chunk by chunk for SSE — chosen per response with `mode_override`). On a route with one backend
the request-body reply also rewrites the call for that backend (`direct`); on a route with several,
the upstream filter rewrites each attempt (`upstream`).
"""

from __future__ import annotations

import functools
import json
import logging
import time
import uuid
from collections.abc import Coroutine
from typing import Any

from envoy.service.ext_proc.v3 import external_processor_pb2 as ep

from tollway_sidecar.cache import BadCacheHeader
from tollway_sidecar.contract.money import from_nano
from tollway_sidecar.extproc import (
    accounting,
    answer,
    cache_call,
    direct,
    dispatch,
    expiry_record,
    final_attempt,
    spans,
    stored_call,
    stream_cost,
)
from tollway_sidecar.extproc import messages as msg
from tollway_sidecar.extproc.state import Operation, RequestState, StoredCall
from tollway_sidecar.extproc.validation import BadRequest, parse_body, validate
from tollway_sidecar.pricing import format_usd
from tollway_sidecar.providers.adapters.base import KeepsResponses, Refused
from tollway_sidecar.providers.adapters.registry import adapter_for
from tollway_sidecar.providers.usage import ParsedStream
from tollway_sidecar.quota.decision import Denial
from tollway_sidecar.routing.plan import rewritten_by_router
from tollway_sidecar.runtime import Runtime, key_expired, model_allowed
from tollway_sidecar.xds import RID_HEADER, ROUTE_HEADER

log = logging.getLogger("tollway.router")

ENDPOINTS: dict[str, tuple[str, Operation]] = {
    "/v1/chat/completions": ("POST", "chat"),
    "/v1/embeddings": ("POST", "embeddings"),
    "/v1/models": ("GET", "models"),
    "/v1/messages": ("POST", "messages"),  # Anthropic clients; passed to anthropic backends as is
    "/v1/responses": ("POST", "responses"),  # OpenAI's Responses API (the SDK's `responses.create`)
}


def _cache_headers(headers: dict[str, str]) -> dict[str, str]:
    """The headers the cache policy reads (ours, Helicone's, Cache-Control)."""
    return {
        name: value
        for name, value in headers.items()
        if name == "cache-control" or name.startswith(("x-tollway-cache", "helicone-cache"))
    }


def _client_key(headers: dict[str, str]) -> str | None:
    auth = headers.get("authorization", "")
    scheme, _, token = auth.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    api_key = headers.get("x-api-key", "").strip()
    return api_key or None


class RouterCall:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.compiled = runtime.compiled  # one config version for the whole call
        self.state = RequestState(request_id=uuid.uuid4().hex)
        self.helicone_user: str | None = None
        self.anthropic_version: str | None = None  # a native Anthropic client's API version
        self.cache_headers: dict[str, str] = {}
        self.content_type = ""  # the answer's

    # -- request headers ------------------------------------------------------------------------

    def on_request_headers(
        self, message: ep.HttpHeaders
    ) -> ep.ProcessingResponse | Coroutine[Any, Any, ep.ProcessingResponse]:
        """The reply, or (for a call naming a stored response, looked up first) a coroutine of it."""
        headers = msg.headers_of(message)
        state = self.state
        spans.start_call(self.runtime.tracing, state, headers)
        state.envoy_request_id = headers.get("x-request-id", "")
        method = headers.get(":method", "")
        path, _, query = headers.get(":path", "").partition("?")
        # A trailing slash names the same endpoint: the call goes on under the path without it
        # (the path each attempt is built from), so no provider sees a path it does not serve.
        canonical = path.rstrip("/") or "/"
        state.path = canonical if canonical in ENDPOINTS else path
        endpoint = ENDPOINTS.get(canonical)
        stored = stored_call.parse(canonical, method) if endpoint is None else None
        if isinstance(stored, StoredCall):
            # A stored response's GET/DELETE: the query (`include`, `limit`, `after`…) is the backend's.
            state.path = canonical + (f"?{query}" if query else "")
            endpoint = (method, "responses")
        elif isinstance(stored, str):
            endpoint = (stored, "responses")
        if endpoint is None:
            return self._deny(
                404, f"Unknown request URL: {method} {path}.", "invalid_request_error", "unknown_url"
            )
        expected_method, operation = endpoint
        if method != expected_method:
            return self._deny(
                405,
                f"{path} expects {expected_method}, not {method}.",
                "invalid_request_error",
                "method_not_allowed",
            )
        state.operation = operation

        presented = _client_key(headers)
        if presented is None:
            return self._deny(
                401,
                "You didn't provide an API key. Send your Tollway key as "
                "'Authorization: Bearer <key>' (or 'x-api-key: <key>').",
                "invalid_request_error",
                "missing_api_key",
            )
        key = self.compiled.authenticate(presented)
        if key is None:
            return self._deny(
                401,
                "Incorrect API key provided. Use a key issued by this gateway.",
                "invalid_request_error",
                "invalid_api_key",
            )
        if key.disabled:
            return self._deny(
                401, f"The key '{key.name}' is disabled.", "invalid_request_error", "key_disabled"
            )
        if key_expired(key):
            expired = key.expires_at.isoformat() if key.expires_at else ""
            return self._deny(
                401, f"The key '{key.name}' expired at {expired}.", "invalid_request_error", "key_expired"
            )
        state.key = key
        spans.identified(state)
        # The end user: x-tollway-user, else the body's `user`, else Helicone-User-Id.
        state.end_user = headers.get("x-tollway-user") or None
        self.helicone_user = headers.get("helicone-user-id") or None
        if operation == "messages":
            self.anthropic_version = headers.get("anthropic-version") or None
        self.cache_headers = _cache_headers(headers)
        opt_in = headers.get(stream_cost.OPT_IN_HEADER, "")
        state.cost_comment = opt_in.strip().lower() == stream_cost.OPT_IN_VALUE

        if operation == "models":
            return self._list_models()
        if isinstance(stored, StoredCall):
            if not message.end_of_stream:  # the router filter would see it after its reply
                return self._deny(
                    400,
                    f"{method} {path} takes no request body.",
                    "invalid_request_error",
                    "unexpected_body",
                )
            return self._stored(stored)

        length = headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self.runtime.max_request_bytes:
            return self._request_too_large(int(length))
        encoding = headers.get("content-encoding", "").strip().lower()
        if encoding not in ("", "identity"):
            # The body is read as JSON and may be rewritten: a compressed one would be misread.
            return self._deny(
                415,
                f"The request body has 'content-encoding: {encoding[:40]}'; the gateway accepts only "
                "uncompressed JSON bodies (no content-encoding, or identity).",
                "invalid_request_error",
                "unsupported_content_encoding",
            )
        if message.end_of_stream:
            return self._deny(
                400, "The request body is empty; send a JSON object.", "invalid_request_error", "invalid_json"
            )
        return msg.continue_headers("request_headers")

    def _list_models(self) -> ep.ProcessingResponse:
        assert self.state.key is not None
        created = 0
        data = [
            {"id": route.model, "object": "model", "created": created, "owned_by": route.namespace}
            for route in self.compiled.models_for(self.state.key)
        ]
        body = json.dumps({"object": "list", "data": data}, separators=(",", ":")).encode()
        self.state.status = 200
        spans.finished(self.runtime.tracing, self.state)
        return msg.immediate(200, body, details="models")

    # -- stored responses -----------------------------------------------------------------------

    async def _find_stored(
        self, response_id: str, param: str | None
    ) -> stored_call.Pin | ep.ProcessingResponse:
        """The backend that stored `response_id` for this key, or the refusal to answer with."""
        assert self.state.key is not None
        found = await stored_call.find(self.runtime, self.compiled, self.state.key, response_id, param)
        if isinstance(found, stored_call.Refusal):
            return self._deny(found.status, found.message, found.error_type, found.code, param=found.param)
        return found

    async def _stored(self, call: StoredCall) -> ep.ProcessingResponse:
        """`GET`/`DELETE /v1/responses/{id}` (or `…/input_items`): no body follows (Envoy said
        end_of_stream), so the call is looked up, rewritten and sent on from here; nothing is
        reserved and it costs nothing."""
        state = self.state
        found = await self._find_stored(call.response_id, None)
        if isinstance(found, ep.ProcessingResponse):
            return found
        state.route, state.client_model, state.stored = found.route, found.route.model, call
        set_headers = stored_call.pin_headers(state, found)
        spans.admitted(self.runtime.tracing, state, {})
        credential = self.runtime.credentials.credential(found.backend)
        rewrite = direct.rewrite(self.runtime.tracing, state, found.backend, None, credential)
        set_headers.update(rewrite.set_headers)
        return msg.continue_headers(
            "request_headers", set_headers=set_headers, remove=rewrite.remove, clear_route_cache=True
        )

    def _stored_answer(self) -> ep.ProcessingResponse:
        """A stored response's answer, passed on unread; a delete that worked (or a backend that no
        longer knows the id) removes the record."""
        state = self.state
        if state.stored is not None and (
            state.status == 404 or (state.stored.method == "DELETE" and state.status < 300)
        ):
            stored_call.forget_soon(self.runtime, state)
        self._finish(None)
        info = answer.info_headers(state)
        info["x-tollway-cost-usd"] = format_usd(state.cost if state.cost is not None else from_nano(0))
        return msg.continue_headers(
            "response_headers", set_headers=info, mode_override=msg.response_body_mode("NONE")
        )

    # -- request body ---------------------------------------------------------------------------

    async def on_request_body(self, message: ep.HttpBody) -> ep.ProcessingResponse:
        state = self.state
        assert state.key is not None and state.operation is not None
        if len(message.body) > self.runtime.max_request_bytes:
            # A body sent without content-length: Envoy buffers up to the answer limit, not this one.
            return self._request_too_large(len(message.body))
        try:
            body = parse_body(message.body)
            model = validate(state.operation, body)
        except BadRequest as exc:
            return self._deny(400, exc.message, "invalid_request_error", exc.code, param=exc.param)
        state.client_model = model
        route = self.compiled.routes_by_model.get(model)
        if route is None:
            return self._deny(
                404,
                f"The model '{model}' does not exist or you do not have access to it.",
                "invalid_request_error",
                "model_not_found",
                param="model",
            )
        if not model_allowed(state.key, model):
            return self._deny(
                403,
                f"The key '{state.key.name}' is not allowed to use the model '{model}'.",
                "invalid_request_error",
                "model_not_allowed",
                param="model",
            )
        pinned: stored_call.Pin | None = None
        previous = body.get("previous_response_id") if state.operation == "responses" else None
        if isinstance(previous, str) and stored_call.keeps_responses(route):
            # Only the backend that stored the previous response can continue it: no fallback.
            found = await self._find_stored(previous, "previous_response_id")
            if isinstance(found, ep.ProcessingResponse):
                return found
            if found.route.id != route.id:
                return self._deny(
                    400,
                    f"The previous response '{previous}' was created with the model '{found.route.model}' "
                    f"(backend '{found.backend.name}'); continue it with that model, not '{model}'.",
                    "invalid_request_error",
                    "previous_response_on_another_route",
                    param="previous_response_id",
                )
            pinned = found
        # A pinned call reaches one backend: only its adapter need serve the request.
        refusal = dispatch.check(route, state.operation, body, None if pinned is None else (pinned.backend,))
        if refusal is not None:
            return self._deny(
                refusal.status, refusal.message, "invalid_request_error", refusal.code, param=refusal.param
            )
        state.route = route
        state.stream = bool(body.get("stream"))
        if state.end_user is None:
            user = body.get("user")
            state.end_user = user if isinstance(user, str) and user else self.helicone_user
        try:  # over the client's body, before the gateway asks for usage below
            state.cache = await cache_call.look_up(self.runtime, state, route, self.cache_headers, body)
        except BadCacheHeader as exc:
            return self._deny(
                400, str(exc), "invalid_request_error", "invalid_cache_header", param=exc.header
            )
        if state.cache is not None:
            if state.cache.entry is not None:
                return await self._answer_hit(state.cache, body)
            spans.cache_looked_up(
                state, state.cache.lookup.outcome, waited=state.cache.lookup.waited, saved_usd=None
            )

        if state.operation == "chat" and state.stream:
            options = body.get("stream_options") or {}
            if not options.get("include_usage"):
                # Ask the provider for usage; the parser removes that chunk again for the client.
                body["stream_options"] = {**options, "include_usage": True}
                state.strip_usage_chunk = True
        state.body = body
        admission = await self.runtime.quota.admit(
            key=state.key,
            budgets=self.compiled.budgets,
            route=route,
            prices=self.compiled.prices,
            operation=state.operation,
            body=body,
            user=state.end_user,
            rid=state.request_id,
            body_bytes=len(message.body),
            expiry_event=functools.partial(
                expiry_record.expiry_event_json, state, source=self.runtime.replica
            ),
        )
        if isinstance(admission, Denial):
            return self._refuse(admission)
        state.quota = admission
        spans.admitted(self.runtime.tracing, state, body)
        if state.stream and spans.capture_content(self.runtime.tracing, state):
            state.stream_text = spans.StreamText()
        set_headers = {ROUTE_HEADER: route.id}
        if pinned is None:
            set_headers.update(dispatch.route_headers(self.compiled, state, route, body, len(message.body)))
        else:
            set_headers.update(stored_call.pin_headers(state, pinned))
        remove: tuple[str, ...] = ("authorization", "x-api-key")
        by_router = rewritten_by_router(route) or pinned is not None
        if by_router:
            # One backend: rewrite the call here; its cluster has no upstream filter.
            try:
                backend = pinned.backend if pinned is not None else route.backends[0]
                rewrite = direct.rewrite(
                    self.runtime.tracing,
                    state,
                    backend,
                    self.anthropic_version,
                    self.runtime.credentials.credential(backend),
                )
            except Refused as exc:  # dispatch.check refuses these first; never expected
                return self._deny(exc.status, exc.message, "invalid_request_error", None, param=exc.param)
            set_headers.update(rewrite.set_headers)
            remove = rewrite.remove
            # The backend's body (renamed, translated), else ours if it asks for usage: encoded once.
            new_body = rewrite.body if rewrite.body is not None else self._usage_body()
        else:
            new_body = self._usage_body()
            state.body_length = len(new_body if new_body is not None else message.body)
            self.runtime.inflight.add(state)
            set_headers[RID_HEADER] = state.request_id
        if new_body is not None:
            set_headers["content-length"] = str(len(new_body))
        reply = msg.continue_body(
            "request_body", body=new_body, set_headers=set_headers, remove=remove, clear_route_cache=True
        )
        if not by_router:
            dispatch.attach_call_id(reply, state.request_id)
        return reply

    async def _answer_hit(self, call: cache_call.CacheCall, body: dict[str, Any]) -> ep.ProcessingResponse:
        """A cache hit: counted as a request (requests-per-minute), nothing reserved or charged; its
        settle tallies what it saved."""
        state = self.state
        assert state.key is not None and call.entry is not None
        admission = await self.runtime.quota.admit_hit(
            key=state.key,
            budgets=self.compiled.budgets,
            user=state.end_user,
            rid=state.request_id,
            saved_nano=call.saved_nano,
        )
        if isinstance(admission, Denial):
            return self._refuse(admission)
        state.quota = admission
        state.status = 200
        spans.admitted(self.runtime.tracing, state, body)
        saved = format_usd(from_nano(call.entry.cost_nano))
        spans.cache_looked_up(state, call.lookup.outcome, waited=call.lookup.waited, saved_usd=saved)
        self.runtime.metrics.saved(key=state.key.id, model=state.client_model, nano_usd=call.entry.cost_nano)
        reply = cache_call.hit_reply(call, state, body, answer.info_headers(state))
        self._finish(None)  # settles the request at zero, counts and ends the span
        return reply

    def _usage_body(self) -> bytes | None:
        """The client's body with the usage request added, or None when it was not changed."""
        if not self.state.strip_usage_chunk:
            return None
        return json.dumps(self.state.body, separators=(",", ":")).encode()

    # -- response headers -----------------------------------------------------------------------

    def on_response_headers(
        self,
        message: ep.HttpHeaders,
        final: tuple[str | None, int | None] = (None, None),
        details: str | None = None,
    ) -> ep.ProcessingResponse:
        state = self.state
        headers = msg.headers_of(message)
        state.status = int(headers.get(":status", "0") or 0)
        state.first_byte_at = time.monotonic()
        answer.note_final(state, self.compiled, final)
        final_attempt.record(self.runtime, state, headers, details)
        if state.stored is not None:
            return self._stored_answer()
        if state.route is not None and not message.end_of_stream and answer.choose_replacement(state):
            # An earlier attempt failed more usefully: its answer replaces this one (body phase).
            return msg.continue_headers("response_headers", mode_override=msg.response_body_mode("BUFFERED"))
        if message.end_of_stream and state.backend is not None and 200 <= state.status < 300:
            # A success without a body is no answer: a 502 naming the backend, charged the prompt.
            state.unpriced = accounting.BAD_BODY
            self._finish(None)
            return msg.immediate(502, answer.empty_answer(state), details="empty_upstream_body")
        if state.route is None or state.backend is None or message.end_of_stream:
            # An answer Envoy made itself (no backend was reached), or an empty body.
            if state.route is not None and not state.finished:
                self._finish(None)
            return msg.continue_headers("response_headers", mode_override=msg.response_body_mode("NONE"))
        content_type = self.content_type = headers.get("content-type", "")
        info = answer.info_headers(state)
        adapter = adapter_for(state.operation or "", state.backend.provider, state.backend.model)
        assert adapter is not None  # `dispatch.check` admits only backends with an adapter
        if adapter.is_stream(state.status, content_type):
            state.sse = adapter.stream(
                client_model=state.client_model, strip_usage_chunk=state.strip_usage_chunk
            )
            info.update(adapter.stream_headers())
            cache_call.start_stream(state)
            return msg.continue_headers(
                "response_headers", set_headers=info, mode_override=msg.response_body_mode("STREAMED")
            )
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > self.runtime.max_response_bytes:
            # Refused before Envoy buffers it: past its buffer limit Envoy was seen to stall the
            # call when the body arrived before this reply.
            return self._too_large()
        # JSON (or anything else): buffer it, so the cost can go into the headers.
        return msg.continue_headers("response_headers", mode_override=msg.response_body_mode("BUFFERED"))

    # -- response body --------------------------------------------------------------------------

    def on_response_body(self, message: ep.HttpBody) -> ep.ProcessingResponse:
        state = self.state
        if state.sse is not None:
            if state.first_chunk_at is None and message.body:
                state.first_chunk_at = time.monotonic()
            if state.stream_text is not None:
                state.stream_text.feed(message.body)
            replacement = state.sse.feed(message.body)
            if message.end_of_stream:
                owed = state.sse.flush()
                if owed:
                    replacement = (message.body if replacement is None else replacement) + owed
            if state.cache is not None and state.cache.stream_fill is not None:
                state.cache.stream_fill.feed(message.body if replacement is None else replacement)
            if (message.end_of_stream or state.sse.complete) and not state.finished:
                # Settle at the provider's last event ([DONE] / message_stop): the client may hang
                # up as soon as it has it, before Envoy reports the end of the stream.
                self._finish_stream()
                replacement = stream_cost.annotate(state, message.body, replacement)
            return msg.continue_body("response_body", body=replacement)
        # Buffered JSON: the whole body is here, and the headers have not left yet.
        if state.attempts.replacement is not None:
            body, set_headers, remove = answer.replacement_answer(state, answer.info_headers(state))
            self._finish(None)
            return msg.continue_body("response_body", body=body, set_headers=set_headers, remove=remove)
        assert state.backend is not None
        if len(message.body) > self.runtime.max_response_bytes:
            # Handed over whole past Envoy's buffer limit (it arrived before the headers' reply).
            return self._too_large()
        adapter = adapter_for(state.operation or "", state.backend.provider, state.backend.model)
        assert adapter is not None  # `dispatch.check` admits only backends with an adapter
        read = adapter.answer(state.status, self.content_type, message.body)  # the one parse
        if state.status == 200:
            stored_call.record_soon(self.runtime, state, read.response_id)
        state.response_model = read.model
        state.finish_reasons = read.finish_reasons
        if spans.capture_content(self.runtime.tracing, state):
            state.completion = read.text
        rewritten = answer.buffered_answer(state, read)
        if state.cache is not None and state.cache.lookup.fill is not None:  # what a hit replays
            state.cache.answer_body = message.body if rewritten is None else rewritten[0]
        if read.usage is None and state.status < 400:
            bad_body = read.bad_gateway is not None
            state.unpriced = accounting.BAD_BODY if bad_body else accounting.unpriced_reason(read.error)
            log.warning(
                "usage unknown for %s response from backend %s: %s",
                state.operation,
                state.backend.name,
                read.error,
            )
        self._finish(read.usage)
        info = answer.info_headers(state)
        if state.cost is not None:
            info["x-tollway-cost-usd"] = format_usd(state.cost)
        if state.attempt_log:
            state.attempt_log[-1].usage, state.attempt_log[-1].cost = state.usage, state.cost
        if rewritten is not None:
            body, headers = rewritten
            return msg.continue_body("response_body", body=body, set_headers={**info, **headers})
        return msg.continue_body("response_body", set_headers=info)

    def _request_too_large(self, length: int) -> ep.ProcessingResponse:
        return self._deny(
            413,
            f"Request body is {length} bytes; the gateway's limit is {self.runtime.max_request_bytes} bytes.",
            "invalid_request_error",
            "request_too_large",
        )

    def _too_large(self) -> ep.ProcessingResponse:
        """A 502 for an answer over the limit, charged as an answer whose usage was not read."""
        assert self.state.backend is not None
        log.warning(
            "answer from backend %s is over the size limit (request %s)",
            self.state.backend.name,
            self.state.envoy_request_id or "-",
        )
        self._finish(None)
        return answer.too_large(self.state, self.runtime.max_response_bytes)

    def _finish_stream(self) -> None:
        state = self.state
        assert state.sse is not None and state.backend is not None
        parsed = state.sse.finish()
        adapter = adapter_for(state.operation or "", state.backend.provider)
        if state.status == 200 and isinstance(adapter, KeepsResponses):
            stored_call.record_soon(self.runtime, state, adapter.stream_response_id(state.sse))
        state.response_model = parsed.model
        state.finish_reasons = tuple(parsed.finish_reasons)
        if state.stream_text is not None:
            state.completion = state.stream_text.text
        if parsed.usage is None and state.status < 400:
            state.unpriced = accounting.unpriced_reason(parsed.error, complete=parsed.complete)
        if parsed.usage is None or not parsed.complete:
            log.warning(
                "stream from backend %s ended %s; usage %s (%s)",
                state.backend.name,
                "complete" if parsed.complete else "early",
                "known" if parsed.usage else "unknown",
                parsed.error,
            )
        self._finish(parsed.usage, parsed)

    # -- accounting -----------------------------------------------------------------------------

    def _finish(self, usage: Any, stream: ParsedStream | None = None) -> None:
        """Price, settle, count and trace the call once; `stream` is what a streamed answer said."""
        accounting.finish(self.runtime, self.compiled, self.state, usage, stream)

    def on_stream_closed(self) -> None:
        """The ext_proc stream ended: settle whatever is still open (a client gone mid-stream)."""
        state = self.state
        self.runtime.inflight.discard(state.request_id)
        if state.route is not None and not state.finished and state.backend is not None:
            if state.sse is not None:
                self._finish_stream()
            else:
                if 200 <= state.status < 300:
                    state.unpriced = accounting.BODY_CUT  # headers came, the whole body never did
                self._finish(None)
        elif state.route is not None and not state.finished:
            self._finish(None)  # admitted, never sent upstream: settles the reservation at zero
        if state.span is not None:  # a call that ended before any answer (the client went away)
            spans.finished(self.runtime.tracing, state)
        cache_call.end(self.runtime, state)  # a fill not ended yet (the call never got accounted)

    def _refuse(self, denial: Denial) -> ep.ProcessingResponse:
        """The quota gate's refusal; one by a limit or budget (429, not a 503: the store is down)
        is a call with a usage event."""
        if denial.status == 429:
            accounting.refused(self.runtime, self.state, denial.status)
        return self._deny(
            denial.status, denial.message, denial.error_type, denial.code, headers=denial.headers
        )

    def _deny(
        self,
        status: int,
        message: str,
        error_type: str,
        code: str | None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> ep.ProcessingResponse:
        self.state.status = status
        self.runtime.metrics.denials.labels(code or error_type).inc()
        spans.denied(self.state, status, code, message)
        anthropic = self.state.path.rstrip("/") == "/v1/messages"
        return msg.error(
            status,
            message,
            error_type=error_type,
            code=code,
            param=param,
            anthropic=anthropic,
            headers=headers,
        )
