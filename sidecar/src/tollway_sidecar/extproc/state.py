"""What the sidecar knows about one client call while Envoy processes it."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Literal

from tollway_sidecar.config.models import Backend, Route, VirtualKey
from tollway_sidecar.extproc.attempts import CallAttempts
from tollway_sidecar.providers.adapters.base import StreamReader
from tollway_sidecar.providers.attempts import Attempt
from tollway_sidecar.providers.usage import TokenUsage
from tollway_sidecar.quota.gate import Admission

if TYPE_CHECKING:
    from tollway_sidecar.extproc.cache_call import CacheCall

Operation = Literal["chat", "embeddings", "models", "messages", "responses"]


@dataclass(frozen=True, slots=True)
class StoredCall:
    """A call naming a stored response (`GET`/`DELETE /v1/responses/{id}`, `…/input_items`)."""

    method: str
    response_id: str


@dataclass
class RequestState:
    request_id: str
    started: float = field(default_factory=time.monotonic)
    envoy_request_id: str = ""
    operation: Operation | None = None
    path: str = ""
    key: VirtualKey | None = None
    end_user: str | None = None
    route: Route | None = None
    client_model: str = ""
    stream: bool = False
    strip_usage_chunk: bool = False
    cost_comment: bool = False  # the client asked for the stream's cost as a final SSE comment
    body: dict[str, Any] | None = None
    body_length: int = 0  # bytes of the body each upstream attempt starts from (after our rewrite)
    attempts: CallAttempts = field(default_factory=CallAttempts)  # every try, and which answered
    status: int = 0
    sse: StreamReader | None = None  # the streamed answer's reader (its adapter's `stream`)
    usage: TokenUsage | None = None
    cost: Decimal | None = None
    response_model: str | None = None
    finished: bool = False
    first_byte_at: float | None = None
    unpriced: str | None = None  # why a success had no readable usage (`accounting.unpriced_reason`)
    quota: Admission | None = None  # what the call reserved; None before admission
    cache: CacheCall | None = None  # what the response cache did (`cache_call.look_up`)
    stored: StoredCall | None = None  # a stored response's retrieve or delete: unpriced, unreserved
    # Routing and fallback
    cluster: str = ""  # the Envoy cluster (backend order) chosen for this call
    order: tuple[str, ...] = ()  # backend names in the order they will be tried
    choice: str = ""  # why: priority, weighted, sticky, cost
    deadline: float = 0.0  # monotonic; a retry-after that ends later is not waited for
    # Tracing and metrics
    span: Any = None  # the call's SERVER span (opentelemetry Span), None once ended
    session: str | None = None  # x-tollway-session
    session_path: str | None = None  # x-tollway-session-path
    session_name: str | None = None  # x-tollway-session-name
    properties: dict[str, str] = field(default_factory=dict)  # x-tollway-property-<name>
    first_chunk_at: float | None = None  # monotonic; the first streamed body chunk
    finish_reasons: tuple[str, ...] = ()
    completion: str | None = None  # the answer's text, kept only when content capture is on
    stream_text: Any = None  # spans.StreamText while capturing a streamed answer

    @property
    def backend(self) -> Backend | None:
        """The backend of the latest attempt (the final one's, once Envoy said)."""
        return self.attempts.backend

    @backend.setter
    def backend(self, backend: Backend | None) -> None:
        self.attempts.restore_backend(backend)

    @property
    def attempt_log(self) -> list[Attempt]:
        return self.attempts.log

    @attempt_log.setter
    def attempt_log(self, log: list[Attempt]) -> None:
        self.attempts.restore_log(log)
