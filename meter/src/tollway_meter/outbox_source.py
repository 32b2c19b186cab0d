"""The outbox source: usage events from a sidecar's in-memory outbox (its admin port) into the ledger.

The same shape as the stream consumer: read a page, dead-letter what does not parse, ingest the
rest in one database transaction, and only after the commit acknowledge up to the page's last
sequence number, which lets the sidecar drop those entries. A meter that dies before the ack reads
the same entries again (from the first unacknowledged one when it restarts) and the ledger ignores
the duplicates. One meter per sidecar: the outbox has no consumer groups.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from tollway_meter import batch
from tollway_meter.batch import Rejected
from tollway_meter.consumer import MeterStats, StepResult
from tollway_meter.ledger import Ledger, LedgerUnavailableError
from tollway_sidecar.contract.usage_outbox import (
    OUTBOX_ACK_PATH,
    OUTBOX_PATH,
    OutboxAck,
    OutboxPage,
    OutboxWireError,
)

log = logging.getLogger("tollway.meter")


class OutboxRefused(Exception):
    """The sidecar answers but has no outbox to give (its store is Redis, or it predates the outbox):
    retrying cannot help."""


class OutboxUnavailable(Exception):
    """The sidecar did not answer as expected this time (restarting, overloaded): retried."""


@dataclass(frozen=True)
class OutboxOptions:
    url: str  # the sidecar's admin port, e.g. http://127.0.0.1:9090
    dead_letter: Path  # JSON lines: the entries that are not valid events, with their reason
    batch: int = 500
    poll_ms: int = 250  # wait this long when the outbox is empty
    timeout_s: float = 10.0
    backoff_initial_s: float = 0.2
    backoff_max_s: float = 30.0


class OutboxConsumer:
    def __init__(self, session: aiohttp.ClientSession, ledger: Ledger, options: OutboxOptions) -> None:
        self.session = session
        self.ledger = ledger
        self.options = options
        self.stats = MeterStats()
        self._outbox: str | None = None  # the sidecar process's outbox being read
        self._after = 0  # the last sequence number acknowledged in it
        self._dropped = 0  # the outbox's overflow count when last read

    async def _get(self, after: int) -> OutboxPage:
        url = f"{self.options.url.rstrip('/')}{OUTBOX_PATH}"
        params = {"after": str(after), "limit": str(self.options.batch)}
        async with self.session.get(url, params=params) as response:
            body = await response.read()
            if response.status in (404, 409):
                raise OutboxRefused(f"{url}: {response.status} {body.decode(errors='replace')}")
            if response.status != 200:
                raise OutboxUnavailable(f"{url}: {response.status} {body.decode(errors='replace')}")
        return OutboxPage.from_json(body)

    async def _read(self) -> OutboxPage:
        page = await self._get(self._after)
        if page.outbox != self._outbox:
            # A sidecar (re)started: its numbering begins again; read its outbox from the start.
            if self._outbox is not None:
                log.warning("the sidecar's outbox changed (%s → %s): it restarted", self._outbox, page.outbox)
            reread = self._after != 0
            self._outbox, self._after, self._dropped = page.outbox, 0, 0
            log.info("reading outbox %s from sequence %d", page.outbox, page.first)
            if reread:
                page = await self._get(0)
        if page.dropped > self._dropped:
            lost = page.dropped - self._dropped
            self.stats.lost += lost
            log.error(
                "%d usage events were dropped by the sidecar's full outbox before they were ingested", lost
            )
            self._dropped = page.dropped
        return page

    async def step(self) -> StepResult:
        """One page. Raises (the page unacknowledged, read again next step) when the ledger fails."""
        page = await self._read()
        if not page.entries:
            return StepResult(0, 0, 0, 0)
        events, rejected = batch.parse_entries((str(e.seq), e.event) for e in page.entries)
        try:
            result = await asyncio.to_thread(batch.ingest, self.ledger, events, rejected)
        except LedgerUnavailableError:
            self.stats.ledger_errors += 1
            raise
        if rejected:
            await asyncio.to_thread(self._dead_letter, page.outbox, rejected)
        # Only now, after the ledger committed and bad entries are kept elsewhere.
        upto = page.entries[-1].seq
        await self._ack(page.outbox, upto)
        self._after = upto
        self.stats.batches += 1
        self.stats.ingested += result.inserted
        self.stats.duplicates += result.duplicates
        self.stats.adjustments += result.adjustments
        self.stats.dead_lettered += len(rejected)
        return StepResult(len(page.entries), result.inserted, result.duplicates, len(rejected))

    async def _ack(self, outbox: str, upto: int) -> None:
        url = f"{self.options.url.rstrip('/')}{OUTBOX_ACK_PATH}"
        ack = OutboxAck(outbox, upto).to_json()
        headers = {"content-type": "application/json"}
        async with self.session.post(url, data=ack, headers=headers) as response:
            body = await response.read()
            if response.status == 409:
                # That sidecar is gone, and its entries with it; they were committed all the same.
                log.warning("ack refused: %s", body.decode(errors="replace"))
            elif response.status != 200:
                raise OutboxUnavailable(f"{url}: {response.status} {body.decode(errors='replace')}")

    def _dead_letter(self, outbox: str, rejected: list[Rejected]) -> None:
        path = self.options.dead_letter
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a", encoding="utf-8") as out:
            for entry in rejected:
                line = {"reason": entry.reason, "entry": entry.entry, "outbox": outbox, "event": entry.raw}
                out.write(json.dumps(line) + "\n")
                log.warning("dead-lettered outbox entry %s: %s", entry.entry, entry.reason)
            out.flush()
            os.fsync(out.fileno())  # kept before the ack lets the sidecar drop them

    async def run(self, stop: asyncio.Event) -> None:
        delay = self.options.backoff_initial_s
        while not stop.is_set():
            try:
                step = await self.step()
                delay = self.options.backoff_initial_s
                if step.read == 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), timeout=self.options.poll_ms / 1000)
            except (
                LedgerUnavailableError,
                OutboxUnavailable,
                OutboxWireError,
                aiohttp.ClientError,
                TimeoutError,
                OSError,
            ) as exc:
                log.warning("meter: %s; retrying in %.1f s (events wait in the outbox)", exc, delay)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=delay)
                delay = min(delay * 2, self.options.backoff_max_s)
