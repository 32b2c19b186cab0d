"""`tollway meter reconcile` (the ledger against the Redis counters) and `tollway meter retain`."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import click

from tollway.meter_cli import _open, db_option, render_table

if TYPE_CHECKING:
    from tollway_meter.reconcile import Counter, Row, Target
    from tollway_sidecar.config.models import GatewayConfig


def counters_for(targets: Iterable[Target], period: str, config: GatewayConfig | None) -> list[Counter]:
    """Each target's counter key, from the config's keys and budgets when given. Without one, a
    key or budget is known only by its name in the events, and a budget is taken as Monthly."""
    from tollway_meter.reconcile import Counter
    from tollway_meter.rows import period_start
    from tollway_sidecar.config.models import Budget, VirtualKey
    from tollway_sidecar.contract.keys import budget_key, key_month_key, user_tag

    at = period_start(period)
    keys = {k.id: k for k in config.keys} if config else {}
    budgets = {b.id: b for b in config.budgets} if config else {}
    wanted: set[Target] = set(targets) | {("key", k) for k in keys} | {("budget", b) for b in budgets}
    out = []
    for kind, name in sorted(wanted):
        if kind == "key":
            namespace, _, key_name = name.partition("/")
            # Only the namespace and name make the counter's key: the hash is a placeholder.
            key = keys.get(name) or VirtualKey(name=key_name, namespace=namespace, key_sha256="0" * 64)
            out.append(Counter((kind, name), namespace, key_month_key(key, at)))
            continue
        budget_id, _, end_user = name.partition(" ")
        namespace, _, budget_name = budget_id.partition("/")
        budget = budgets.get(budget_id) or Budget(name=budget_name, namespace=namespace, limit_usd=0)
        if kind == "user" and not budget.per_user:
            continue  # a budget without per-user copies: its users have no counters of their own
        if kind == "user" and config is None:
            continue  # which budgets are per-user is in the config only
        if budget.period != "Monthly":
            note = f"{budget.period} budget: its counters are not a month's"
            out.append(Counter((kind, name), namespace, None, note))
            continue
        user = None if kind == "budget" else user_tag(None if end_user == "-" else end_user)
        out.append(Counter((kind, name), namespace, budget_key(budget, at, user)))
    return out


def _usd(nanos: int | None) -> str:
    from tollway_sidecar.contract.usage_event import nanos_to_usd

    return "-" if nanos is None else format(nanos_to_usd(nanos), "f")


def _table(rows: list[Row]) -> str:
    headers = [
        "kind",
        "name",
        "ledger_usd",
        "in_stream_usd",
        "settled_usd",
        "in_flight_usd",
        "drift_usd",
        "status",
    ]
    body = [
        [
            r.target[0],
            r.target[1],
            _usd(r.ledger),
            _usd(r.in_stream),
            _usd(r.settled),
            _usd(r.in_flight),
            _usd(r.drift if r.settled is not None else None),
            r.status + (f" ({r.note})" if r.note else ""),
        ]
        for r in rows
    ]
    return render_table(headers, body)


def _write_metrics(path: Path, period: str, rows: list[Row]) -> None:
    from prometheus_client import CollectorRegistry, Gauge, write_to_textfile

    registry = CollectorRegistry()
    drift = Gauge(
        "tollway_meter_reconcile_drift_nanos",
        "Sum of |settled - ledger - in stream| over the period's rows, in nano-USD.",
        ["period", "kind"],
        registry=registry,
    )
    count = Gauge("tollway_meter_reconcile_rows", "Rows by status.", ["period", "status"], registry=registry)
    for kind in ("key", "budget", "user"):
        drift.labels(period, kind).set(sum(abs(r.drift) for r in rows if r.target[0] == kind))
    for status in ("ok", "drift", "no counter", "not compared"):
        count.labels(period, status).set(sum(1 for r in rows if r.status == status))
    write_to_textfile(str(path), registry)


@click.command("reconcile")
@click.option("--period", required=True, help="YYYY-MM (UTC).")
@click.option(
    "--redis", "redis_url", envvar="TOLLWAY_REDIS_URL", required=True, help="Redis of the counters."
)
@db_option
@click.option(
    "--config",
    "config_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="The compiled GatewayConfig: every key and budget in it is checked, with its budget period "
    "and per-user copies. Without it: the keys and budgets the events name, budgets taken as Monthly.",
)
@click.option(
    "--metrics-file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Also write the drift as Prometheus text (node-exporter's textfile collector).",
)
def meter_reconcile(
    period: str, redis_url: str, dsn: str, config_path: Path | None, metrics_file: Path | None
) -> None:
    """Compare the ledger's spend for PERIOD with Redis' settled spend; exit 1 on any drift."""
    import redis.asyncio as aioredis

    from tollway_meter.reconcile import compare, ledger_spend, stream_backlog
    from tollway_meter.rows import parse_period
    from tollway_sidecar.config.loader import ConfigError, load_config_file
    from tollway_sidecar.contract.redis_counters import RedisCounters

    try:
        parse_period(period)
        config = load_config_file(config_path) if config_path else None
    except (ValueError, ConfigError) as exc:
        raise click.ClickException(str(exc)) from exc
    ledger = _open(dsn)

    async def main() -> list[Row]:
        client = aioredis.Redis.from_url(redis_url)
        reader = RedisCounters(redis_url, timeout_s=5.0)
        try:
            # The stream, then the ledger, then the counters: an event moving from the stream into the
            # ledger meanwhile is counted in exactly one of the two. Calls settling during the run
            # can show as drift; quiet, or for a month whose calls are all settled, it is exact.
            backlog = await stream_backlog(client, period)
            in_ledger, in_stream = ledger_spend(ledger, period, backlog)
            targets = set(in_ledger.by) | set(in_stream.by)
            counters = counters_for(targets, period, config)
            return await compare(counters, reader, in_ledger, in_stream, datetime.now(UTC))
        finally:
            await reader.close()
            await client.aclose()

    try:
        rows = asyncio.run(main())
    finally:
        ledger.close()
    click.echo(_table(rows), nl=False)
    if metrics_file is not None:
        _write_metrics(metrics_file, period, rows)
    drifting = [r for r in rows if r.status == "drift"]
    if drifting:
        click.echo(f"drift in {len(drifting)} of {len(rows)} rows", err=True)
        raise SystemExit(1)


@click.command("retain")
@click.option(
    "--keep-months", type=click.IntRange(min=0), required=True, help="Months kept before the current one."
)
@db_option
def meter_retain(keep_months: int, dsn: str) -> None:
    """Drop the event detail of closed months before the kept window (roll-ups and invoices stay)."""
    from tollway_meter.retention import retain

    ledger = _open(dsn)
    try:
        done = retain(ledger, datetime.now(UTC), keep_months)
    finally:
        ledger.close()
    for item in done:
        click.echo(f"{item.period}: {'dropped' if item.dropped else 'kept'}: {item.reason}")
    if not done:
        click.echo("nothing to drop")
