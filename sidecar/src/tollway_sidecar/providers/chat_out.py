"""OpenAI `chat.completion.chunk` events written from another API's stream. Pure.

The chat adapters over non-OpenAI backends (Bedrock ConverseStream, Gemini) read their backend's
events and write them here, so every such client receives the same chunks: one id, `created` and
`model` for the whole stream, the usage chunk (`choices: []`) last, then `data: [DONE]`.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import Any, Final

__all__ = ["ChunkWriter", "call_id"]

_DONE: Final = b"data: [DONE]\n\n"


def call_id() -> str:
    return "chatcmpl-" + uuid.uuid4().hex


class ChunkWriter:
    """The SSE events of one streamed chat completion, each as the bytes to send the client.

    `on_event(None, data)`, when given, sees every event written (the response cache replays them).
    """

    def __init__(
        self, *, model: str, created: int, on_event: Callable[[bytes | None, bytes], None] | None = None
    ) -> None:
        self._id, self._model, self._created, self._on_event = call_id(), model, created, on_event

    def send(self, obj: dict[str, Any]) -> bytes:
        data = json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()
        if self._on_event is not None:
            self._on_event(None, data)
        return b"data: " + data + b"\n\n"

    def chunk(self, delta: dict[str, Any], finish: str | None = None) -> bytes:
        return self.send(
            self._envelope()
            | {"choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}
        )

    def usage(self, usage: dict[str, Any]) -> bytes:
        """The usage chunk: no choices, the whole answer's usage in OpenAI's shape."""
        return self.send(self._envelope() | {"choices": [], "usage": usage})

    def done(self) -> bytes:
        if self._on_event is not None:
            self._on_event(None, b"[DONE]")
        return _DONE

    def _envelope(self) -> dict[str, Any]:
        return {
            "id": self._id,
            "object": "chat.completion.chunk",
            "created": self._created,
            "model": self._model,
        }
