"""Bounding what counting one request's prompt costs, without ever counting fewer tokens than it has.

tiktoken's byte-pair merge is quadratic in the length of one pre-tokenized piece: a 3 MB prompt
with no space (one piece) takes about a minute of CPU, against ~35 ms per MiB of ordinary text
(o200k_base; cl100k_base ~170 ms). `PromptCounter` counts one request's strings exactly while

- the request's exact allowance lasts (`EXACT_CHARS` characters in all, each string also using
  `PER_STRING_CHARS` of it: a call into tiktoken costs ~1 µs however short the string, and a 10 MiB
  body may hold 600,000 strings), and
- the string has no run longer than `MAX_RUN` characters of whitespace, of anything else, or of
  `\\r`, `\\n` and `/` (so every piece of OpenAI's encodings is at most 2 * `MAX_RUN` + 1 long:
  a piece is a run of non-whitespace with one character before it, a whitespace run, or a
  punctuation run followed by `[\\r\\n/]*`);

any other string counts as its UTF-8 length in bytes. Every token of a byte-level BPE (OpenAI's,
Anthropic's, Llama 3's) is at least one byte, so that is an upper bound: the reservation may be
higher than the call turns out to use, never lower. Settling charges what the provider reports.
"""

from __future__ import annotations

import re
from typing import Final, Protocol

from tollway_sidecar.quota.tokens import TokenCounter

__all__ = [
    "EXACT_CHARS",
    "MAX_RUN",
    "PER_STRING_CHARS",
    "Counts",
    "PromptCounter",
    "has_long_run",
    "utf8_length",
]

EXACT_CHARS: Final = 256 * 1024
PER_STRING_CHARS: Final = 64
MAX_RUN: Final = 1024

# Unicode White_Space, which tiktoken's `\s` means; `str.split()` also splits at U+001C..U+001F,
# which tiktoken does not, so those are hidden from it.
_WS: Final = "\t-\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
_NOT_SPACE: Final = str.maketrans(dict.fromkeys("\x1c\x1d\x1e\x1f", "x"))
# Each starts only where its run starts (the look-behind), so a scan stays linear.
_SPACE_RUN: Final = re.compile(f"(?<![{_WS}])[{_WS}]{{{MAX_RUN + 1}}}")
_BREAK_RUN: Final = re.compile(f"(?<![\\r\\n/])[\\r\\n/]{{{MAX_RUN + 1}}}")


def has_long_run(text: str) -> bool:
    """Whether `text` has a run over `MAX_RUN` of non-whitespace, whitespace, or `[\\r\\n/]`."""
    if max(map(len, text.translate(_NOT_SPACE).split()), default=0) > MAX_RUN:
        return True
    return _SPACE_RUN.search(text) is not None or _BREAK_RUN.search(text) is not None


class Counts(Protocol):
    def count(self, text: str) -> int: ...


def utf8_length(text: str) -> int:
    """Bytes of `text` in UTF-8; a lone surrogate (valid in JSON) counts as the 3 bytes tiktoken
    sees after replacing it."""
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


class PromptCounter:
    """Counts the strings of one request: exactly within the bounds above, else by UTF-8 bytes."""

    __slots__ = ("allowance", "counter", "estimated")

    def __init__(self, counter: TokenCounter, allowance: int = EXACT_CHARS) -> None:
        self.counter = counter
        self.allowance = allowance
        self.estimated = 0  # strings counted by their bytes

    def count(self, text: str) -> int:
        if not text:
            return 0
        size = len(text) + PER_STRING_CHARS
        if size <= self.allowance and (size <= MAX_RUN or not has_long_run(text)):
            self.allowance -= size
            return self.counter.count(text)
        self.estimated += 1
        return utf8_length(text)
