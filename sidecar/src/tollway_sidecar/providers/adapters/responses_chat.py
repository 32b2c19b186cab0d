"""The Responses API (`POST /v1/responses`) to a backend that speaks only chat completions: composed
over that backend's chat adapter.

`ResponsesOverChat(inner)` translates the request to chat (`providers.responses.to_chat`) and lets
`inner` do everything it does for a chat client — path, credentials, model, its own translation
(Anthropic Messages, Bedrock Converse) — then translates the chat answer `inner` would give a chat
client into a `response` object (`from_chat`), or its chat stream into the Responses events
(`responses_stream.ChatStreamToResponses`). The tokens, model and finish reasons are `inner`'s
reading, so the same call costs the same as a chat call, streamed or not. Errors are `inner`'s
OpenAI-shaped bodies: the Responses API shapes errors the same way.

The adapter protocol hands `answer` and `stream` no request, so a translated `response` echoes
the defaults for the request's parameters (`instructions`, `tools`, `temperature`…), not the
values sent; `store` is always false.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from dataclasses import replace
from typing import Any, ClassVar, Final

from tollway_sidecar.providers.adapters.anthropic import AnthropicChat
from tollway_sidecar.providers.adapters.base import (
    Adapter,
    AttemptRequest,
    BadGateway,
    ClientAnswer,
    Refused,
    StreamReader,
    UpstreamRequest,
)
from tollway_sidecar.providers.adapters.chat_bedrock import ChatBedrock
from tollway_sidecar.providers.adapters.openai import AzureOpenAI, OpenAICompatible, not_json
from tollway_sidecar.providers.adapters.responses_openai import output_text
from tollway_sidecar.providers.responses import Untranslatable, from_chat, to_chat, unsupported
from tollway_sidecar.providers.responses_stream import ChatStreamToResponses
from tollway_sidecar.providers.usage import ParsedStream

__all__ = ["ResponsesOverChat", "ResponsesStream"]

_JSON: Final = "application/json"
_CHAT_PATH: Final = "/v1/chat/completions"


def _response_id() -> str:
    return "resp_" + uuid.uuid4().hex


class ResponsesStream:
    """The inner chat stream, read by the inner reader for usage and sent on as Responses events."""

    __slots__ = ("_inner", "_translator")

    def __init__(self, inner: StreamReader, translator: ChatStreamToResponses) -> None:
        self._inner, self._translator = inner, translator

    @property
    def complete(self) -> bool:
        return self._inner.complete

    def feed(self, chunk: bytes) -> bytes | None:
        chat = self._inner.feed(chunk)
        return self._translator.feed(chunk if chat is None else chat)

    def flush(self) -> bytes:
        return self._translator.feed(self._inner.flush()) + self._translator.flush()

    def finish(self) -> ParsedStream:
        return self._inner.finish()


class ResponsesOverChat:
    """responses → a chat-only backend, through its chat adapter `inner`."""

    # Every header any chat adapter this may wrap sets (the class is shared by all of them).
    credential_headers: ClassVar[tuple[str, ...]] = tuple(
        dict.fromkeys(
            (
                *OpenAICompatible.credential_headers,
                *AzureOpenAI.credential_headers,
                *AnthropicChat.credential_headers,
                *ChatBedrock.credential_headers,
            )
        )
    )

    def __init__(self, inner: Adapter) -> None:
        self._inner = inner

    def check(self, body: dict[str, Any]) -> Refused | None:
        refused = unsupported(body)
        if refused is not None:
            return Refused(*refused)
        try:
            chat = to_chat(body)
        except Untranslatable as exc:
            return Refused(exc.message, exc.param)
        return self._inner.check(chat)

    def request(self, attempt: AttemptRequest) -> UpstreamRequest:
        query = attempt.client_path.partition("?")[2]
        chat: dict[str, Any] | None = None
        encoded: bytes | None = None
        if attempt.body is not None:
            try:
                chat = to_chat(attempt.body)
            except Untranslatable as exc:
                raise Refused(exc.message, exc.param) from exc
            encoded = json.dumps(chat, separators=(",", ":"), ensure_ascii=False).encode()
        upstream = self._inner.request(
            replace(attempt, client_path=_CHAT_PATH + (f"?{query}" if query else ""), body=chat, raw=encoded)
        )
        if upstream.body is None and encoded is not None:
            # The inner passes "the client's bytes" on unchanged: those are the chat body here.
            upstream = replace(upstream, body=encoded)
        return upstream

    def is_stream(self, status: int, content_type: str) -> bool:
        return self._inner.is_stream(status, content_type)

    def stream_headers(self) -> dict[str, str]:
        return self._inner.stream_headers()

    def answer(self, status: int, content_type: str, body: bytes) -> ClientAnswer:
        inner = self._inner.answer(status, content_type, body)
        if status >= 300 or inner.bad_gateway is not None:
            return inner  # an error is already in OpenAI's shape, which the Responses API shares
        chat_bytes = body if inner.body is None else inner.body
        try:
            chat = json.loads(chat_bytes)
        except ValueError:
            chat = None
        response = (
            from_chat(chat, request={}, response_id=_response_id(), created_at=int(time.time()))
            if isinstance(chat, dict)
            else None
        )
        if response is None:
            bad = (
                not_json(status)
                if chat is None
                else BadGateway(
                    f"answered {status} with JSON that is not a chat completion; "
                    "the gateway cannot translate it."
                )
            )
            return replace(inner, body=None, content_type=None, bad_gateway=bad)
        out = json.dumps(response, separators=(",", ":"), ensure_ascii=False).encode()
        return replace(inner, body=out, content_type=_JSON, text=output_text(response))

    def stream(
        self,
        *,
        client_model: str,
        strip_usage_chunk: bool,
        on_event: Callable[[bytes | None, bytes], None] | None = None,
    ) -> StreamReader:
        # The usage chunk is read by the translator (it goes into `response.completed`), never sent.
        inner = self._inner.stream(client_model=client_model, strip_usage_chunk=False)
        translator = ChatStreamToResponses(
            request={},
            response_id=_response_id(),
            created_at=int(time.time()),
            model=client_model,
            on_event=on_event,
        )
        return ResponsesStream(inner, translator)

    def error_body(self, status: int, body: bytes) -> tuple[bytes, str]:
        return self._inner.error_body(status, body)
