"""A capturing route's content for its usage event: the prompt and completion, redacted, bounded.

`pending` keeps references to the call's texts when it ends (no copying, no regex on the answer's
path); `content` redacts and bounds them in the settle's background task. Redaction runs before
the cut, so a secret straddling the bound cannot survive half-masked.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tollway_sidecar.contract.usage_event import Content, bounded_content
from tollway_sidecar.extproc import spans
from tollway_sidecar.extproc.state import RequestState
from tollway_sidecar.tracing import Redactor, Tracing

__all__ = ["PendingContent", "content", "pending", "prompt_messages"]


@dataclass(frozen=True, slots=True)
class PendingContent:
    """What the call said, not yet redacted: (role, text) per prompt message, and the answer."""

    messages: tuple[tuple[str, str], ...]
    completion: str
    retention_days: int
    redact: Redactor


def prompt_messages(operation: str | None, body: Mapping[str, Any] | None) -> tuple[tuple[str, str], ...]:
    """The prompt as (role, text), in order, read the way the spans read it."""
    if body is None:
        return ()
    if operation == "responses":
        body = spans.as_messages(body)
    elif operation == "messages" and isinstance(body.get("system"), str | list):
        body = {"messages": [{"role": "system", "content": body["system"]}, *(body.get("messages") or ())]}
    elif operation == "embeddings":
        body = {"messages": [{"role": "input", "content": body.get("input")}]}
    found = []
    for message in body.get("messages") or ():
        if not isinstance(message, Mapping):
            continue
        value = message.get("content")
        text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
        found.append((str(message.get("role", "user")), text))
    return tuple(found)


def pending(tracing: Tracing, state: RequestState) -> PendingContent | None:
    """The call's content when its route captures it, else None (the event then has no content)."""
    if state.route is None or not spans.capture_content(tracing, state):
        return None
    return PendingContent(
        messages=prompt_messages(state.operation, state.body),
        completion=state.completion or "",
        retention_days=state.route.content_retention_days,
        redact=tracing.redact,
    )


def content(captured: PendingContent) -> Content:
    """The event's `data.content`: each message redacted (as on the spans), then bounded."""
    prompt = "\n\n".join(f"{role}: {captured.redact(text)}" for role, text in captured.messages)
    return Content(
        prompt=bounded_content(_storable(prompt)),
        completion=bounded_content(_storable(captured.redact(captured.completion))),
        retention_days=captured.retention_days,
    )


def _storable(text: str) -> str:
    """No NUL and no lone surrogate (the contract refuses both; a client may send either)."""
    if text.isascii() and "\x00" not in text:
        return text
    return text.replace("\x00", "").encode("utf-8", "replace").decode("utf-8")
