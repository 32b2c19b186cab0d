"""Versioned schema migrations: a numbered list of SQL scripts per dialect, applied in order.

Each migration runs inside one transaction together with its row in `schema_version`, so a meter
that dies half-way leaves the schema at the previous version. Two meters starting at once
serialise on a lock (PostgreSQL: an advisory lock; SQLite: BEGIN IMMEDIATE). A released migration
is never edited: a change is a new number.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class Migration:
    version: int
    description: str
    statements: tuple[str, ...]


class Cursor(Protocol):
    def execute(self, sql: str, params: tuple[object, ...] = ...) -> object: ...
    def fetchone(self) -> tuple[object, ...] | None: ...


_MEASURES = """
    requests bigint NOT NULL,
    billable_requests bigint NOT NULL,
    cost_nanos bigint NOT NULL,
    input_tokens bigint NOT NULL,
    output_tokens bigint NOT NULL,
    cached_read_tokens bigint NOT NULL,
    cache_write_tokens bigint NOT NULL,
    reasoning_tokens bigint NOT NULL"""

_DIMS = """
    namespace text NOT NULL,
    key_name text NOT NULL,
    team text NOT NULL,
    user_id text NOT NULL,
    route text NOT NULL,
    model text NOT NULL,
    backend text NOT NULL,
    provider text NOT NULL"""

_ROLLUP_PK = (
    "PRIMARY KEY (hour, adjustment, namespace, key_name, team, user_id, route, model, backend, provider)"
)


def _pg_freeze(table: str, column: str) -> tuple[str, ...]:
    """A row trigger refusing any change to `table`'s rows of a closed period. One function per
    table, reading the column directly: the hot path is every inserted event."""
    check = """
                IF EXISTS (SELECT 1 FROM periods WHERE period = {row}.{column}) THEN
                    RAISE EXCEPTION 'period % is closed: its rows in {table} are frozen', {row}.{column}
                        USING ERRCODE = 'check_violation';
                END IF;"""
    return (
        f"""CREATE FUNCTION {table}_refuse_closed() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF TG_OP <> 'INSERT' THEN{check.format(row="OLD", column=column, table=table)}
                END IF;
                IF TG_OP <> 'DELETE' THEN{check.format(row="NEW", column=column, table=table)}
                    RETURN NEW;
                END IF;
                RETURN OLD;
            END $$""",
        f"""CREATE TRIGGER {table}_frozen BEFORE INSERT OR UPDATE OR DELETE ON {table}
            FOR EACH ROW EXECUTE FUNCTION {table}_refuse_closed()""",
    )


# The console's filters: each equality filter with the list's order (newest first), so a filtered
# page is an index range scan, not a sort of the range.
_CONSOLE_FILTERS = ("namespace", "key_name", "team", "user_id", "end_user", "model", "status", "session_id")


def _console_indexes() -> tuple[str, ...]:
    return (
        "CREATE INDEX usage_events_time_id ON usage_events (event_time DESC, id DESC)",
        *(
            f"CREATE INDEX usage_events_{column}_time ON usage_events ({column}, event_time DESC, id DESC)"
            for column in _CONSOLE_FILTERS
        ),
    )


POSTGRES: tuple[Migration, ...] = (
    Migration(
        1,
        "events (monthly partitions), event id gate, hourly roll-ups, periods frozen by the database",
        (
            # Only closed periods have a row: an absent month is open. A closed period never reopens.
            """CREATE TABLE periods (
                period text PRIMARY KEY CHECK (period ~ '^[0-9]{4}-(0[1-9]|1[0-2])$'),
                closed_at timestamptz NOT NULL DEFAULT now())""",
            # The dedupe gate: a partitioned table's primary key must include the partition key, so
            # usage_events alone could only refuse a repeated (id, time), not a repeated id.
            """CREATE TABLE event_ids (id uuid PRIMARY KEY, event_time timestamptz NOT NULL)""",
            f"""CREATE TABLE usage_events (
                id uuid NOT NULL,
                event_time timestamptz NOT NULL,
                booked_period text NOT NULL,
                adjustment boolean NOT NULL,
                hour timestamptz NOT NULL,{_DIMS},{_MEASURES},
                session_id text NOT NULL,
                end_user text NOT NULL,
                status integer NOT NULL,
                outcome text NOT NULL,
                latency_ms bigint NOT NULL,
                request_id text NOT NULL,
                trace_id text NOT NULL,
                event jsonb NOT NULL,
                PRIMARY KEY (id, event_time)
            ) PARTITION BY RANGE (event_time)""",
            "CREATE INDEX usage_events_cost ON usage_events (cost_nanos DESC)",
            f"""CREATE TABLE usage_hourly (
                hour timestamptz NOT NULL,
                period text NOT NULL,
                adjustment boolean NOT NULL,{_DIMS},{_MEASURES},
                {_ROLLUP_PK})""",
            "CREATE INDEX usage_hourly_period ON usage_hourly (period)",
            *_pg_freeze("usage_hourly", "period"),
            *_pg_freeze("usage_events", "booked_period"),
            """CREATE FUNCTION periods_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                RAISE EXCEPTION 'period % is closed: closed periods never change', OLD.period
                    USING ERRCODE = 'check_violation';
            END $$""",
            """CREATE TRIGGER periods_frozen BEFORE UPDATE OR DELETE ON periods
                FOR EACH ROW EXECUTE FUNCTION periods_refuse_change()""",
            # TRUNCATE skips row triggers: refuse it on the frozen tables outright.
            """CREATE FUNCTION tollway_refuse_truncate() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                RAISE EXCEPTION 'TRUNCATE % is refused: drop a month partition instead', TG_TABLE_NAME;
            END $$""",
            """CREATE TRIGGER usage_hourly_no_truncate BEFORE TRUNCATE ON usage_hourly
                FOR EACH STATEMENT EXECUTE FUNCTION tollway_refuse_truncate()""",
            """CREATE TRIGGER periods_no_truncate BEFORE TRUNCATE ON periods
                FOR EACH STATEMENT EXECUTE FUNCTION tollway_refuse_truncate()""",
        ),
    ),
    Migration(
        2,
        "console indexes: each request-list filter in time order; properties by containment (GIN)",
        (
            *_console_indexes(),
            "CREATE INDEX usage_events_properties ON usage_events "
            "USING gin ((event->'data'->'properties') jsonb_path_ops)",
        ),
    ),
    # Keeps both dialects' numbers in step, so one number names one schema change everywhere;
    # SQLite's migration 3 is already part of PostgreSQL's 2.
    Migration(3, "console indexes (part of migration 2 on PostgreSQL)", ()),
    Migration(
        4,
        "captured content: its own table, with its own retention",
        (
            # By the dedupe gate's id: the events' own key includes the partition's time. No freeze
            # trigger: content expires on its own clock, closed period or not.
            """CREATE TABLE captured_content (
                event_id uuid PRIMARY KEY REFERENCES event_ids (id),
                namespace text NOT NULL,
                event_time timestamptz NOT NULL,
                expires_at timestamptz NOT NULL,
                prompt text NOT NULL,
                completion text NOT NULL)""",
            "CREATE INDEX captured_content_expires ON captured_content (expires_at)",
        ),
    ),
)


def _sqlite_freeze(table: str, column: str) -> tuple[str, ...]:
    closed = "SELECT 1 FROM periods WHERE period = {row}." + column
    message = f"'period is closed: its rows in {table} are frozen'"
    return (
        f"""CREATE TRIGGER {table}_frozen_insert BEFORE INSERT ON {table}
            WHEN EXISTS ({closed.format(row="NEW")})
            BEGIN SELECT RAISE(ABORT, {message}); END""",
        f"""CREATE TRIGGER {table}_frozen_update BEFORE UPDATE ON {table}
            WHEN EXISTS ({closed.format(row="OLD")}) OR EXISTS ({closed.format(row="NEW")})
            BEGIN SELECT RAISE(ABORT, {message}); END""",
        f"""CREATE TRIGGER {table}_frozen_delete BEFORE DELETE ON {table}
            WHEN EXISTS ({closed.format(row="OLD")})
            BEGIN SELECT RAISE(ABORT, {message}); END""",
    )


SQLITE: tuple[Migration, ...] = (
    Migration(
        1,
        "events, hourly roll-ups, periods with a database-enforced freeze",
        (
            """CREATE TABLE periods (
                period text PRIMARY KEY CHECK (period GLOB '[0-9][0-9][0-9][0-9]-[01][0-9]'),
                closed_at text NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')))""",
            # One file, no partitions: the event id alone is the primary key (the dedupe).
            f"""CREATE TABLE usage_events (
                id text PRIMARY KEY,
                event_time text NOT NULL,
                booked_period text NOT NULL,
                adjustment integer NOT NULL,
                hour text NOT NULL,{_DIMS},{_MEASURES},
                session_id text NOT NULL,
                end_user text NOT NULL,
                status integer NOT NULL,
                outcome text NOT NULL,
                latency_ms integer NOT NULL,
                request_id text NOT NULL,
                trace_id text NOT NULL,
                event text NOT NULL)""",
            "CREATE INDEX usage_events_time ON usage_events (event_time)",
            "CREATE INDEX usage_events_cost ON usage_events (cost_nanos DESC)",
            f"""CREATE TABLE usage_hourly (
                hour text NOT NULL,
                period text NOT NULL,
                adjustment integer NOT NULL,{_DIMS},{_MEASURES},
                {_ROLLUP_PK})""",
            "CREATE INDEX usage_hourly_period ON usage_hourly (period)",
            *_sqlite_freeze("usage_hourly", "period"),
            *_sqlite_freeze("usage_events", "booked_period"),
            """CREATE TRIGGER periods_frozen_update BEFORE UPDATE ON periods
                BEGIN SELECT RAISE(ABORT, 'period is closed: closed periods never change'); END""",
            """CREATE TRIGGER periods_frozen_delete BEFORE DELETE ON periods
                BEGIN SELECT RAISE(ABORT, 'period is closed: closed periods never change'); END""",
        ),
    ),
)

SQLITE += (
    Migration(
        2,
        "retention: the ids of deleted detail rows keep deduplicating, and only they may be deleted",
        (
            # SQLite's dedupe is the events' primary key: a retired row's id moves here first, so a
            # replay of an old event still counts nothing (PostgreSQL keeps its event_ids gate).
            "CREATE TABLE retired_events (id text PRIMARY KEY, event_time text NOT NULL)",
            """CREATE TRIGGER usage_events_retired BEFORE INSERT ON usage_events
                WHEN EXISTS (SELECT 1 FROM retired_events WHERE id = NEW.id)
                BEGIN SELECT RAISE(IGNORE); END""",
            # A closed period's detail may be deleted only once its id is retired: the roll-ups,
            # which the invoices read, stay frozen either way.
            "DROP TRIGGER usage_events_frozen_delete",
            """CREATE TRIGGER usage_events_frozen_delete BEFORE DELETE ON usage_events
                WHEN EXISTS (SELECT 1 FROM periods WHERE period = OLD.booked_period)
                    AND NOT EXISTS (SELECT 1 FROM retired_events WHERE id = OLD.id)
                BEGIN SELECT RAISE(ABORT, 'period is closed: its rows in usage_events are frozen'); END""",
        ),
    ),
)

SQLITE += (
    # SQLite cannot index an arbitrary property name: a property filter scans the time range.
    Migration(3, "console indexes: each request-list filter in time order", _console_indexes()),
)

SQLITE += (
    Migration(
        4,
        "captured content: its own table, with its own retention",
        (
            # Detail retention deletes usage rows: their content goes with them. No freeze trigger.
            """CREATE TABLE captured_content (
                event_id text PRIMARY KEY REFERENCES usage_events (id) ON DELETE CASCADE,
                namespace text NOT NULL,
                event_time text NOT NULL,
                expires_at text NOT NULL,
                prompt text NOT NULL,
                completion text NOT NULL)""",
            "CREATE INDEX captured_content_expires ON captured_content (expires_at)",
        ),
    ),
)

# Cost reports' deliveries: one row per (report, period, channel), claimed with a lease so that
# each is sent once (tollway_meter.deliveries). One number for both dialects, from this constant.
REPORT_DELIVERIES = 5


def _report_deliveries(time_type: str) -> Migration:
    return Migration(
        REPORT_DELIVERIES,
        "cost reports: each delivery of a report's period to a channel, claimed under a lease",
        (
            f"""CREATE TABLE report_deliveries (
                report_namespace text NOT NULL,
                report_name text NOT NULL,
                period text NOT NULL,
                channel text NOT NULL,
                delivery_id text NOT NULL,
                state text NOT NULL CHECK (state IN ('claimed', 'sent', 'failed')),
                claimed_by text NOT NULL,
                lease_until {time_type} NOT NULL,
                attempts integer NOT NULL,
                last_error text NOT NULL DEFAULT '',
                sent_at {time_type},
                PRIMARY KEY (report_namespace, report_name, period, channel))""",
        ),
    )


POSTGRES += (_report_deliveries("timestamptz"),)
SQLITE += (_report_deliveries("text"),)

# Cache hits and savings as roll-up measures, so the overview and the report sum columns instead of
# scanning every event's JSON. One number for both dialects, from this constant.
CACHE_SAVINGS = 6
_HIT = "IN ('HIT', 'SEMANTIC_HIT')"
# The roll-up's key (its primary key's columns, which the detail rows carry too).
_KEY = (
    "hour",
    "adjustment",
    "namespace",
    "key_name",
    "team",
    "user_id",
    "route",
    "model",
    "backend",
    "provider",
)


def _fold_hits_into_hourly() -> str:
    """Each roll-up row's hits and savings, summed from the detail rows folded into it (same key)."""
    key = ", ".join(_KEY)
    match = " AND ".join(f"usage_hourly.{column} = e.{column}" for column in _KEY)
    return (
        "UPDATE usage_hourly SET cache_hits = e.hits, saved_nanos = e.saved FROM ("
        f"SELECT {key}, sum(cache_hits) AS hits, sum(saved_nanos) AS saved FROM usage_events "
        f"WHERE cache_hits > 0 GROUP BY {key}) AS e WHERE {match}"
    )


def _cache_savings(
    add_columns: tuple[str, ...], hits: str, freeze: tuple[str, ...], thaw: tuple[str, ...]
) -> Migration:
    # Closed periods are backfilled too, with the freeze lifted only inside this transaction: it sets
    # just the two new columns, from the period's own frozen events, so no invoiced amount changes.
    # A closed month whose detail retention already removed counts no hits.
    return Migration(
        CACHE_SAVINGS,
        "cache hits and savings: columns of the events and the roll-ups, backfilled from the events",
        (*add_columns, *thaw, hits, _fold_hits_into_hourly(), *freeze),
    )


_NEW_MEASURES = ("cache_hits", "saved_nanos")

POSTGRES += (
    _cache_savings(
        tuple(
            f"ALTER TABLE {table} "
            + ", ".join(f"ADD COLUMN {column} bigint NOT NULL DEFAULT 0" for column in _NEW_MEASURES)
            for table in ("usage_events", "usage_hourly")
        ),
        # The decimal string as numeric: exact, then whole nano-dollars (the contract allows 9 digits).
        f"UPDATE usage_events SET cache_hits = 1, saved_nanos = "
        f"(coalesce(event->'data'->>'saved', '0')::numeric * 1000000000)::bigint "
        f"WHERE event->'data'->>'cache' {_HIT}",
        thaw=tuple(f"ALTER TABLE {t} DISABLE TRIGGER {t}_frozen" for t in ("usage_events", "usage_hourly")),
        freeze=tuple(f"ALTER TABLE {t} ENABLE TRIGGER {t}_frozen" for t in ("usage_events", "usage_hourly")),
    ),
)

# SQLite would read the decimal string as a float: split it at the point instead, in integers
# (the contract's format is digits, optionally a point and 1-9 digits).
_SQLITE_SAVED = "coalesce(json_extract(event, '$.data.saved'), '0')"
_SQLITE_NANOS = (
    f"CASE WHEN instr({_SQLITE_SAVED}, '.') = 0 THEN CAST({_SQLITE_SAVED} AS INTEGER) * 1000000000 "
    f"ELSE CAST(substr({_SQLITE_SAVED}, 1, instr({_SQLITE_SAVED}, '.') - 1) AS INTEGER) * 1000000000 "
    f"+ CAST(substr(substr({_SQLITE_SAVED}, instr({_SQLITE_SAVED}, '.') + 1) || '000000000', 1, 9) "
    "AS INTEGER) "
    "END"
)
_SQLITE_UPDATE_FREEZE = {
    table: _sqlite_freeze(table, column)[1]
    for table, column in (("usage_events", "booked_period"), ("usage_hourly", "period"))
}

SQLITE += (
    _cache_savings(
        tuple(
            f"ALTER TABLE {table} ADD COLUMN {column} bigint NOT NULL DEFAULT 0"
            for table in ("usage_events", "usage_hourly")
            for column in _NEW_MEASURES
        ),
        f"UPDATE usage_events SET cache_hits = 1, saved_nanos = {_SQLITE_NANOS} "
        f"WHERE json_extract(event, '$.data.cache') {_HIT}",
        # The update triggers, exactly as migration 1 made them (neither was redefined since).
        thaw=tuple(f"DROP TRIGGER {table}_frozen_update" for table in _SQLITE_UPDATE_FREEZE),
        freeze=tuple(_SQLITE_UPDATE_FREEZE.values()),
    ),
)

SCHEMA_VERSION_TABLE = """CREATE TABLE IF NOT EXISTS schema_version (
    version integer PRIMARY KEY,
    description text NOT NULL,
    applied_at text NOT NULL)"""


def pending(migrations: tuple[Migration, ...], current: int) -> list[Migration]:
    """The migrations after `current`, checked to be numbered 1, 2, 3… with no gap."""
    for index, migration in enumerate(migrations, start=1):
        if migration.version != index:
            raise RuntimeError(f"migration {migration.version} is out of order (expected {index})")
    return [m for m in migrations if m.version > current]
