"""Short-lived provider credentials, refreshed in the background before they expire.

A backend whose `credential_source` is set (a Google service account, AWS web identity) does not send
its Secret's value upstream: a *source* turns that value into a credential that expires (an access
token, temporary keys). Sources are blocking (their clients are), so `Refreshers` runs each `fetch` in a
worker thread and the request path only reads the last value (`credential`), never waiting.

Timing: a credential is fetched again `margin_s` before it expires, or halfway through its life when
that is shorter. A failed refresh keeps the old value until it expires, is logged (the backend and
the error, never a credential) and is retried with a growing backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from tollway_sidecar.config.models import Backend

__all__ = ["Fetch", "Refreshers", "SourceFactory", "SourceKey", "source_key"]

log = logging.getLogger("tollway.credentials")

Fetch = Callable[[], tuple[str, float]]  # blocking: (credential, expires_at in wall-clock seconds)
SourceFactory = Callable[[Backend], Fetch]
SourceKey = tuple[str, str | None, str | None]  # (source kind, Secret value, region)

DEFAULT_MARGIN_S = 300.0
BACKOFF_BASE_S = 1.0
BACKOFF_MAX_S = 60.0
IDLE_WAKE_S = 60.0  # the loop's longest sleep: it also notices a clock that jumped


def source_key(backend: Backend) -> SourceKey | None:
    """What identifies a backend's source: backends sharing a Secret (and region) share one credential."""
    if backend.credential_source is None:
        return None
    return (backend.credential_source, backend.credential, backend.region)


@dataclass(slots=True)
class _Entry:
    fetch: Fetch
    label: str  # the backend's name, for logs
    value: str | None = None
    expires_at: float = 0.0
    next_at: float = 0.0  # when to fetch next (wall clock)
    failures: int = 0


class Refreshers:
    """The credential of each backend that has a source, kept fresh; the static one for the rest."""

    def __init__(
        self,
        factories: Mapping[str, SourceFactory],
        *,
        clock: Callable[[], float] = time.time,
        margin_s: float = DEFAULT_MARGIN_S,
    ) -> None:
        self._factories = factories
        self._clock = clock
        self._margin_s = margin_s
        self._entries: dict[SourceKey, _Entry] = {}
        self._changed = asyncio.Event()

    def update(self, backends: Iterable[Backend]) -> None:
        """Follow a (re)loaded config: add the sources it names, drop those it no longer does."""
        wanted: dict[SourceKey, Backend] = {}
        for backend in backends:
            key = source_key(backend)
            if key is not None:
                wanted.setdefault(key, backend)
        for key in self._entries.keys() - wanted.keys():
            del self._entries[key]
        for key, backend in wanted.items():
            if key in self._entries:
                continue
            factory = self._factories.get(key[0])
            if factory is None:
                log.error("backend %s: no credential source %r in this sidecar", backend.name, key[0])
                continue
            self._entries[key] = _Entry(factory(backend), backend.name, next_at=self._clock())
        self._changed.set()

    def credential(self, backend: Backend) -> str | None:
        """The credential to send for `backend` now, without blocking; None while it has none."""
        key = source_key(backend)
        if key is None:
            return backend.credential
        entry = self._entries.get(key)
        if entry is None or entry.value is None or self._clock() >= entry.expires_at:
            return None
        return entry.value

    def next_due(self) -> float | None:
        """When the next refresh is due (wall clock), or None with no sources."""
        return min((entry.next_at for entry in self._entries.values()), default=None)

    async def refresh_due(self) -> None:
        """Fetch, in worker threads, every credential whose refresh is due."""
        now = self._clock()
        due = [(key, entry) for key, entry in self._entries.items() if entry.next_at <= now]
        await asyncio.gather(*(self._refresh(key, entry) for key, entry in due))

    async def _refresh(self, key: SourceKey, entry: _Entry) -> None:
        try:
            value, expires_at = await asyncio.to_thread(entry.fetch)
        except Exception as exc:  # any failure of the far side: keep the old value, retry later
            entry.failures += 1
            backoff = min(BACKOFF_BASE_S * 2 ** (entry.failures - 1), BACKOFF_MAX_S)
            entry.next_at = self._clock() + backoff
            reason = str(exc)
            if entry.value:
                reason = reason.replace(entry.value, "<redacted>")
            log.warning(
                "backend %s: credential refresh failed (%s: %s); %s, retrying in %.0fs",
                entry.label,
                type(exc).__name__,
                reason[:300],
                "keeping the current one until it expires" if entry.value else "no credential yet",
                backoff,
            )
            return
        if self._entries.get(key) is not entry:
            return  # the config dropped this source while it was fetching
        now = self._clock()
        entry.value, entry.expires_at, entry.failures = value, expires_at, 0
        margin = min(self._margin_s, max(expires_at - now, 0.0) / 2)
        # Never sooner than the backoff base: a source that hands out expired values cannot spin us.
        entry.next_at = max(expires_at - margin, now + BACKOFF_BASE_S)
        log.info("backend %s: credential refreshed, valid for %.0fs", entry.label, expires_at - now)

    async def run(self) -> None:
        """Refresh credentials as they come due, until cancelled."""
        while True:
            self._changed.clear()  # before fetching: an update during the fetch wakes the next wait
            await self.refresh_due()
            due = self.next_due()
            wait = IDLE_WAKE_S if due is None else min(max(due - self._clock(), 0.0), IDLE_WAKE_S)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), timeout=wait)
