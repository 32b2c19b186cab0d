"""Filling an entry from a call's answer: a whole JSON body, or a stream read as it passes.

Only a complete 200 answer that finished normally or with tool calls (a Responses answer:
`completed`) is stored, never an error, a
cut stream, content the cache cannot replay, or an entry over `max_entry_bytes` (measured on the
stored form). Anything else raises `Unstorable`.

Feed `StreamFill` the bytes the client receives (after any Anthropic → OpenAI translation), since
the entry is in the client's API. Its framing is `SseParser`'s (one SSE reader in the sidecar).
The usage to keep is passed by the caller when it has it (the gateway's own parse of the provider's
stream, which still has the usage chunk the client may not have asked for); otherwise the one in the
stream is used, and an answer without usage is not stored (a replay could not render it).
"""

from __future__ import annotations

import json
from typing import Final

from tollway_sidecar.cache.chat_stream import ChatStream
from tollway_sidecar.cache.entry import Api, CacheEntry, answer_from_json
from tollway_sidecar.cache.messages_stream import MessagesStream
from tollway_sidecar.cache.responses_stream import ResponsesStream
from tollway_sidecar.cache.unstorable import Unstorable
from tollway_sidecar.providers.usage import SseParser, TokenUsage, parse_json

__all__ = ["StreamFill", "entry_from_json"]

_SHAPE: Final[dict[Api, str]] = {"chat": "openai", "messages": "anthropic", "responses": "openai"}
_JOINERS: Final[dict[Api, type[ChatStream | MessagesStream | ResponsesStream]]] = {
    "chat": ChatStream,
    "messages": MessagesStream,
    "responses": ResponsesStream,
}
_DONE: Final = b"[DONE]"


def _checked(entry: CacheEntry, max_entry_bytes: int) -> CacheEntry:
    entry.answer.check_finished()
    try:
        size = len(entry.encoded)
    except UnicodeEncodeError as exc:  # a lone surrogate a provider escaped: not valid UTF-8 to replay
        raise Unstorable("answer text is not valid UTF-8") from exc
    if size > max_entry_bytes:
        raise Unstorable(f"entry of {size} bytes is over max_entry_bytes {max_entry_bytes}")
    return entry


def entry_from_json(
    api: Api,
    status: int,
    body: bytes,
    *,
    cost_nano: int,
    created_ms: int,
    max_entry_bytes: int,
    usage: TokenUsage | None = None,
) -> CacheEntry:
    """The entry for a buffered answer, or `Unstorable`."""
    if status != 200:
        raise Unstorable(f"status {status}")
    if len(body) > max_entry_bytes * 2:  # not worth parsing: its stored form would hardly fit
        raise Unstorable(f"answer of {len(body)} bytes is over max_entry_bytes {max_entry_bytes}")
    try:
        obj = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise Unstorable("answer is not JSON") from exc
    answer = answer_from_json(api, obj)
    if usage is None:
        usage = parse_json(_SHAPE[api], body).usage
        if usage is None:
            raise Unstorable("answer has no usage")
    return _checked(CacheEntry(answer, usage, cost_nano, created_ms), max_entry_bytes)


class StreamFill:
    """Reads one streamed answer for the cache: `feed` every chunk, then `finish` once it ended.

    Never raises from `feed`: what makes the stream unstorable is kept and raised by `finish`. Text
    beyond `max_entry_bytes` is not kept (the entry could not be stored anyway).
    """

    def __init__(self, api: Api, *, max_entry_bytes: int) -> None:
        self.api = api
        self.max_entry_bytes = max_entry_bytes
        self._joiner: ChatStream | MessagesStream | ResponsesStream = _JOINERS[api]()
        self._parser = SseParser(_SHAPE[api], on_event=self._event, responses=api == "responses")
        self._refused: Unstorable | None = None

    @property
    def refused(self) -> str | None:
        """Why the stream will not be stored, once that is known (the caller may stop feeding)."""
        return None if self._refused is None else self._refused.reason

    def feed(self, chunk: bytes) -> None:
        if self._refused is None:
            self._parser.feed(chunk)

    def _event(self, _name: bytes | None, data: bytes) -> None:
        if self._refused is not None or data.strip() == _DONE:
            return
        try:
            self._joiner.add(json.loads(data))
        except Unstorable as exc:
            self._refused = exc
        except (ValueError, RecursionError):
            self._refused = Unstorable("an event is not JSON")
        if self._refused is None and self._joiner.chars > self.max_entry_bytes:
            self._refused = Unstorable(f"answer is over max_entry_bytes {self.max_entry_bytes}")

    def finish(
        self, *, status: int, cost_nano: int, created_ms: int, usage: TokenUsage | None = None
    ) -> CacheEntry:
        """The entry for the whole stream, or `Unstorable`."""
        if status != 200:
            raise Unstorable(f"status {status}")
        parsed = self._parser.finish()  # may still read a last event that had no blank line after it
        if self._refused is not None:
            raise self._refused
        if not parsed.complete:
            raise Unstorable("the stream ended before its end marker")
        # The only report that is no problem: a stream without usage (the gateway's caller strips the
        # usage chunk it asked for on the client's behalf, and passes the usage it read).
        benign = parsed.usage is None and parsed.error == "no usage in stream"
        if parsed.error is not None and not benign:
            raise Unstorable(parsed.error)
        usage = usage if usage is not None else parsed.usage
        if usage is None:
            raise Unstorable("the stream has no usage")
        return _checked(CacheEntry(self._joiner.answer(), usage, cost_nano, created_ms), self.max_entry_bytes)
