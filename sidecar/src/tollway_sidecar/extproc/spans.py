"""The trace of one call: what the router and upstream filters record on its spans, and when.

A SERVER span per call (started at the request headers, so denials are traced too) and a CLIENT span
per upstream attempt, following the OpenTelemetry GenAI conventions plus `tollway.*` attributes.
Never on a span: the client's key, a provider credential, or — unless content capture is on for the
route or globally — prompt and completion text (and then only after redaction).
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any

from opentelemetry.trace import Span

from tollway_sidecar.config.models import Backend
from tollway_sidecar.extproc.state import RequestState
from tollway_sidecar.pricing import format_usd
from tollway_sidecar.providers.attempts import Attempt
from tollway_sidecar.tracing import Tracing, set_error

GENAI_PROVIDER = {
    "openai": "openai",
    "openai-compatible": "openai",
    "azure-openai": "azure.ai.openai",
    "anthropic": "anthropic",
    "gemini": "gcp.gemini",
}
OPERATION = {
    "chat": "chat",
    "messages": "chat",
    "responses": "chat",
    "embeddings": "embeddings",
    "models": "list_models",
}
_REQUEST_PARAMS = {
    "max_tokens": "gen_ai.request.max_tokens",
    "max_completion_tokens": "gen_ai.request.max_tokens",
    "temperature": "gen_ai.request.temperature",
    "top_p": "gen_ai.request.top_p",
    "frequency_penalty": "gen_ai.request.frequency_penalty",
    "presence_penalty": "gen_ai.request.presence_penalty",
    "seed": "gen_ai.request.seed",
    "n": "gen_ai.request.choice.count",
}
_PROPERTY_PREFIXES = ("x-tollway-property-", "helicone-property-")


def start_call(tracing: Tracing, state: RequestState, headers: Mapping[str, str]) -> None:
    state.span = tracing.start_call(headers)
    state.session = headers.get("x-tollway-session") or headers.get("helicone-session-id") or None
    state.session_path = headers.get("x-tollway-session-path") or headers.get("helicone-session-path")
    state.session_name = headers.get("x-tollway-session-name") or headers.get("helicone-session-name")
    properties: dict[str, str] = {}
    for prefix in _PROPERTY_PREFIXES:  # Tollway's own headers win over Helicone's of the same name
        for name, value in headers.items():
            if name.startswith(prefix):
                properties.setdefault(name.removeprefix(prefix), value)
    state.properties = properties


def _recording(state: RequestState) -> Span | None:
    span = state.span
    return span if span is not None and span.is_recording() else None


def identified(state: RequestState) -> None:
    """The key is known: who is calling (the key's name, never the key)."""
    span = _recording(state)
    if span is None or state.key is None:
        return
    key = state.key
    span.set_attributes(
        {
            "tollway.key.name": key.name,
            "tollway.key.namespace": key.namespace,
            **({"tollway.owner.team": key.owner_team} if key.owner_team else {}),
            **({"tollway.owner.user": key.owner_user} if key.owner_user else {}),
            **({"tollway.session": state.session} if state.session else {}),
            **{f"tollway.property.{name}": value for name, value in state.properties.items()},
        }
    )


def admitted(tracing: Tracing, state: RequestState, body: Mapping[str, Any]) -> None:
    """The call passed every check: the request as GenAI attributes, and the prompt when captured."""
    span = _recording(state)
    if span is None or state.route is None or state.operation is None:
        return
    operation = OPERATION[state.operation]
    span.update_name(f"{operation} {state.client_model}")
    attributes: dict[str, Any] = {
        "gen_ai.operation.name": operation,
        "gen_ai.request.model": state.client_model,
        "gen_ai.provider.name": GENAI_PROVIDER.get(state.route.backends[0].provider, "openai"),
        "tollway.route": f"{state.route.namespace}/{state.route.name}",
        "tollway.route.strategy": state.route.strategy,
        "tollway.budget.decision": "admitted",
        "tollway.stream": state.stream,
    }
    if state.choice:
        attributes["tollway.route.choice"] = state.choice
    if state.end_user:
        attributes["tollway.end_user"] = state.end_user
    for field, name in _REQUEST_PARAMS.items():
        value = body.get(field)
        if isinstance(value, int | float) and not isinstance(value, bool):
            attributes[name] = value
    stop = body.get("stop")
    if isinstance(stop, str):
        attributes["gen_ai.request.stop_sequences"] = [stop]
    elif isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        attributes["gen_ai.request.stop_sequences"] = stop
    span.set_attributes(attributes)
    if capture_content(tracing, state):
        tracing.add_prompt_events(span, as_messages(body) if state.operation == "responses" else body)


def as_messages(body: Mapping[str, Any]) -> dict[str, Any]:
    """A Responses API request's prompt as messages: `instructions` the system message, `input`
    text the user's, or its items as they are."""
    items = body.get("input")
    messages: list[Any] = [{"role": "user", "content": items}] if isinstance(items, str) else []
    if isinstance(items, list):
        messages.extend(items)
    if isinstance(body.get("instructions"), str):
        messages.insert(0, {"role": "system", "content": body["instructions"]})
    return {"messages": messages}


def cache_looked_up(state: RequestState, outcome: str, *, waited: bool, saved_usd: str | None) -> None:
    """What the response cache did: its outcome, whether the call waited for another's fill, and on
    a hit what it saved."""
    span = _recording(state)
    if span is None:
        return
    attributes: dict[str, Any] = {"tollway.cache.outcome": outcome, "tollway.cache.waited": waited}
    if saved_usd is not None:
        attributes["tollway.cache.saved_usd"] = saved_usd
    span.set_attributes(attributes)


def capture_content(tracing: Tracing, state: RequestState) -> bool:
    route_setting = state.route.capture_content if state.route is not None else None
    return tracing.capture_content if route_setting is None else route_setting


def denied(state: RequestState, status: int, code: str | None, message: str) -> None:
    span = _recording(state)
    if span is None:
        return
    span.set_attributes(
        {
            "http.response.status_code": status,
            "tollway.denial.reason": code or "denied",
            "error.type": code or str(status),
        }
    )
    if code in ("budget_exceeded", "rate_limit_exceeded", "quota_store_unavailable"):
        span.set_attribute("tollway.budget.decision", "denied")
    set_error(span, message)
    span.end()
    state.span = None


def start_attempt(
    tracing: Tracing, state: RequestState, attempt: Attempt, backend: Backend
) -> dict[str, str]:
    """A CLIENT span for one upstream attempt; returns the `traceparent` header for the provider."""
    if _recording(state) is None or state.operation is None:
        return {}
    assert state.span is not None
    span = tracing.start_attempt(state.span, f"{OPERATION[state.operation]} {backend.model}")
    span.set_attributes(
        {
            "gen_ai.operation.name": OPERATION[state.operation],
            "gen_ai.provider.name": GENAI_PROVIDER.get(backend.provider, "openai"),
            "gen_ai.request.model": backend.model,
            "server.address": backend.host,
            "server.port": backend.port,
            "tollway.backend": backend.name,
            "tollway.attempt": attempt.number,
        }
    )
    attempt.span = span
    return tracing.traceparent(span)


def end_attempt(attempt: Attempt, outcome: str | None = None) -> None:
    span: Span | None = attempt.span
    if span is None:
        return
    attempt.span = None
    if attempt.status:
        span.set_attribute("http.response.status_code", attempt.status)
    if attempt.retry_after_s is not None:
        span.set_attribute("tollway.retry_after_s", attempt.retry_after_s)
    if attempt.status >= 400 or outcome:
        span.set_attribute("error.type", outcome or str(attempt.status))
        set_error(span, outcome or f"HTTP {attempt.status}")
    span.end()


def finished(tracing: Tracing, state: RequestState, completion: str | None = None) -> None:
    """The call is over: usage, cost, outcome; closes the attempt spans still open, then the call's."""
    for attempt in state.attempts.log:
        if attempt.span is not None:
            outcome = None if attempt.status else "no_response"
            if attempt is state.attempts.latest and attempt.usage is None and state.usage is not None:
                attempt.usage = state.usage
            if attempt.usage is not None:
                attempt.span.set_attributes(
                    {
                        "gen_ai.usage.input_tokens": attempt.usage.input_tokens,
                        "gen_ai.usage.output_tokens": attempt.usage.output_tokens,
                    }
                )
            end_attempt(attempt, outcome)
    span = _recording(state)
    if span is None:
        return
    attributes: dict[str, Any] = {
        "http.response.status_code": state.status,
        "tollway.attempts": max(state.attempts.count, len(state.attempts.log), 1 if state.backend else 0),
    }
    if state.backend is not None:
        attributes["tollway.backend"] = state.backend.name
        attributes["gen_ai.provider.name"] = GENAI_PROVIDER.get(state.backend.provider, "openai")
    if state.response_model:
        attributes["gen_ai.response.model"] = state.response_model
    usage = state.usage
    if usage is not None:
        attributes.update(
            {
                "gen_ai.usage.input_tokens": usage.input_tokens,
                "gen_ai.usage.output_tokens": usage.output_tokens,
                "gen_ai.usage.cache_read.input_tokens": usage.cache_read_tokens,
                "gen_ai.usage.reasoning.output_tokens": usage.reasoning_tokens,
            }
        )
    if state.finish_reasons:
        attributes["gen_ai.response.finish_reasons"] = list(state.finish_reasons)
    if state.cost is not None:
        attributes["tollway.cost_usd"] = format_usd(state.cost)
    if state.unpriced is not None:
        attributes["tollway.unpriced_reason"] = state.unpriced
    if state.first_chunk_at is not None:
        attributes["tollway.time_to_first_token_ms"] = round((state.first_chunk_at - state.started) * 1000, 3)
    attributes["tollway.duration_ms"] = round((time.monotonic() - state.started) * 1000, 3)
    span.set_attributes(attributes)
    if completion is not None and capture_content(tracing, state):
        reason = state.finish_reasons[0] if state.finish_reasons else None
        tracing.add_completion_event(span, completion, reason)
    if state.status >= 400 or state.status == 0:
        span.set_attribute("error.type", str(state.status or "no_response"))
        set_error(span, f"HTTP {state.status}" if state.status else "no response from any backend")
    span.end()
    state.span = None


def completion_text(body: bytes) -> str | None:
    """The first choice's text of a buffered OpenAI-shaped answer (for content capture only)."""
    try:
        payload = json.loads(body)
        content = payload["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError):
        return None
    return content if isinstance(content, str) else None


class StreamText:
    """Collects the streamed completion text, only when content capture is on."""

    def __init__(self) -> None:
        self._pending = b""
        self.parts: list[str] = []

    def feed(self, chunk: bytes) -> None:
        data = self._pending + chunk
        *events, self._pending = data.split(b"\n")
        for line in events:
            line = line.strip()
            if not line.startswith(b"data:") or line.endswith(b"[DONE]"):
                continue
            try:
                payload = json.loads(line[5:])
                delta = payload["choices"][0]["delta"].get("content")
            except (ValueError, KeyError, IndexError, TypeError, AttributeError):
                continue
            if isinstance(delta, str):
                self.parts.append(delta)

    @property
    def text(self) -> str:
        return "".join(self.parts)
