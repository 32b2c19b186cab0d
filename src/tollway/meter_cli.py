"""`tollway meter …` (run the stream consumer, migrate, close a period, invoice) and `tollway usage`."""

from __future__ import annotations

import asyncio
import logging
import re
import signal
import sys
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from tollway_meter.ledger import Ledger

DEFAULT_DB = "sqlite:///tollway-ledger.db"
_db_option = click.option(
    "--db",
    "dsn",
    envvar="TOLLWAY_METER_DB",
    default=DEFAULT_DB,
    show_default=True,
    help="Ledger: postgresql://… or sqlite:///path (env TOLLWAY_METER_DB).",
)


def _open(dsn: str) -> Ledger:
    from tollway_meter.ledger import Ledger, LedgerUnavailableError

    try:
        ledger = Ledger.open(dsn)
        ledger.migrate()
    except LedgerUnavailableError as exc:
        raise click.ClickException(str(exc)) from exc
    return ledger


@click.group("meter")
def meter() -> None:
    """The meter: usage events from Redis into the ledger; periods and invoices."""


@meter.command("run")
@click.option(
    "--redis", "redis_url", envvar="TOLLWAY_REDIS_URL", required=True, help="Redis URL of the stream."
)
@_db_option
@click.option("--consumer", default=None, help="Consumer name in the group (default: host-pid).")
@click.option("--batch", default=500, show_default=True, help="Entries per transaction.")
@click.option("--claim-idle-ms", default=60_000, show_default=True, help="Claim entries pending this long.")
@click.option("--metrics-port", default=9102, show_default=True, help="/metrics port (0: none).")
@click.option("--metrics-host", default="0.0.0.0", show_default=True)
@click.option("--api-port", default=8090, show_default=True, help="JSON query API port (0: none).")
@click.option("--api-host", default="0.0.0.0", show_default=True)
@click.option(
    "--console/--no-console",
    "with_console",
    default=False,
    show_default=True,
    help="Also serve the web console at /console/ on the API port. It has no access control yet: "
    "only behind something that checks who may see the namespace's requests.",
)
@click.option("--jaeger-url", default=None, help="Jaeger UI base URL the console links traces to.")
@click.option("--log-level", default="INFO", show_default=True)
def meter_run(
    redis_url: str,
    dsn: str,
    consumer: str | None,
    batch: int,
    claim_idle_ms: int,
    metrics_port: int,
    metrics_host: str,
    api_port: int,
    api_host: str,
    with_console: bool,
    jaeger_url: str | None,
    log_level: str,
) -> None:
    """Consume the usage stream into the ledger until SIGTERM or Ctrl-C."""
    if with_console and not api_port:
        raise click.UsageError("--console is served on the API port: it needs --api-port other than 0")
    import redis.asyncio as aioredis
    from aiohttp import web

    from tollway_meter.api import create_app
    from tollway_meter.consumer import ConsumerOptions, MeterConsumer, default_consumer_name
    from tollway_meter.metrics import serve_metrics

    logging.basicConfig(level=log_level, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    ledger = _open(dsn)
    options = ConsumerOptions(
        consumer=consumer or default_consumer_name(), batch=batch, claim_idle_ms=claim_idle_ms
    )

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        client = aioredis.Redis.from_url(redis_url)
        runner: web.AppRunner | None = None
        api_ledger: Ledger | None = None
        console_ledger: Ledger | None = None
        try:
            consumer = MeterConsumer(client, ledger, options)
            if metrics_port:
                serve_metrics(consumer.stats, metrics_port, metrics_host)
            if api_port:
                # Its own connection: the consumer's is busy with batches.
                api_ledger = _open(dsn)
                app = create_app(api_ledger)
                if with_console:
                    from tollway_meter.console import mount

                    # Its own connection too: the API's queries run in another worker thread.
                    console_ledger = _open(dsn)
                    mount(app, console_ledger, jaeger_url)
                runner = web.AppRunner(app)
                await runner.setup()
                await web.TCPSite(runner, api_host, api_port).start()
            await consumer.run(stop)
        finally:
            if runner is not None:
                await runner.cleanup()
            if api_ledger is not None:
                api_ledger.close()
            if console_ledger is not None:
                console_ledger.close()
            await client.aclose()

    try:
        asyncio.run(main())
    finally:
        ledger.close()


@meter.command("migrate")
@_db_option
def meter_migrate(dsn: str) -> None:
    """Apply the ledger's pending schema migrations and print the version."""
    ledger = _open(dsn)
    click.echo(f"schema version {ledger.schema_version()}")
    ledger.close()


@meter.command("close")
@click.argument("period")
@_db_option
def meter_close(period: str, dsn: str) -> None:
    """Freeze PERIOD (YYYY-MM, UTC): the database refuses any later change to its totals."""
    from tollway_meter.ledger import PeriodClosedError

    ledger = _open(dsn)
    try:
        ledger.close_period(period)
    except (ValueError, PeriodClosedError) as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        ledger.close()
    click.echo(f"period {period} closed")


@meter.command("invoice")
@click.option("--period", required=True, help="YYYY-MM")
@click.option("--by", default="team", show_default=True, help="Comma-separated roll-up dimensions.")
@click.option("--format", "fmt", type=click.Choice(["csv", "json"]), default="csv", show_default=True)
@_db_option
def meter_invoice(period: str, by: str, fmt: str, dsn: str) -> None:
    """Invoice lines for a period that sum exactly to its total."""
    from tollway_meter.invoice import build_invoice, invoice_csv, invoice_json

    ledger = _open(dsn)
    try:
        invoice = build_invoice(ledger, period, [d for d in by.split(",") if d])
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        ledger.close()
    sys.stdout.write(invoice_csv(invoice) if fmt == "csv" else invoice_json(invoice) + "\n")


_DURATION = re.compile(r"^(\d+)([hdw])$")


def parse_since(text: str, now: datetime) -> datetime:
    """`7d`, `12h`, `2w` before now, or an ISO date/time (UTC unless it says otherwise)."""
    match = _DURATION.match(text)
    if match:
        amount, unit = int(match.group(1)), match.group(2)
        return now - timedelta(**{{"h": "hours", "d": "days", "w": "weeks"}[unit]: amount})
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise click.BadParameter(f"expected e.g. 7d, 12h, 2w or 2026-11-01, got {text!r}") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def render_table(headers: list[str], rows: list[list[str]]) -> str:
    """Plain aligned columns; numbers right-aligned."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    numeric = [all(re.fullmatch(r"-?[\d.]+", r[i]) for r in rows) and bool(rows) for i in range(len(headers))]

    def line(cells: list[str]) -> str:
        return "  ".join(
            c.rjust(w) if n else c.ljust(w) for c, w, n in zip(cells, widths, numeric, strict=True)
        )

    return (
        "\n".join([line(headers), line(["-" * w for w in widths]), *(line(r) for r in rows)]).rstrip() + "\n"
    )


@click.command("usage")
@click.option(
    "--by",
    default="",
    help="Comma-separated: namespace,key,team,user,model,backend,provider,route,"
    "session,end_user,property:<name>.",
)
@click.option("--since", default="7d", show_default=True, help="7d, 12h, 2w or an ISO date.")
@click.option("--until", "until_text", default=None, help="ISO date/time (default: now).")
@click.option("--granularity", type=click.Choice(["hour", "day", "month"]), default=None)
@click.option("--top", type=int, default=None, help="Instead: the N most expensive requests.")
@click.option("--request", "request_id", default=None, help="Instead: one request by its event id (JSON).")
@_db_option
def usage(
    by: str,
    since: str,
    until_text: str | None,
    granularity: str | None,
    top: int | None,
    request_id: str | None,
    dsn: str,
) -> None:
    """Spend, requests and tokens from the ledger, as a table."""
    from tollway_meter.queries import get_request, top_requests
    from tollway_meter.queries import usage as query_usage
    from tollway_sidecar.contract.usage_event import nanos_to_usd

    now = datetime.now(UTC)
    start = parse_since(since, now)
    end = parse_since(until_text, now) if until_text else now + timedelta(hours=1)
    ledger = _open(dsn)
    try:
        if request_id is not None:
            found = get_request(ledger, request_id)
            if found is None:
                raise click.ClickException(f"request {request_id}: not in the ledger")
            click.echo(found.event.to_json())
            return
        if top is not None:
            rows = [
                [
                    r.id,
                    str(r.time),
                    r.namespace,
                    r.key_name,
                    r.team,
                    r.model,
                    format(nanos_to_usd(r.cost_nanos), "f"),
                ]
                for r in top_requests(ledger, top, start, end)
            ]
            click.echo(
                render_table(["id", "time", "namespace", "key", "team", "model", "cost_usd"], rows), nl=False
            )
            return
        dims = [d for d in by.split(",") if d]
        try:
            result = query_usage(ledger, dims, start, end, granularity)
        except ValueError as exc:
            raise click.ClickException(str(exc)) from exc
    finally:
        ledger.close()
    headers = (
        ([granularity] if granularity else []) + dims + ["requests", "cost_usd", "input", "output", "cached"]
    )
    table = [
        ([r.bucket or ""] if granularity else [])
        + [r.keys[d] or "-" for d in dims]
        + [
            str(r.requests),
            format(r.cost, "f"),
            str(r.input_tokens),
            str(r.output_tokens),
            str(r.cached_read_tokens),
        ]
        for r in result
    ]
    click.echo(render_table(headers, table), nl=False)


def register(main: click.Group) -> None:
    main.add_command(meter)
    main.add_command(usage)
