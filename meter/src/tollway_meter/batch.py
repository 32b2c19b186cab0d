"""The step every meter source shares: parse a batch's raw events, keeping what does not parse for
the dead letter with its reason, so one bad entry never blocks the entries behind it."""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

from tollway_sidecar.contract.usage_event import UsageEvent, UsageEventError


class Rejected(NamedTuple):
    entry: str  # the source's id of the entry (a stream id, an outbox sequence number)
    raw: str  # the entry's text as read ("" when it had none)
    reason: str


def parse_entries(
    entries: Iterable[tuple[str, str | None]], missing: str = "no event in the entry"
) -> tuple[list[UsageEvent], list[Rejected]]:
    """(entry id, event JSON or None when the entry carried none) → the events, the rejected
    (`missing` the reason for an entry without an event)."""
    events: list[UsageEvent] = []
    rejected: list[Rejected] = []
    for entry_id, raw in entries:
        if raw is None:
            rejected.append(Rejected(entry_id, "", missing))
            continue
        try:
            events.append(UsageEvent.from_json(raw))
        except UsageEventError as exc:
            rejected.append(Rejected(entry_id, raw, str(exc)))
    return events, rejected
