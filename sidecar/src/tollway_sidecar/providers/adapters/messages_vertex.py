"""Anthropic `/v1/messages` clients → Claude on Google Vertex AI: a near passthrough.

The client's Messages body goes to `:rawPredict` (`:streamRawPredict` for a stream) without `model`
(Vertex reads it from the path) and with `anthropic_version: vertex-2023-10-16` in the body, where
Vertex wants it instead of the header; `Authorization: Bearer` carries the refreshed access token.
Answers and streams are Anthropic's own and pass through unchanged, read for usage.

A Vertex backend serving a Gemini model has no adapter for messages clients
(`registry.adapter_for`): the router refuses such a call with a 400 naming the route's backends.
"""

from __future__ import annotations

import json
from typing import ClassVar

from tollway_sidecar.providers.adapters.anthropic import AnthropicMessages
from tollway_sidecar.providers.adapters.base import AttemptRequest, UpstreamRequest
from tollway_sidecar.providers.adapters.chat_vertex import bearer, claude_body, claude_path

__all__ = ["MessagesVertex"]


class MessagesVertex(AnthropicMessages):
    """The adapter for (`messages`, `vertex`) on a `claude-*` model."""

    credential_headers: ClassVar[tuple[str, ...]] = ("authorization",)

    def request(self, attempt: AttemptRequest) -> UpstreamRequest:
        body = json.dumps(claude_body(attempt.body or {}), separators=(",", ":"), ensure_ascii=False)
        headers = {"content-type": "application/json", **bearer(attempt)}
        return UpstreamRequest(path=claude_path(attempt), set_headers=headers, body=body.encode())
