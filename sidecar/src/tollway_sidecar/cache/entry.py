"""What the cache stores for one key: a complete answer, its usage, what it cost, when it was made.

The answer is kept in one normalised form per client API (`chat.ChatAnswer` for
`/v1/chat/completions`, `messages.MessagesAnswer` for `/v1/messages`, `responses.ResponsesAnswer`
for `/v1/responses`), whichever way it was first filled, and rendered for each request: `to_json()`
for a JSON request, `to_sse()` for a streamed one.

Stored as one JSON document: the format version, the API, the rendered JSON answer (read back by the
same reader that reads a provider's answer, so there is one schema, not two), the `TokenUsage` counts,
the cost in nano-USD and the creation time. Anything that does not decode is `CorruptEntry`, which a
store turns into a miss and a delete.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import cached_property
from typing import Any, Final, Literal

from tollway_sidecar.cache.chat import ChatAnswer, chat_from_json, chat_json, chat_sse
from tollway_sidecar.cache.messages import MessagesAnswer, messages_from_json, messages_json, messages_sse
from tollway_sidecar.cache.responses import (
    ResponsesAnswer,
    responses_from_json,
    responses_json,
    responses_sse,
)
from tollway_sidecar.cache.sse import dumps
from tollway_sidecar.cache.unstorable import Unstorable
from tollway_sidecar.providers.usage import TokenUsage

__all__ = ["ENTRY_VERSION", "Answer", "Api", "CacheEntry", "CorruptEntry", "answer_from_json", "decode_entry"]

# The client's API: `/v1/chat/completions`, `/v1/messages`, `/v1/responses`.
Api = Literal["chat", "messages", "responses"]
Answer = ChatAnswer | MessagesAnswer | ResponsesAnswer
ENTRY_VERSION: Final = 1


class CorruptEntry(Exception):
    """Stored bytes that are not an entry this version can read."""


@dataclass(frozen=True)
class CacheEntry:
    answer: Answer
    usage: TokenUsage  # what the call that filled the entry used; replayed, never billed again
    cost_nano: int  # what that call cost: the amount each hit saves
    created_ms: int  # the caller's clock when it was filled (the `age` of a hit counts from here)

    @property
    def api(self) -> Api:
        if isinstance(self.answer, ChatAnswer):
            return "chat"
        return "messages" if isinstance(self.answer, MessagesAnswer) else "responses"

    def age_s(self, now_ms: int) -> int:
        return max(0, now_ms - self.created_ms) // 1000

    def to_json(self) -> bytes:
        if isinstance(self.answer, ChatAnswer):
            return chat_json(self.answer, self.usage)
        if isinstance(self.answer, MessagesAnswer):
            return messages_json(self.answer, self.usage)
        return responses_json(self.answer, self.usage)

    def to_sse(self, *, include_usage: bool) -> bytes:
        """A valid event stream; `include_usage` is the OpenAI client's `stream_options.include_usage`
        (Anthropic and Responses streams always carry their usage)."""
        if isinstance(self.answer, ChatAnswer):
            return chat_sse(self.answer, self.usage, include_usage=include_usage)
        if isinstance(self.answer, MessagesAnswer):
            return messages_sse(self.answer, self.usage)
        return responses_sse(self.answer, self.usage)

    @cached_property
    def encoded(self) -> bytes:
        """The stored form (computed once: the size bound and the store both need it)."""
        head = {
            "v": ENTRY_VERSION,
            "api": self.api,
            "created_ms": self.created_ms,
            "cost_nano": self.cost_nano,
            "usage": asdict(self.usage),
        }
        # The rendered answer goes in as it is: it is a JSON object already.
        return dumps(head)[:-1].encode() + b',"answer":' + self.to_json() + b"}"


_READERS: Final[dict[str, Callable[[Any], Answer]]] = {
    "chat": chat_from_json,
    "messages": messages_from_json,
    "responses": responses_from_json,
}


def answer_from_json(api: Api, obj: Any) -> Answer:
    """The answer in a decoded JSON answer of the client's API, or `Unstorable`."""
    return _READERS[api](obj)


def decode_entry(data: bytes) -> CacheEntry:
    """The entry stored as `data`; `CorruptEntry` when it is not one."""
    try:
        document: Any = json.loads(data)
        if not isinstance(document, dict) or document.get("v") != ENTRY_VERSION:
            raise CorruptEntry("unknown entry format")
        api, answer = document.get("api"), document.get("answer")
        reader = _READERS.get(api) if isinstance(api, str) else None
        if reader is None:
            raise CorruptEntry(f"unknown API {api!r}")
        parsed = reader(answer)
        usage = TokenUsage(**document["usage"])
        cost, created = document["cost_nano"], document["created_ms"]
        if type(cost) is not int or cost < 0 or type(created) is not int:
            raise CorruptEntry("cost_nano or created_ms is not an integer")
        return CacheEntry(parsed, usage, cost, created)
    except CorruptEntry:
        raise
    except (ValueError, TypeError, KeyError, RecursionError, Unstorable) as exc:
        raise CorruptEntry(f"undecodable entry ({type(exc).__name__})") from exc
