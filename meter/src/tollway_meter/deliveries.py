"""Each cost report's delivery of one period to one channel, at most one sender at a time and sent
once: a row in `report_deliveries`, claimed under a lease.

A claim is one statement: an INSERT of a new row, or ON CONFLICT an UPDATE of a row that is not
sent, whose lease has run out and that has attempts left. Two schedulers racing for a row serialise
on it (PostgreSQL's row lock; SQLite's one writer); only one gets it back. The sender marks the row
sent (only while it still holds it) once the channel accepted the message.

The window no protocol closes: a sender that dies after the channel accepted the message and before
the row says sent leaves the row claimed. After the lease runs out another scheduler claims it
again and sends again, with the same delivery id (a webhook's `Idempotency-Key`, an e-mail's
Message-ID): a receiver that keys on it sees one delivery; a mailbox may show the e-mail twice.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from tollway_meter.ledger import Ledger

MAX_ATTEMPTS = 5
# The delivery ids are UUIDv5 names under this namespace: stable across retries and schedulers.
_IDS = uuid.UUID("5f0c2a0e-8d1b-4c57-9a61-7d0e3c2b9f10")
_PK = "report_namespace = %s AND report_name = %s AND period = %s AND channel = %s"


@dataclass(frozen=True)
class DeliveryKey:
    namespace: str
    name: str
    period: str
    channel: str

    @property
    def id(self) -> str:
        return str(uuid.uuid5(_IDS, f"{self.namespace}/{self.name}/{self.period}/{self.channel}"))

    def values(self) -> tuple[str, str, str, str]:
        return (self.namespace, self.name, self.period, self.channel)


@dataclass(frozen=True)
class Claim:
    key: DeliveryKey
    owner: str
    attempt: int  # 1 for the first send


@dataclass(frozen=True)
class Delivery:
    key: DeliveryKey
    state: str
    claimed_by: str
    attempts: int
    last_error: str
    sent_at: str | None


def claim(ledger: Ledger, key: DeliveryKey, owner: str, now: datetime, lease: timedelta) -> Claim | None:
    """The delivery, if nobody holds it, it is not sent and it has attempts left; else None."""
    sql = (
        "INSERT INTO report_deliveries (report_namespace, report_name, period, channel, delivery_id, "
        "state, claimed_by, lease_until, attempts, last_error) "
        "VALUES (%s, %s, %s, %s, %s, 'claimed', %s, %s, 1, '') "
        "ON CONFLICT (report_namespace, report_name, period, channel) DO UPDATE SET state = 'claimed', "
        "claimed_by = excluded.claimed_by, lease_until = excluded.lease_until, "
        "attempts = report_deliveries.attempts + 1 "
        "WHERE report_deliveries.state <> 'sent' AND report_deliveries.lease_until <= %s "
        "AND report_deliveries.attempts < %s RETURNING attempts"
    )
    params = (*key.values(), key.id, owner, ledger.time(now + lease), ledger.time(now), MAX_ATTEMPTS)
    with ledger.transaction() as cur:
        cur.execute(ledger.sql(sql), params)
        row = cur.fetchone()
    return None if row is None else Claim(key, owner, int(row[0]))


def mark_sent(ledger: Ledger, held: Claim, now: datetime) -> bool:
    """Record the send; False if the claim was lost (the lease ran out and another took it)."""
    sql = (
        f"UPDATE report_deliveries SET state = 'sent', sent_at = %s, last_error = '' WHERE {_PK} "
        "AND claimed_by = %s AND attempts = %s AND state = 'claimed'"
    )
    with ledger.transaction() as cur:
        cur.execute(ledger.sql(sql), (ledger.time(now), *held.key.values(), held.owner, held.attempt))
        return bool(cur.rowcount == 1)


def mark_failed(ledger: Ledger, held: Claim, error: str, retry_at: datetime) -> None:
    """Give the delivery back with the reason; it may be claimed again from `retry_at`."""
    sql = (
        f"UPDATE report_deliveries SET state = 'failed', last_error = %s, lease_until = %s WHERE {_PK} "
        "AND claimed_by = %s AND attempts = %s AND state = 'claimed'"
    )
    with ledger.transaction() as cur:
        cur.execute(
            ledger.sql(sql),
            (error[:1000], ledger.time(retry_at), *held.key.values(), held.owner, held.attempt),
        )


def deliveries(ledger: Ledger, namespace: str, name: str) -> list[Delivery]:
    """A report's deliveries, newest period first (what a status shows)."""
    sql = (
        "SELECT period, channel, state, claimed_by, attempts, last_error, sent_at FROM report_deliveries "
        "WHERE report_namespace = %s AND report_name = %s ORDER BY period DESC, channel"
    )
    with ledger.transaction(readonly=True) as cur:
        cur.execute(ledger.sql(sql), (namespace, name))
        return [
            Delivery(
                DeliveryKey(namespace, name, str(r[0]), str(r[1])),
                str(r[2]),
                str(r[3]),
                int(r[4]),
                str(r[5]),
                None if r[6] is None else str(r[6]),
            )
            for r in cur.fetchall()
        ]
