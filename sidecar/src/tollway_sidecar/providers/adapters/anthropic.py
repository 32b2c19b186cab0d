"""Clients to the Anthropic Messages API: OpenAI chat translated (`AnthropicChat`), `/v1/messages`
passed through (`AnthropicMessages`).

Both send to the API root + `/v1/messages` with `x-api-key` and `anthropic-version`: a native
client's own version (it says which API it speaks), `ANTHROPIC_VERSION` for a translated call (it
speaks ours). A native client's query is kept; `model` is renamed.

A translated call's request goes through `chat_to_messages`, its whole answer through
`message_to_chat` (errors through `error_to_openai`), its stream through `ChunkTranslator`; the
usage is read from the Anthropic side (`SseParser` observing the events as they came).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any, ClassVar

from tollway_sidecar.providers.adapters.base import (
    AttemptRequest,
    BadGateway,
    ClientAnswer,
    Refused,
    StreamReader,
    UpstreamRequest,
)
from tollway_sidecar.providers.adapters.openai import first_choice_text, is_sse, not_json, renamed
from tollway_sidecar.providers.anthropic import (
    ANTHROPIC_VERSION,
    TranslationError,
    chat_to_messages,
    error_to_openai,
    message_to_chat,
)
from tollway_sidecar.providers.anthropic_stream import ChunkTranslator
from tollway_sidecar.providers.usage import ParsedStream, SseParser, read_json

__all__ = ["AnthropicChat", "AnthropicMessages", "TranslatedStream"]

_JSON = "application/json"


def _messages_path(attempt: AttemptRequest, *, keep_query: bool) -> str:
    path = attempt.backend.path_prefix.removesuffix("/v1") + "/v1/messages"
    query = attempt.client_path.partition("?")[2]
    return path + "?" + query if keep_query and query else path


def _headers(attempt: AttemptRequest, version: str) -> dict[str, str]:
    headers = {"x-api-key": attempt.credential} if attempt.credential else {}
    headers["anthropic-version"] = version
    return headers


class _Anthropic:
    credential_headers: ClassVar[tuple[str, ...]] = ("x-api-key", "anthropic-version")

    def is_stream(self, status: int, content_type: str) -> bool:
        return is_sse(content_type)

    def stream_headers(self) -> dict[str, str]:
        return {}


class AnthropicMessages(_Anthropic):
    """messages (Anthropic clients) → `anthropic`: passed through."""

    def check(self, body: dict[str, Any]) -> Refused | None:
        return None

    def request(self, attempt: AttemptRequest) -> UpstreamRequest:
        version = attempt.client_headers.get("anthropic-version") or ANTHROPIC_VERSION
        return UpstreamRequest(
            path=_messages_path(attempt, keep_query=True),
            set_headers=_headers(attempt, version),
            body=renamed(attempt),
        )

    def answer(self, status: int, content_type: str, body: bytes) -> ClientAnswer:
        obj, parsed = read_json(True, body)
        if status < 300 and not isinstance(obj, dict):
            return ClientAnswer(None, None, None, error=parsed.error, bad_gateway=not_json(status))
        return ClientAnswer(None, None, parsed.usage, parsed.model, parsed.finish_reasons, parsed.error)

    def stream(
        self,
        *,
        client_model: str,
        strip_usage_chunk: bool,
        on_event: Callable[[bytes | None, bytes], None] | None = None,
    ) -> StreamReader:
        return SseParser("anthropic", on_event=on_event)

    def error_body(self, status: int, body: bytes) -> tuple[bytes, str]:
        return body, ""


class TranslatedStream:
    """An Anthropic event stream read for usage and sent on as OpenAI `chat.completion.chunk`s."""

    __slots__ = ("_parser", "_translator")

    def __init__(self, parser: SseParser, translator: ChunkTranslator) -> None:
        self._parser, self._translator = parser, translator

    @property
    def complete(self) -> bool:
        return self._parser.complete

    def feed(self, chunk: bytes) -> bytes | None:
        self._parser.feed(chunk)
        return self._translator.feed(chunk)

    def flush(self) -> bytes:
        self._parser.flush()
        return self._translator.flush()

    def finish(self) -> ParsedStream:
        return self._parser.finish()


class AnthropicChat(_Anthropic):
    """chat (OpenAI clients) → `anthropic`: translated both ways."""

    def check(self, body: dict[str, Any]) -> Refused | None:
        try:
            chat_to_messages(body, "check")
        except TranslationError as exc:
            return Refused(exc.message, exc.param)
        return None

    def request(self, attempt: AttemptRequest) -> UpstreamRequest:
        body = attempt.body
        translated = None
        if body is not None:
            try:
                translated = chat_to_messages(body, attempt.backend.model)
            except TranslationError as exc:
                raise Refused(exc.message, exc.param) from exc
        return UpstreamRequest(
            path=_messages_path(attempt, keep_query=False),
            set_headers=_headers(attempt, ANTHROPIC_VERSION),
            body=json.dumps(translated, separators=(",", ":")).encode() if translated is not None else None,
        )

    def answer(self, status: int, content_type: str, body: bytes) -> ClientAnswer:
        obj, parsed = read_json(True, body)
        if status < 300 and not isinstance(obj, dict):
            return ClientAnswer(None, None, None, error=parsed.error, bad_gateway=not_json(status))
        if status >= 400:
            out, _ = self.error_body(status, body)
            return ClientAnswer(out, _JSON, parsed.usage, parsed.model, parsed.finish_reasons, parsed.error)
        # The `created` of a translated answer is when the gateway made it.
        chat = message_to_chat(obj, int(time.time())) if isinstance(obj, dict) else None
        if chat is None:
            bad = BadGateway(
                f"answered {status} with JSON that is not an Anthropic message; "
                "the gateway cannot translate it."
            )
            return ClientAnswer(
                None, None, parsed.usage, parsed.model, parsed.finish_reasons, parsed.error, bad
            )
        out = json.dumps(chat, separators=(",", ":"), ensure_ascii=False).encode()
        return ClientAnswer(
            out,
            _JSON,
            parsed.usage,
            parsed.model,
            parsed.finish_reasons,
            parsed.error,
            text=first_choice_text(chat),
        )

    def stream(
        self,
        *,
        client_model: str,
        strip_usage_chunk: bool,
        on_event: Callable[[bytes | None, bytes], None] | None = None,
    ) -> StreamReader:
        translator = ChunkTranslator(
            model=client_model, created=int(time.time()), include_usage=not strip_usage_chunk
        )
        # `on_event` would see Anthropic's events, not the client's: a translated stream has none.
        return TranslatedStream(SseParser("anthropic"), translator)

    def error_body(self, status: int, body: bytes) -> tuple[bytes, str]:
        return json.dumps(error_to_openai(status, body), separators=(",", ":")).encode(), _JSON
