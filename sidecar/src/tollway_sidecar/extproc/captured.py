"""A capturing route's content for its usage event: the prompt and completion, redacted, bounded.

`pending` keeps references to the call's request body and answer text when it ends (no copying,
no parsing, no regex on the answer's path); `content` reads, redacts and bounds them in the settle's
background task (the finished call's body is no longer changed). Redaction runs before
the cut, so a secret straddling the bound cannot survive half-masked.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tollway_sidecar.contract.usage_event import MAX_CONTENT_TEXT, TRUNCATED, Content, bounded_content
from tollway_sidecar.extproc import spans
from tollway_sidecar.extproc.state import RequestState
from tollway_sidecar.tracing import Redactor, Tracing

__all__ = ["PendingContent", "content", "pending", "prompt_messages"]


@dataclass(frozen=True, slots=True)
class PendingContent:
    """What the call said, not yet read or redacted: its request body and the answer's text."""

    operation: str | None
    body: Mapping[str, Any] | None
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
        operation=state.operation,
        body=state.body,
        completion=state.completion or "",
        retention_days=state.route.content_retention_days,
        redact=tracing.redact,
    )


def content(captured: PendingContent) -> Content:
    """The event's `data.content`: the prompt and the answer redacted (the spans' `Redactor`), then
    bounded."""
    messages = prompt_messages(captured.operation, captured.body)
    prompt = "\n\n".join(f"{role}: {text}" for role, text in messages)
    return Content(
        prompt=_redacted(prompt, captured.redact),
        completion=_redacted(captured.completion, captured.redact),
        retention_days=captured.retention_days,
    )


# Only this much of a text is redacted: what lies beyond could never reach the kept window, and a
# 10 MiB prompt then costs the settle's task no more than a 64 KiB one.
_READ = 4 * MAX_CONTENT_TEXT


def _redacted(text: str, redact: Redactor) -> str:
    clean = redact(_storable(text[:_READ]))
    if len(text) > _READ:
        return clean[: MAX_CONTENT_TEXT - len(TRUNCATED)] + TRUNCATED
    return bounded_content(clean)


def _storable(text: str) -> str:
    """No NUL and no lone surrogate (the contract refuses both; a client may send either)."""
    if text.isascii() and "\x00" not in text:
        return text
    return text.replace("\x00", "").encode("utf-8", "replace").decode("utf-8")
