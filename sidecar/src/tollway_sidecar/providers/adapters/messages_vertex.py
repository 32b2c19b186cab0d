"""Anthropic `/v1/messages` clients → Claude on Google Vertex AI: a near passthrough.

The client's Messages body goes to `:rawPredict` (`:streamRawPredict` for a stream) without `model`
(Vertex reads it from the path) and with `anthropic_version: vertex-2023-10-16` in the body, where
Vertex wants it instead of the header; `Authorization: Bearer` carries the refreshed access token.
Answers and streams are Anthropic's own and pass through unchanged, read for usage.

Vertex itself (not Claude) words some failures (a bad token, a quota, an unknown model) in Google's
error shape: those reach the client in Anthropic's (`error_body`).

A Vertex backend serving a Gemini model is `messages_gemini.MessagesGemini`'s (`registry.adapter_for`).
"""

from __future__ import annotations

import json
from typing import ClassVar

from tollway_sidecar.providers.adapters.anthropic import AnthropicMessages
from tollway_sidecar.providers.adapters.base import AttemptRequest, ClientAnswer, UpstreamRequest
from tollway_sidecar.providers.adapters.chat_vertex import bearer, claude_body, claude_path
from tollway_sidecar.providers.errors import anthropic_error_body

__all__ = ["MessagesVertex"]


class MessagesVertex(AnthropicMessages):
    """The adapter for (`messages`, `vertex`) on a `claude-*` model."""

    credential_headers: ClassVar[tuple[str, ...]] = ("authorization",)

    def request(self, attempt: AttemptRequest) -> UpstreamRequest:
        body = json.dumps(claude_body(attempt.body or {}), separators=(",", ":"), ensure_ascii=False)
        headers = {"content-type": "application/json", **bearer(attempt)}
        return UpstreamRequest(path=claude_path(attempt), set_headers=headers, body=body.encode())

    def answer(self, status: int, content_type: str, body: bytes) -> ClientAnswer:
        if status >= 400:
            out, ct = self.error_body(status, body)
            if ct:  # a Google-shaped error, reworded
                return ClientAnswer(out, ct, None, error=f"Vertex answered {status}")
        return super().answer(status, content_type, body)

    def error_body(self, status: int, body: bytes) -> tuple[bytes, str]:
        try:
            parsed = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            return body, ""
        error = parsed.get("error") if isinstance(parsed, dict) else None
        if isinstance(error, dict) and "status" in error and parsed.get("type") != "error":
            return anthropic_error_body(status, str(error.get("message") or "")), "application/json"
        return body, ""  # Claude's own errors are Anthropic's already
