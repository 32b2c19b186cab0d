"""The ledger: one transaction per batch inserts new events (duplicates ignored by event id), folds
only the newly inserted ones into the hourly roll-ups, and books late events as adjustments.

Two back ends behind one class: SQLite (the embedded file `tollway dev` uses) and PostgreSQL (a
cluster). They differ only in the hooks at the bottom of each subclass; the SQL is shared.
"""

from __future__ import annotations

import abc
import contextlib
import sqlite3
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from tollway_meter import migrations
from tollway_meter.rows import (
    ROLLUP_DIMENSIONS,
    ROLLUP_MEASURES,
    EventRow,
    content_row,
    event_row,
    next_period,
    parse_period,
    period_of,
    period_start,
    rollup_deltas,
)
from tollway_sidecar.contract.usage_event import UsageEvent

_EVENT_COLUMNS = (
    "id",
    "event_time",
    "booked_period",
    "adjustment",
    "hour",
    *ROLLUP_DIMENSIONS,
    *ROLLUP_MEASURES,
    "session_id",
    "end_user",
    "status",
    "outcome",
    "latency_ms",
    "request_id",
    "trace_id",
    "event",
)
# The events' PostgreSQL types in `_EVENT_COLUMNS` order, for the binary COPY.
_EVENT_TYPES = (
    "uuid",
    "timestamptz",
    "text",
    "bool",
    "timestamptz",
    *(["text"] * len(ROLLUP_DIMENSIONS)),
    *(["int8"] * len(ROLLUP_MEASURES)),
    "text",
    "text",
    "int4",
    "text",
    "int8",
    "text",
    "text",
    "jsonb",
)
_CONTENT_COLUMNS = ("event_id", "namespace", "event_time", "expires_at", "prompt", "completion")
_ROLLUP_COLUMNS = ("hour", "period", "adjustment", *ROLLUP_DIMENSIONS, *ROLLUP_MEASURES)
_ROLLUP_UPSERT = (
    f"INSERT INTO usage_hourly ({', '.join(_ROLLUP_COLUMNS)}) "
    f"VALUES ({', '.join(['%s'] * len(_ROLLUP_COLUMNS))}) "
    f"ON CONFLICT ({', '.join(('hour', 'adjustment', *ROLLUP_DIMENSIONS))}) DO UPDATE SET "
    + ", ".join(f"{m} = usage_hourly.{m} + excluded.{m}" for m in ROLLUP_MEASURES)
)


class PeriodClosedError(RuntimeError):
    """The database refused a write into a closed period."""


class LedgerUnavailableError(RuntimeError):
    """The database cannot be reached; the batch stays in the stream and is retried."""


class LedgerRefusedError(RuntimeError):
    """The database refused the data itself (a constraint, a value it cannot store): retrying the
    same batch would fail forever, so the consumer isolates the event that causes it."""


@dataclass(frozen=True)
class IngestResult:
    inserted: int
    duplicates: int
    adjustments: int


class Ledger(abc.ABC):
    """A ledger connection. Not thread-safe: one per meter worker (the consumer runs it off-loop)."""

    dialect: str
    placeholder = "%s"

    @staticmethod
    def open(dsn: str) -> Ledger:
        """`postgresql://…` → PostgreSQL; `sqlite:///path` or a file path → SQLite."""
        if dsn.startswith(("postgresql://", "postgres://")):
            return PostgresLedger(dsn)
        path = dsn.removeprefix("sqlite:///").removeprefix("sqlite://")
        return SqliteLedger(path)

    # --- schema ---

    def migrate(self) -> int:
        """Apply every pending migration; returns the schema version."""
        with self.transaction(exclusive=True) as cur:
            cur.execute(migrations.SCHEMA_VERSION_TABLE)
            cur.execute("SELECT coalesce(max(version), 0) FROM schema_version")
            row = cur.fetchone()
            current = int(row[0]) if row else 0
            for migration in migrations.pending(self.migrations(), current):
                for statement in migration.statements:
                    cur.execute(statement)
                cur.execute(
                    self.sql(
                        "INSERT INTO schema_version (version, description, applied_at) VALUES (%s, %s, %s)"
                    ),
                    (migration.version, migration.description, datetime.now(UTC).isoformat()),
                )
                current = migration.version
        return current

    def schema_version(self) -> int:
        with self.transaction(readonly=True) as cur:
            cur.execute("SELECT coalesce(max(version), 0) FROM schema_version")
            row = cur.fetchone()
            return int(row[0]) if row else 0

    # --- writes ---

    def ingest(self, events: Sequence[UsageEvent]) -> IngestResult:
        """Insert the batch in one transaction; re-ingesting any of it changes nothing."""
        if not events:
            return IngestResult(0, 0, 0)  # a batch of only dead letters needs no database
        # By id: concurrent meters lock the same ids in one order (no deadlock on the dedupe).
        unique = sorted({event.id: event for event in events}.items())
        self.prepare({period_of(event.time) for _id, event in unique})
        with self.transaction() as cur:
            self.lock_shared(cur)
            closed = self.closed_in(cur)
            new = self.insert_new(cur, [event for _id, event in unique], closed)
            self.insert_content(cur, [event for _id, event in unique], new)
            deltas = rollup_deltas(new)
            if deltas:
                cur.executemany(
                    self.sql(_ROLLUP_UPSERT),
                    [
                        (self.time(d.hour), d.period, self.flag(d.adjustment), *d.dims, *d.measures)
                        for d in deltas
                    ],
                )
        return IngestResult(
            inserted=len(new),
            duplicates=len(events) - len(new),
            adjustments=sum(1 for row in new if row.adjustment),
        )

    def insert_content(self, cur: Any, events: Sequence[UsageEvent], new: Sequence[EventRow]) -> None:
        """The captured content of the newly inserted events (a duplicate's was written the first time)."""
        fresh = {row.id for row in new}
        rows = [row for event in events if str(event.id) in fresh and (row := content_row(event)) is not None]
        if rows:
            cur.executemany(
                self.sql(
                    f"INSERT INTO captured_content ({', '.join(_CONTENT_COLUMNS)}) "
                    f"VALUES ({', '.join(['%s'] * len(_CONTENT_COLUMNS))})"
                ),
                [
                    (
                        self.uuid(r.event_id),
                        r.namespace,
                        self.time(r.event_time),
                        self.time(r.expires_at),
                        r.prompt,
                        r.completion,
                    )
                    for r in rows
                ],
            )

    def close_period(self, period: str) -> None:
        """Freeze a month: from now on the database refuses any change to its rows."""
        parse_period(period)
        with self.transaction() as cur:
            self.lock_exclusive(cur)
            if period in self.closed_in(cur):
                raise PeriodClosedError(f"period {period} is already closed")
            cur.execute(self.sql("INSERT INTO periods (period) VALUES (%s)"), (period,))

    def closed_periods(self) -> frozenset[str]:
        with self.transaction(readonly=True) as cur:
            return self.closed_in(cur)

    def closed_in(self, cur: Any) -> frozenset[str]:
        cur.execute("SELECT period FROM periods")
        return frozenset(str(row[0]) for row in cur.fetchall())

    def booked_periods(self) -> frozenset[str]:
        """Every period the roll-ups hold (open or closed)."""
        with self.transaction(readonly=True) as cur:
            cur.execute("SELECT DISTINCT period FROM usage_hourly")
            return frozenset(str(row[0]) for row in cur.fetchall())

    def event_values(self, row: EventRow) -> tuple[object, ...]:
        return (
            self.uuid(row.id),
            self.time(row.event_time),
            row.booked_period,
            self.flag(row.adjustment),
            self.time(row.hour),
            *row.dims,
            *row.measures,
            row.session_id,
            row.end_user,
            row.status,
            row.outcome,
            row.latency_ms,
            row.request_id,
            row.trace_id,
            row.event_json,
        )

    # --- dialect hooks ---

    def sql(self, text: str) -> str:
        return text if self.placeholder == "%s" else text.replace("%s", self.placeholder)

    @abc.abstractmethod
    def migrations(self) -> tuple[migrations.Migration, ...]: ...

    @abc.abstractmethod
    @contextlib.contextmanager
    def transaction(self, *, exclusive: bool = False, readonly: bool = False) -> Iterator[Any]:
        """One transaction. `exclusive`: serialised with other exclusive ones (migrations).
        `readonly`: one consistent snapshot for several reads, taking no write lock."""

    @abc.abstractmethod
    def lock_shared(self, cur: Any) -> None: ...

    @abc.abstractmethod
    def lock_exclusive(self, cur: Any) -> None: ...

    @abc.abstractmethod
    def insert_new(self, cur: Any, events: Sequence[UsageEvent], closed: frozenset[str]) -> list[EventRow]:
        """Insert the events the ledger has not seen (`events` has no id twice); their rows."""

    @abc.abstractmethod
    def known_ids(self, cur: Any, ids: Sequence[str]) -> frozenset[str]:
        """The ids among `ids` the ledger has seen (also those whose detail retention removed)."""

    @abc.abstractmethod
    def prepare(self, periods: set[str]) -> None:
        """Anything to do outside the batch's transaction before it (PostgreSQL: partitions)."""

    @abc.abstractmethod
    def time(self, moment: datetime) -> object: ...

    def flag(self, value: bool) -> object:
        return value

    def uuid(self, text: str) -> object:
        return text

    @abc.abstractmethod
    def close(self) -> None: ...


def sqlite_time(moment: datetime) -> str:
    """Fixed-width UTC text, so SQLite compares times as strings in time order."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class SqliteLedger(Ledger):
    dialect = "sqlite"
    placeholder = "?"

    def __init__(self, path: str) -> None:
        try:
            # isolation_level=None: transactions are ours (BEGIN IMMEDIATE), not the module's guesses.
            self.conn = sqlite3.connect(path, isolation_level=None, timeout=30, check_same_thread=False)
        except sqlite3.OperationalError as exc:
            raise LedgerUnavailableError(f"sqlite {path}: {exc}") from exc
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA foreign_keys=ON")

    def migrations(self) -> tuple[migrations.Migration, ...]:
        return migrations.SQLITE

    @contextlib.contextmanager
    def transaction(self, *, exclusive: bool = False, readonly: bool = False) -> Iterator[Any]:
        cur = self.conn.cursor()
        try:
            # IMMEDIATE: the write lock up front, so the period check and the inserts see one state.
            # A reader in WAL mode gets a snapshot from a plain BEGIN and waits for no writer.
            cur.execute("BEGIN" if readonly else "BEGIN IMMEDIATE")
            yield cur
            cur.execute("COMMIT")
        except sqlite3.IntegrityError as exc:
            self.conn.rollback()
            if "period is closed" in str(exc):
                raise PeriodClosedError(str(exc)) from exc
            raise LedgerRefusedError(f"sqlite: {exc}") from exc
        except sqlite3.DataError as exc:
            self.conn.rollback()
            raise LedgerRefusedError(f"sqlite: {exc}") from exc
        except sqlite3.OperationalError as exc:
            if self.conn.in_transaction:
                self.conn.rollback()
            if "locked" in str(exc) or "unable to open" in str(exc):
                raise LedgerUnavailableError(f"sqlite: {exc}") from exc
            raise
        except BaseException:
            if self.conn.in_transaction:
                self.conn.rollback()
            raise
        finally:
            cur.close()

    def prepare(self, periods: set[str]) -> None:
        """One file, no partitions."""

    def lock_shared(self, cur: Any) -> None:
        """BEGIN IMMEDIATE already serialises writers."""

    def lock_exclusive(self, cur: Any) -> None:
        """BEGIN IMMEDIATE already serialises writers."""

    def insert_new(self, cur: Any, events: Sequence[UsageEvent], closed: frozenset[str]) -> list[EventRow]:
        # BEGIN IMMEDIATE holds the only write lock: the ids known now stay the only ones known, so
        # one lookup and one executemany replace a statement per event. No ON CONFLICT: a conflict
        # here would be a bug, refused rather than silently left out of the roll-ups.
        known = self.known_ids(cur, [str(event.id) for event in events])
        new = [event_row(event, closed) for event in events if str(event.id) not in known]
        if new:
            cur.executemany(
                self.sql(
                    f"INSERT INTO usage_events ({', '.join(_EVENT_COLUMNS)}) "
                    f"VALUES ({', '.join(['%s'] * len(_EVENT_COLUMNS))})"
                ),
                [self.event_values(row) for row in new],
            )
        return new

    def known_ids(self, cur: Any, ids: Sequence[str]) -> frozenset[str]:
        found: set[str] = set()
        for start in range(0, len(ids), 500):  # SQLite's bound on parameters per statement
            chunk = list(ids[start : start + 500])
            marks = ", ".join("?" * len(chunk))
            cur.execute(
                f"SELECT id FROM usage_events WHERE id IN ({marks}) "
                f"UNION SELECT id FROM retired_events WHERE id IN ({marks})",
                (*chunk, *chunk),
            )
            found.update(str(row[0]) for row in cur.fetchall())
        return frozenset(found)

    def time(self, moment: datetime) -> object:
        return sqlite_time(moment)

    def flag(self, value: bool) -> object:
        return 1 if value else 0

    def close(self) -> None:
        self.conn.close()


# The advisory lock key ingest (shared) and close (exclusive) take: a close waits for batches in
# flight and a batch never writes into a period closed after it read the closed set.
_PERIOD_LOCK = 0x7011_3E7E


class PostgresLedger(Ledger):
    dialect = "postgresql"

    def __init__(self, dsn: str) -> None:
        import psycopg

        self._psycopg = psycopg
        self.dsn = dsn
        self.conn = self._connect()

    def _connect(self) -> Any:
        from psycopg.adapt import Dumper
        from psycopg.pq import Format

        class JsonbText(Dumper):
            """The event's JSON, already text, as a binary jsonb (format version 1, then the text):
            psycopg's own jsonb dumper would serialise the str again, as a JSON string."""

            format = Format.BINARY

            def dump(self, obj: Any) -> bytes:
                return b"\x01" + str(obj).encode()

        try:
            conn = self._psycopg.connect(self.dsn, connect_timeout=5)
        except self._psycopg.OperationalError as exc:
            raise LedgerUnavailableError(f"postgresql: {exc}") from exc
        JsonbText.oid = conn.adapters.types["jsonb"].oid
        # By oid only: used where the column's type is known (the COPY's `set_types`), never for a str.
        conn.adapters.register_dumper(None, JsonbText)
        return conn

    def migrations(self) -> tuple[migrations.Migration, ...]:
        return migrations.POSTGRES

    @contextlib.contextmanager
    def transaction(self, *, exclusive: bool = False, readonly: bool = False) -> Iterator[Any]:
        psycopg = self._psycopg
        if self.conn.closed or self.conn.broken:
            self._reconnect()
        try:
            with self.conn.transaction(), self.conn.cursor() as cur:
                if readonly:
                    # One snapshot: an invoice's lines and its total are read from the same state.
                    cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                if exclusive:
                    cur.execute("SELECT pg_advisory_xact_lock(%s)", (_PERIOD_LOCK + 1,))
                yield cur
        except psycopg.errors.CheckViolation as exc:
            if "is closed" in str(exc):
                raise PeriodClosedError(str(exc).splitlines()[0]) from exc
            if "no partition of relation" in str(exc):
                # Retention dropped the month between `prepare` and the COPY: the retry makes it again.
                raise LedgerUnavailableError(f"postgresql: {exc}") from exc
            raise LedgerRefusedError(f"postgresql: {str(exc).splitlines()[0]}") from exc
        except (psycopg.IntegrityError, psycopg.DataError) as exc:
            raise LedgerRefusedError(f"postgresql: {str(exc).splitlines()[0]}") from exc
        except psycopg.OperationalError as exc:
            raise LedgerUnavailableError(f"postgresql: {exc}") from exc

    def _reconnect(self) -> None:
        self.conn = self._connect()

    def lock_shared(self, cur: Any) -> None:
        cur.execute("SELECT pg_advisory_xact_lock_shared(%s)", (_PERIOD_LOCK,))

    def lock_exclusive(self, cur: Any) -> None:
        cur.execute("SELECT pg_advisory_xact_lock(%s)", (_PERIOD_LOCK,))

    def prepare(self, periods: set[str]) -> None:
        """Make sure each month's partition exists, in its own transaction (DDL locks the parent).

        Checked every batch, not cached: retention may drop a partition that a late event needs.
        """
        names = {period: "usage_events_" + period.replace("-", "_") for period in periods}
        with self.transaction() as cur:
            cur.execute(
                "SELECT n FROM unnest(%s::text[]) AS n WHERE to_regclass(n) IS NULL", (list(names.values()),)
            )
            if not cur.fetchall():
                return
        with self.transaction() as cur:
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (_PERIOD_LOCK + 2,))
            for period, name in sorted(names.items()):
                cur.execute("SELECT to_regclass(%s)", (name,))
                found = cur.fetchone()
                if found is None or found[0] is None:
                    start, end = period_start(period), period_start(next_period(period))
                    # Identifiers cannot be parameters; `name` is built from a validated YYYY-MM.
                    cur.execute(
                        f"CREATE TABLE {name} PARTITION OF usage_events "
                        f"FOR VALUES FROM ('{start.isoformat()}') TO ('{end.isoformat()}')"
                    )

    def insert_new(self, cur: Any, events: Sequence[UsageEvent], closed: frozenset[str]) -> list[EventRow]:
        if not events:
            return []
        # The gate decides which ids are new (a concurrent replica's insert of the same id waits for
        # that transaction, then conflicts); only those rows are copied into the events table.
        # Binary parameters: psycopg's C dumpers, ~6x cheaper than its text arrays for 500 ids.
        cur.execute(
            "INSERT INTO event_ids (id, event_time) SELECT * FROM unnest(%b::uuid[], %b::timestamptz[]) "
            "ON CONFLICT (id) DO NOTHING RETURNING id",
            ([event.id for event in events], [event.time for event in events]),
        )
        fresh = {found[0] for found in cur.fetchall()}
        new: list[EventRow] = []
        if fresh:
            # Each row is built as it is written: the COPY sends every 32 KB, so the server indexes
            # the rows already sent while this thread serialises the next ones. Binary: half the
            # client's formatting, and no text parsing of times and numbers on the server.
            columns = ", ".join(_EVENT_COLUMNS)
            with cur.copy(f"COPY usage_events ({columns}) FROM STDIN (FORMAT BINARY)") as copy:
                copy.set_types(_EVENT_TYPES)
                for event in events:
                    if event.id in fresh:
                        row = event_row(event, closed)
                        copy.write_row(self.event_values(row))
                        new.append(row)
        return new

    def known_ids(self, cur: Any, ids: Sequence[str]) -> frozenset[str]:
        # The gate, not the events: it keeps the ids of months whose partitions were dropped.
        cur.execute("SELECT id FROM event_ids WHERE id = ANY(%s::uuid[])", (list(ids),))
        return frozenset(str(row[0]) for row in cur.fetchall())

    def time(self, moment: datetime) -> object:
        return moment

    def uuid(self, text: str) -> object:
        return uuid.UUID(text)

    def close(self) -> None:
        self.conn.close()
