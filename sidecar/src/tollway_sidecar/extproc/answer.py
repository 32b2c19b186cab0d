"""The router filter's response side for fallbacks and translation: what the client finally receives.

- Which attempt answered: Envoy's response attributes name the final backend and attempt count
  (a connection that failed fast never reached the upstream filter, so only Envoy knows for sure).
- The most useful failure: when the final answer is a failure and an earlier attempt failed in a way
  the client can act on better (`providers.attempts.error_rank`), or when the upstream filter ended
  the call rather than wait past its deadline, that attempt's status, body and `retry-after` are
  sent instead.
- The answer itself is the backend's adapter's (`providers.adapters`): read once for its usage, and
  translated when the backend speaks another API than the client (a failed attempt's error body
  too, `Adapter.error_body`).
- Garbage: a 2xx answer whose body is not what the client asked for (not JSON, or no body at all)
  becomes a 502 naming the backend (in the client's API's error shape). An answer that is JSON but
  unexpected (no usage, invalid usage) is still passed on unchanged.
"""

from __future__ import annotations

from tollway_sidecar.extproc import messages as msg
from tollway_sidecar.extproc.state import RequestState
from tollway_sidecar.providers.adapters.base import ClientAnswer
from tollway_sidecar.providers.adapters.registry import adapter_for
from tollway_sidecar.providers.attempts import Attempt
from tollway_sidecar.providers.errors import anthropic_error_body, openai_error_body
from tollway_sidecar.runtime import CompiledConfig

__all__ = [
    "buffered_answer",
    "choose_replacement",
    "empty_answer",
    "info_headers",
    "note_final",
    "replacement_answer",
    "too_large",
]

_JSON = "application/json"


def note_final(state: RequestState, compiled: CompiledConfig, final: tuple[str | None, int | None]) -> None:
    name, count = final
    backend = None
    if state.route is not None and name is not None:
        backend = compiled.backends.get((state.route.id, name))
    state.attempts.final(backend, count)


def info_headers(state: RequestState) -> dict[str, str]:
    """The headers telling the client which route, backend and attempt answered, and its quota."""
    headers = {"x-tollway-attempts": str(state.attempts.reported)}
    if state.backend is not None:
        headers["x-tollway-backend"] = state.backend.name
    if state.route is not None:
        headers["x-tollway-route"] = f"{state.route.namespace}/{state.route.name}"
    if state.quota is not None:
        headers.update(state.quota.headers)  # x-ratelimit-*
    if state.cache is not None:
        headers.update(state.cache.headers)  # x-tollway-cache (and helicone-cache)
    return headers


def choose_replacement(state: RequestState) -> Attempt | None:
    """The failed attempt to answer with instead of the final answer, if any."""
    return state.attempts.choose_replacement(state.status)


def _error_body(state: RequestState, status: int, message: str, kind: str, code: str) -> bytes:
    if state.operation == "messages":
        return anthropic_error_body(status, message)
    return openai_error_body(message, kind, code)


def replacement_answer(state: RequestState, info: dict[str, str]) -> tuple[bytes, dict[str, str], list[str]]:
    """(body, headers to set, headers to remove) answering with `state.replacement`."""
    chosen = state.attempts.replacement
    assert chosen is not None and chosen.error_body is not None
    body, content_type = chosen.error_body, ""
    assert state.operation is not None
    adapter = adapter_for(state.operation, chosen.provider, chosen.model)
    if adapter is not None:
        body, content_type = adapter.error_body(chosen.status, body)
    content_type = content_type or chosen.content_type or _JSON
    headers = {
        **info,
        ":status": str(chosen.status),
        "content-type": content_type,
        "content-length": str(len(body)),
        "x-tollway-backend": chosen.backend,
    }
    remove = []
    if chosen.retry_after_s is not None:
        headers["retry-after"] = str(max(0, round(chosen.retry_after_s)))
    else:
        remove.append("retry-after")
    return body, headers, remove


def empty_answer(state: RequestState) -> bytes:
    """The 502 body for a 2xx answer that came without any body: nothing to pass on or price."""
    assert state.backend is not None
    message = (
        f"Backend '{state.backend.name}' answered {state.status} with an empty body; "
        "the gateway cannot pass it on as an API response."
    )
    return _error_body(state, 502, message, "api_error", "bad_gateway")


def too_large(state: RequestState, limit: int) -> msg.ProcessingResponse:
    """A 502 for an answer over the gateway's limit (the same as Envoy's own, mapped)."""
    message = (
        f"The backend's answer is larger than the gateway's limit of {limit} bytes for a "
        "non-streamed answer; ask for less (fewer inputs, fewer dimensions, base64 embeddings) "
        "or stream it."
    )
    body = _error_body(state, 502, message, "api_error", "response_too_large")
    return msg.immediate(502, body, headers=info_headers(state), details="tollway_response_too_large")


def buffered_answer(state: RequestState, read: ClientAnswer) -> tuple[bytes, dict[str, str]] | None:
    """The body and headers to send for an adapter's reading of a whole answer; None: pass it on."""
    if read.bad_gateway is not None:
        assert state.backend is not None
        message = f"Backend '{state.backend.name}' {read.bad_gateway.message}"
        out = _error_body(state, 502, message, "api_error", "bad_gateway")
        return out, {":status": "502", "content-type": _JSON, "content-length": str(len(out))}
    if read.body is None:
        return None
    return read.body, {"content-type": read.content_type or _JSON, "content-length": str(len(read.body))}
