"""Chat completions and embeddings to an OpenAI-shaped API: passed through, `model` renamed.

- `openai`, `openai-compatible`, `gemini` (its OpenAI-compatible endpoint): the backend's base path
  + the client path without `/v1` (query kept); `Authorization: Bearer`.
- `azure-openai`: the deployment URL + `/chat/completions` (or `/embeddings`) `?api-version=…`;
  `api-key`. Azure reads the deployment from the path; `model` is renamed all the same.

Answers come back in the client's own API: bodies and streams are read for usage, never rewritten
(except the usage-only chunk the gateway asked for, `SseParser`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, ClassVar
from urllib.parse import quote

from tollway_sidecar.providers.adapters.base import (
    AttemptRequest,
    BadGateway,
    ClientAnswer,
    Refused,
    StreamReader,
    UpstreamRequest,
)
from tollway_sidecar.providers.usage import SseParser, read_json

__all__ = ["AzureOpenAI", "OpenAICompatible", "is_sse", "not_json", "renamed"]


def renamed(attempt: AttemptRequest) -> bytes | None:
    """The client's body with `model` set to the backend's, or None when it already is."""
    body = attempt.body
    if body is None or body.get("model") == attempt.backend.model:
        return None
    return json.dumps({**body, "model": attempt.backend.model}, separators=(",", ":")).encode()


def is_sse(content_type: str) -> bool:
    return "text/event-stream" in content_type


def not_json(status: int) -> BadGateway:
    return BadGateway(
        f"answered {status} with a body that is not JSON; the gateway cannot pass it on as an API response."
    )


def first_choice_text(obj: Any) -> str | None:
    """The first choice's text of an OpenAI `chat.completion` (for content capture)."""
    try:
        content = obj["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        return None
    return content if isinstance(content, str) else None


class OpenAICompatible:
    """chat / embeddings → `openai`, `openai-compatible`, `gemini`."""

    credential_headers: ClassVar[tuple[str, ...]] = ("authorization",)

    def check(self, body: dict[str, Any]) -> Refused | None:
        return None

    def request(self, attempt: AttemptRequest) -> UpstreamRequest:
        path, _, query = attempt.client_path.partition("?")
        upstream_path = attempt.backend.path_prefix + path.removeprefix("/v1")
        if query:
            upstream_path += "?" + query
        headers = {"authorization": f"Bearer {attempt.credential}"} if attempt.credential else {}
        return UpstreamRequest(path=upstream_path, set_headers=headers, body=renamed(attempt))

    def is_stream(self, status: int, content_type: str) -> bool:
        return is_sse(content_type)

    def stream_headers(self) -> dict[str, str]:
        return {}

    def answer(self, status: int, content_type: str, body: bytes) -> ClientAnswer:
        obj, parsed = read_json(False, body)
        if status < 300 and not isinstance(obj, dict):
            return ClientAnswer(None, None, None, error=parsed.error, bad_gateway=not_json(status))
        return ClientAnswer(
            None,
            None,
            parsed.usage,
            parsed.model,
            parsed.finish_reasons,
            parsed.error,
            text=first_choice_text(obj),
        )

    def stream(
        self,
        *,
        client_model: str,
        strip_usage_chunk: bool,
        on_event: Callable[[bytes | None, bytes], None] | None = None,
    ) -> StreamReader:
        return SseParser("openai", strip_usage_chunk=strip_usage_chunk, on_event=on_event)

    def error_body(self, status: int, body: bytes) -> tuple[bytes, str]:
        return body, ""  # already the client's shape: its own content type stays


class AzureOpenAI(OpenAICompatible):
    """chat / embeddings → `azure-openai`."""

    credential_headers: ClassVar[tuple[str, ...]] = ("api-key",)

    def request(self, attempt: AttemptRequest) -> UpstreamRequest:
        backend = attempt.backend
        path = attempt.client_path.partition("?")[0]
        upstream_path = backend.path_prefix + path.removeprefix("/v1")
        if backend.api_version:
            upstream_path += "?api-version=" + quote(backend.api_version, safe="")
        headers = {"api-key": attempt.credential} if attempt.credential else {}
        return UpstreamRequest(path=upstream_path, set_headers=headers, body=renamed(attempt))
