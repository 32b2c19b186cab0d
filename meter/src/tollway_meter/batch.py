"""The steps every meter source shares: parse a batch's raw events, keeping what does not parse for
the dead letter with its reason, and ingest them so that one bad entry never blocks the entries
behind it — neither one the contract refuses nor one the database refuses."""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

from tollway_meter.ledger import IngestResult, Ledger, LedgerRefusedError
from tollway_sidecar.contract.usage_event import UsageEvent, UsageEventError


class Rejected(NamedTuple):
    entry: str  # the source's id of the entry (a stream id, an outbox sequence number)
    raw: str  # the entry's text as read ("" when it had none)
    reason: str


class Parsed(NamedTuple):
    entry: str
    raw: str
    event: UsageEvent


def parse_entries(
    entries: Iterable[tuple[str, str | None]], missing: str = "no event in the entry"
) -> tuple[list[Parsed], list[Rejected]]:
    """(entry id, event JSON or None when the entry carried none) → the events, the rejected
    (`missing` the reason for an entry without an event)."""
    events: list[Parsed] = []
    rejected: list[Rejected] = []
    for entry_id, raw in entries:
        if raw is None:
            rejected.append(Rejected(entry_id, "", missing))
            continue
        try:
            events.append(Parsed(entry_id, raw, UsageEvent.from_json(raw)))
        except UsageEventError as exc:
            rejected.append(Rejected(entry_id, raw, str(exc)))
    return events, rejected


def ingest(ledger: Ledger, events: list[Parsed], rejected: list[Rejected]) -> IngestResult:
    """The batch in one transaction. If the database refuses it for its data, its events one by
    one, adding those it refuses alone to `rejected`, so one event cannot fail its batch for ever.
    Runs in a worker thread (the ledger's calls block)."""
    try:
        return ledger.ingest([parsed.event for parsed in events])
    except LedgerRefusedError:
        pass
    inserted = duplicates = adjustments = 0
    for parsed in events:
        try:
            one = ledger.ingest([parsed.event])
        except LedgerRefusedError as exc:
            rejected.append(Rejected(parsed.entry, parsed.raw, f"the ledger refused it: {exc}"))
            continue
        inserted, duplicates = inserted + one.inserted, duplicates + one.duplicates
        adjustments += one.adjustments
    return IngestResult(inserted, duplicates, adjustments)
