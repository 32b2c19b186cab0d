"""What one upstream attempt ended with, and which failed attempt the client should hear about. Pure.

When every backend fails, the client gets the failure it can act on best: a provider's
authentication or permission error (401/403: fix a credential) before a request error (another
4xx: fix the call) before a rate limit (429: wait `retry-after`) before a server error or a transport
failure (5xx, reset, timeout: nothing to do but try later). Within one rank the earliest attempt
wins: it is the preferred backend's answer.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from decimal import Decimal
from email.utils import parsedate_to_datetime
from typing import Any, Final

from tollway_sidecar.providers.usage import TokenUsage

__all__ = ["MAX_ERROR_BODY", "Attempt", "error_rank", "most_useful", "retry_after_seconds"]

MAX_ERROR_BODY: Final = 64 * 1024  # error bodies kept for the final answer; larger ones are not


@dataclass
class Attempt:
    """One try on one backend. `status` 0: no answer (refused, reset or timed out)."""

    number: int  # Envoy's attempt count, from 1
    backend: str
    provider: str
    started: float
    status: int = 0
    ended: float | None = None
    retry_after_s: float | None = None  # what the provider asked, in seconds
    retry_at: float | None = None  # monotonic time it asked us to wait until
    content_type: str = ""
    error_body: bytes | None = None
    usage: TokenUsage | None = None
    cost: Decimal | None = None
    span: Any = None  # its CLIENT span while open (opentelemetry Span)
    model: str = ""  # the backend's model: with `provider`, which adapter words its errors

    def answered(self, headers: dict[str, str], now: float) -> None:
        """Its answer's status, content type and any `retry-after`, read from the response headers."""
        self.status = int(headers.get(":status", "0") or 0)
        self.content_type = headers.get("content-type", "")
        waited = retry_after_seconds(headers)
        if waited is not None:
            self.retry_after_s = waited
            self.retry_at = now + waited

    @property
    def failed(self) -> bool:
        return self.status == 0 or self.status >= 400


def error_rank(status: int) -> int:
    """Lower is more useful to the client."""
    if status in (401, 403):
        return 0
    if 400 <= status < 500 and status not in (408, 429):
        return 1
    if status == 429:
        return 2
    return 3


def most_useful(attempts: list[Attempt]) -> Attempt | None:
    """The failed attempt with an answer to show, by rank then order; None if none answered."""
    answered = [a for a in attempts if a.status >= 400 and a.error_body is not None]
    if not answered:
        return None
    return min(answered, key=lambda a: (error_rank(a.status), a.number))


def retry_after_seconds(headers: dict[str, str], now: float | None = None) -> float | None:
    """What a provider asks: `retry-after-ms`, else `retry-after` (seconds or an HTTP date)."""
    raw_ms = headers.get("retry-after-ms", "").strip()
    if raw_ms:
        try:
            value = float(raw_ms) / 1000
        except ValueError:
            value = -1
        if value >= 0:
            return value
    raw = headers.get("retry-after", "").strip()
    if not raw:
        return None
    try:
        seconds = float(raw)
    except ValueError:
        try:
            when = parsedate_to_datetime(raw)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - (now if now is not None else time.time())
    return max(0.0, seconds) if seconds == seconds else None  # NaN is not a wait
