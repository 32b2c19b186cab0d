"""A streamed Responses API answer, event by event, down to the one response it ends with. Pure.

The `response.completed` event carries the whole response, so that is the answer (read by
`responses.responses_from_json`, as a JSON answer is); the deltas before it are only counted, for
the size bound. `response.incomplete`, `response.failed` and `error` make the stream `Unstorable`.
"""

from __future__ import annotations

from typing import Any, Final

from tollway_sidecar.cache.responses import ResponsesAnswer, responses_from_json
from tollway_sidecar.cache.unstorable import Unstorable

__all__ = ["ResponsesStream"]

_ENDED: Final = frozenset({"response.incomplete", "response.failed"})


class ResponsesStream:
    """Keeps a Responses stream's final response. `chars` counts the text streamed before it."""

    def __init__(self) -> None:
        self.chars = 0
        self._final: Any = None

    def add(self, event: Any) -> None:
        if not isinstance(event, dict):
            raise Unstorable("event is not a JSON object")
        kind = event.get("type")
        if kind == "response.completed":
            self._final = event.get("response")
            if not isinstance(self._final, dict):
                raise Unstorable("response.completed has no response")
        elif kind in _ENDED:
            raise Unstorable(f"the stream ended with {kind}")
        elif kind == "error":
            raise Unstorable("the stream reported an error")
        elif isinstance(delta := event.get("delta"), str):
            self.chars += len(delta)

    def answer(self) -> ResponsesAnswer:
        if self._final is None:
            raise Unstorable("the stream has no response.completed event")
        return responses_from_json(self._final)
