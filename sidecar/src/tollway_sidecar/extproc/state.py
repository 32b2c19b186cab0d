"""What the sidecar knows about one client call while Envoy processes it."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Literal

from tollway_sidecar.config.models import Backend, Route, VirtualKey
from tollway_sidecar.providers.usage import SseParser, TokenUsage

Operation = Literal["chat", "embeddings", "models"]


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
    body: dict[str, Any] | None = None
    backend: Backend | None = None  # the backend of the latest attempt
    attempts: int = 0
    status: int = 0
    sse: SseParser | None = None
    usage: TokenUsage | None = None
    cost: Decimal | None = None
    response_model: str | None = None
    finished: bool = False
    first_byte_at: float | None = None
