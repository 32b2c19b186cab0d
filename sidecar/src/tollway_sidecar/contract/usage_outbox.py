"""The in-memory store's outbox on the sidecar's admin port: the wire shape the sidecar serves and
the meter reads (`tollway meter run --outbox URL`), so the two cannot drift.

`GET OUTBOX_PATH?after=N&limit=M` answers a page: the entries after sequence number N, oldest
first. `POST OUTBOX_ACK_PATH {"outbox": ID, "upto": N}` drops every entry up to N once the meter has
committed them. `outbox` names one sidecar process's outbox: its sequence numbers start again at 1
when the sidecar restarts, so an ack for another outbox is refused rather than applied to entries
it never read. Standard library only (the meter imports it).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

OUTBOX_PATH = "/usage/outbox"
OUTBOX_ACK_PATH = "/usage/outbox/ack"
OUTBOX_PAGE_MAX = 5_000  # entries per page at most, whatever `limit` asks


class OutboxWireError(ValueError):
    """A page or an ack that does not have the contract's shape (the message names the field)."""


@dataclass(frozen=True, slots=True)
class OutboxEntry:
    seq: int
    event: str  # a usage event's JSON, as the store appended it


@dataclass(frozen=True, slots=True)
class OutboxPage:
    outbox: str
    entries: tuple[OutboxEntry, ...]
    first: int  # the oldest sequence number still kept (== next when empty)
    next: int  # the sequence number the next event will get
    dropped: int  # unacknowledged events dropped since start because the outbox was full

    def to_json(self) -> str:
        return json.dumps(
            {
                "outbox": self.outbox,
                "entries": [{"seq": e.seq, "event": e.event} for e in self.entries],
                "first": self.first,
                "next": self.next,
                "dropped": self.dropped,
            },
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> OutboxPage:
        body = _object(text, "page")
        entries = body.get("entries")
        if not isinstance(entries, list):
            raise OutboxWireError("entries: expected a list")
        parsed = []
        for i, raw in enumerate(entries):
            if not isinstance(raw, dict):
                raise OutboxWireError(f"entries[{i}]: expected an object")
            event = raw.get("event")
            if not isinstance(event, str):
                raise OutboxWireError(f"entries[{i}].event: expected a string")
            parsed.append(OutboxEntry(_count(raw, "seq", f"entries[{i}].seq"), event))
        return cls(
            _outbox_id(body),
            tuple(parsed),
            _count(body, "first", "first"),
            _count(body, "next", "next"),
            _count(body, "dropped", "dropped"),
        )


@dataclass(frozen=True, slots=True)
class OutboxAck:
    outbox: str
    upto: int

    def to_json(self) -> str:
        return json.dumps({"outbox": self.outbox, "upto": self.upto}, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> OutboxAck:
        body = _object(text, "ack")
        return cls(_outbox_id(body), _count(body, "upto", "upto"))


def _object(text: str | bytes, what: str) -> dict[str, Any]:
    try:
        body = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise OutboxWireError(f"{what}: not JSON ({exc})") from None
    if not isinstance(body, dict):
        raise OutboxWireError(f"{what}: expected a JSON object")
    return body


def _outbox_id(body: dict[str, Any]) -> str:
    value = body.get("outbox")
    if not isinstance(value, str) or not value:
        raise OutboxWireError("outbox: expected the outbox id (a non-empty string)")
    return value


def _count(body: dict[str, Any], name: str, where: str) -> int:
    value = body.get(name)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise OutboxWireError(f"{where}: expected an integer >= 0, got {value!r}")
    return value
