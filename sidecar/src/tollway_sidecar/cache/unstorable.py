"""Why an answer is not stored: the one exception every part of the fill path raises."""

from __future__ import annotations

__all__ = ["Unstorable"]


class Unstorable(Exception):
    """The answer is not stored (a reason for logs and the cache's metric; never shown to a client).

    Raised for anything not a complete 200 answer that finished normally or with tool calls (a
    Responses answer whose status is not `completed`: incomplete, failed), for an
    answer over `max_entry_bytes`, and for content the cache cannot replay faithfully (log
    probabilities, audio, citations, server tools): storing a lossy copy would serve a different
    answer from the one the first caller got.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
