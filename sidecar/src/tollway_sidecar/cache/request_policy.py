"""What one request asks of the response cache: its headers combined with the route's settings. Pure.

Every directive can only take something away: a call reads the cache unless one of its headers says
not to, and writes it unless one says not to (`on` and `Helicone-Cache-Enabled: true` take nothing
away). So `x-tollway-cache: read-only` with `Cache-Control: no-cache` neither reads nor writes.

| header                                | read | write | note                                        |
|---------------------------------------|------|-------|---------------------------------------------|
| `x-tollway-cache: on`                 |  ✓   |  ✓    | the route's default, said out loud          |
| `x-tollway-cache: off`                |      |       | BYPASS                                      |
| `x-tollway-cache: refresh`            |      |  ✓    | REFRESH: go upstream, store the new answer  |
| `x-tollway-cache: read-only`          |  ✓   |       | a miss is not stored                        |
| `Cache-Control: no-store`             |      |       | RFC 9111: store nothing                     |
| `Cache-Control: no-cache`, `max-age=0`|      |  ✓    | RFC 9111: no stored answer without checking |
| `Cache-Control: max-age=N`            |  ✓   |  ✓    | TTL min(N, max_ttl_s); read only if age ≤ N |
| `Helicone-Cache-Enabled: true/false`  |  ✓/  |  ✓/   | `false` is `off`                            |

A route whose cache is Off is never turned on by a header: the platform team decides which routes
may answer from a cache (tool calls with side effects, non-deterministic prompts), and a header that
could switch it on would also let a client read entries written under settings it does not see.
Such a request gets `x-tollway-cache: BYPASS` when it sent a cache header of ours or Helicone's, so
a Helicone user learns why nothing hits; its headers are not validated (the cache is not involved).

On a route with the cache on, a malformed value of our headers or Helicone's (an unknown
`x-tollway-cache`, `max-age=abc`, a seed too long) is a 400 naming the header: ignoring it would
serve a stored answer to a client that asked for a fresh one. Unknown `Cache-Control` directives are
ignored, as RFC 9111 says (HTTP libraries send `no-transform`, `max-stale` and the like).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, Literal

from tollway_sidecar.config.models import CacheSettings

__all__ = [
    "MAX_PARTITION_VALUE",
    "BadCacheHeader",
    "CacheDecision",
    "CacheOutcome",
    "decide",
]

CacheOutcome = Literal["HIT", "SEMANTIC_HIT", "MISS", "REFRESH", "BYPASS"]

MAX_PARTITION_VALUE: Final = 256  # characters of a namespace or seed header

_TOLLWAY: Final = "x-tollway-cache"
_NAMESPACE: Final = "x-tollway-cache-namespace"
_SEED: Final = "x-tollway-cache-seed"
_HELICONE_ENABLED: Final = "helicone-cache-enabled"
_HELICONE_SEED: Final = "helicone-cache-seed"
_CACHE_CONTROL: Final = "cache-control"
# Headers that say the client meant to use a cache (Cache-Control alone does not: libraries send it).
_ASKING: Final = (_TOLLWAY, _NAMESPACE, _SEED, _HELICONE_ENABLED, _HELICONE_SEED)
_MODES: Final = {  # x-tollway-cache → (read, write)
    "on": (True, True),
    "off": (False, False),
    "refresh": (False, True),
    "read-only": (True, False),
}
_MAX_AGE: Final = re.compile(r"max-age\s*=\s*(.*)", re.IGNORECASE)
_PRINTABLE: Final = re.compile(r"[\x21-\x7e](?:[\x20-\x7e]*[\x21-\x7e])?")


@dataclass(frozen=True)
class BadCacheHeader(Exception):
    """A cache header the router answers with 400 (`param` is the header's name)."""

    header: str
    message: str

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True, slots=True)
class CacheDecision:
    """What the cache does for one call.

    `partition_parts` are the header-given parts of the key's partition (namespace, seeds), as
    (label, value) pairs; `max_age_s` bounds the age of an entry this call may be served (None: any
    live entry). `helicone` says the client used Helicone's headers, so the answer carries
    Helicone's `helicone-cache` header too.
    """

    enabled: bool  # the route's cache is on for this call (read or write may still be off)
    read: bool
    write: bool
    ttl_s: int
    max_age_s: int | None = None
    partition_parts: tuple[tuple[str, str], ...] = ()
    helicone: bool = False
    asked: bool = False  # the client sent a cache header (our own or Helicone's)

    @property
    def active(self) -> bool:
        return self.read or self.write

    def outcome(self, hit: Literal["exact", "semantic"] | None) -> CacheOutcome:
        """The answer's `x-tollway-cache` value, given what the lookup found."""
        if not self.active:
            return "BYPASS"
        if not self.read:
            return "REFRESH"
        if hit == "exact":
            return "HIT"
        if hit == "semantic":
            return "SEMANTIC_HIT"
        return "MISS"

    def answer_headers(self, outcome: CacheOutcome) -> list[tuple[str, str]]:
        """The cache's own answer headers; none on a route whose cache is off unless it was asked."""
        if not self.enabled and not self.asked:
            return []
        headers: list[tuple[str, str]] = [(_TOLLWAY, outcome)]
        if self.helicone:
            headers.append(("helicone-cache", "HIT" if outcome in ("HIT", "SEMANTIC_HIT") else "MISS"))
        return headers


def decide(settings: CacheSettings, headers: Mapping[str, str]) -> CacheDecision:
    """The call's decision from its route's effective settings and its headers (lowercase names, as
    Envoy passes them). Raises `BadCacheHeader` for a malformed value on a route with the cache on."""
    asked = any(name in headers for name in _ASKING)
    helicone = _HELICONE_ENABLED in headers or _HELICONE_SEED in headers
    if not settings.enabled:
        return CacheDecision(False, False, False, settings.ttl_s, asked=asked, helicone=helicone)
    read = write = True
    ttl_s, max_age_s = settings.ttl_s, None
    if (value := headers.get(_TOLLWAY)) is not None:
        mode = _MODES.get(value.strip().lower())
        if mode is None:
            raise BadCacheHeader(
                _TOLLWAY, f"{_TOLLWAY} must be one of on, off, refresh, read-only; got {value[:64]!r}"
            )
        read, write = read and mode[0], write and mode[1]
    if (value := headers.get(_HELICONE_ENABLED)) is not None:
        flag = value.strip().lower()
        if flag not in ("true", "false"):
            raise BadCacheHeader(
                _HELICONE_ENABLED, f"Helicone-Cache-Enabled must be true or false; got {value[:64]!r}"
            )
        if flag == "false":
            read = write = False
    if (value := headers.get(_CACHE_CONTROL)) is not None:
        for directive in (part.strip() for part in value.split(",")):
            lowered = directive.lower()
            if lowered == "no-store":
                read = write = False
            elif lowered == "no-cache":
                read = False
            elif (match := _MAX_AGE.fullmatch(directive)) is not None:
                seconds = _max_age(match.group(1))
                if seconds == 0:
                    read = False  # RFC 9111 §5.2.1.1: max-age=0 asks for what no-cache asks for
                else:
                    ttl_s = min(seconds, settings.max_ttl_s)
                    max_age_s = seconds
    parts = tuple(
        (label, _partition_value(header, headers[header]))
        for label, header in (("namespace", _NAMESPACE), ("seed", _SEED), ("helicone-seed", _HELICONE_SEED))
        if header in headers
    )
    return CacheDecision(True, read, write, ttl_s, max_age_s, parts, helicone, asked)


def _max_age(raw: str) -> int:
    text = raw.strip().strip('"')
    if not text.isascii() or not text.isdigit():
        raise BadCacheHeader(
            _CACHE_CONTROL, f"Cache-Control max-age must be a whole number of seconds; got {raw[:64]!r}"
        )
    return int(text)


def _partition_value(header: str, value: str) -> str:
    if len(value) > MAX_PARTITION_VALUE or _PRINTABLE.fullmatch(value) is None:
        raise BadCacheHeader(
            header,
            f"{header} must be 1 to {MAX_PARTITION_VALUE} printable ASCII characters "
            "(no leading or trailing space)",
        )
    return value
