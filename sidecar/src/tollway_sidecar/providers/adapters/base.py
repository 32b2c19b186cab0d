"""The seam between the request path and the providers: one adapter per (client API, backend API).

An adapter knows everything about one pair — how an attempt's request is rewritten for the backend
(path, headers, credentials, body) and how the backend's answer becomes what the client receives,
with the tokens and the model read in the same pass — and nothing about Envoy, quotas or spans.
`extproc/` asks `registry.adapter_for(operation, provider)` and never looks at a provider name.

Pure: no I/O, no clock reads except through `now` arguments, no logging; nothing here raises on any
bytes a backend sends (what could not be read is reported in `error` fields).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, runtime_checkable

from tollway_sidecar.config.models import Backend
from tollway_sidecar.providers.usage import ParsedStream, TokenUsage

__all__ = [
    "Adapter",
    "AttemptRequest",
    "BadGateway",
    "ClientAnswer",
    "KeepsResponses",
    "Refused",
    "StreamReader",
    "UpstreamRequest",
    "translated",
    "untranslatable",
]


class Refused(Exception):
    """The client's request cannot be expressed for this backend: a 400 naming the field."""

    def __init__(
        self,
        message: str,
        param: str | None = None,
        *,
        status: int = 400,
        code: str = "unsupported_parameter",
    ) -> None:
        super().__init__(message)
        self.message, self.param, self.status, self.code = message, param, status, code


@dataclass(frozen=True, slots=True)
class AttemptRequest:
    """What an adapter is given to rewrite one attempt.

    `body` is the client's parsed JSON body (after the gateway's own additions such as
    `stream_options.include_usage`); `raw` its bytes as they would be sent unchanged. `credential`
    is the backend's current secret (an API key, a refreshed access token, or the serialized
    credentials an adapter documents); `now` is wall-clock seconds, for request signing.
    """

    backend: Backend
    client_path: str  # the client's path and query, canonical (`/v1/chat/completions?…`)
    client_headers: Mapping[str, str]  # lower-cased; the client's own credentials already removed
    body: dict[str, Any] | None
    raw: bytes | None
    credential: str | None
    now: float
    stream: bool


@dataclass(frozen=True, slots=True)
class UpstreamRequest:
    """One attempt as the backend wants it. `body` None: send the client's bytes unchanged."""

    path: str
    set_headers: dict[str, str] = field(default_factory=dict)
    remove: tuple[str, ...] = ()
    body: bytes | None = None


@dataclass(frozen=True, slots=True)
class BadGateway:
    """A 2xx answer that cannot be what the client asked for: answered as a 502 naming the backend."""

    message: str


@dataclass(frozen=True, slots=True)
class ClientAnswer:
    """A whole (buffered) answer, read once.

    `body` None: forward the backend's bytes unchanged; else send these with `content_type`.
    `usage` None: `error` says why. `text` is the first choice's text, for content capture.
    `response_id` is the id a backend that keeps its answers stored this one under (`KeepsResponses`).
    """

    body: bytes | None
    content_type: str | None
    usage: TokenUsage | None
    model: str | None = None
    finish_reasons: tuple[str, ...] = ()
    error: str | None = None
    bad_gateway: BadGateway | None = None
    text: str | None = None
    response_id: str | None = None


def translated(
    obj: dict[str, Any],
    usage: TokenUsage | str,
    *,
    finish_reason: str,
    text: str | None,
    model: str | None = None,
) -> ClientAnswer:
    """A backend's answer written in the client's API: `obj` as its JSON body, with the usage read
    from the backend's (or, a str, why there is none)."""
    return ClientAnswer(
        body=json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode(),
        content_type="application/json",
        usage=usage if isinstance(usage, TokenUsage) else None,
        model=model,
        finish_reasons=(finish_reason,),
        error=None if isinstance(usage, TokenUsage) else usage,
        text=text,
    )


def untranslatable(status: int, api: str) -> ClientAnswer:
    """The 502 for JSON that is not the `api` answer the backend should have sent."""
    # The router puts "Backend '<name>' " in front, as for every adapter.
    reason = f"answered {status} with JSON that is not a {api} response; the gateway cannot translate it."
    return ClientAnswer(None, None, None, error=reason, bad_gateway=BadGateway(reason))


class StreamReader(Protocol):
    """One streamed answer, read as it passes, chunk by chunk (the `SseParser` contract).

    `feed` returns the bytes to send the client in place of the chunk (None: unchanged; may be
    empty while an event is incomplete); `flush` what is still owed at the end; `complete` is True
    once the backend's end marker was read, so `finish` may be called before the transport ends.
    """

    @property
    def complete(self) -> bool: ...

    def feed(self, chunk: bytes) -> bytes | None: ...

    def flush(self) -> bytes: ...

    def finish(self) -> ParsedStream: ...


class Adapter(Protocol):
    """One (client API, backend API) pair. Implementations are stateless; per-call state lives in
    the `StreamReader` they return."""

    # Every header this adapter may set on an attempt: each attempt sets or removes the union of
    # every adapter's, because Envoy keeps an earlier attempt's header mutations on a retry.
    credential_headers: ClassVar[tuple[str, ...]]

    def check(self, body: dict[str, Any]) -> Refused | None:
        """Whether this backend can serve the request at all (checked once, before admission)."""
        ...

    def request(self, attempt: AttemptRequest) -> UpstreamRequest:
        """Rewrite one attempt. Raises `Refused` only for what `check` lets through by design."""
        ...

    def is_stream(self, status: int, content_type: str) -> bool:
        """Whether this answer is read chunk by chunk (`stream`), else buffered (`answer`)."""
        ...

    def stream_headers(self) -> dict[str, str]:
        """Headers to set on a streamed answer (e.g. `content-type: text/event-stream` for a
        backend whose stream has another framing); empty when the backend's are right."""
        ...

    def answer(self, status: int, content_type: str, body: bytes) -> ClientAnswer:
        """A whole answer (success or error) as the client receives it, with its usage."""
        ...

    def stream(
        self,
        *,
        client_model: str,
        strip_usage_chunk: bool,
        on_event: Callable[[bytes | None, bytes], None] | None = None,
    ) -> StreamReader:
        """A reader for one streamed success answer. `on_event(name, data)`, when given, is called
        with every client-bound SSE event (the response cache replays them)."""
        ...

    def error_body(self, status: int, body: bytes) -> tuple[bytes, str]:
        """A failed attempt's error body as the client's API shapes errors: (body, content type)."""
        ...


@runtime_checkable
class KeepsResponses(Protocol):
    """An adapter whose backend stores the Responses it answers (passed through, not translated).

    Its `request` also rewrites the calls that name a stored response: `GET`/`DELETE
    /v1/responses/{id}` and `GET /v1/responses/{id}/input_items` (body None), which only the backend
    that stored it can answer, as `previous_response_id` can only be resolved there.
    """

    def stream_response_id(self, reader: StreamReader) -> str | None:
        """The id of the response a stream read by `reader` (this adapter's `stream`) created."""
        ...
