"""`tollway meter …` (run the stream consumer, migrate, close a period, invoice, reconcile, retain)
and `tollway usage`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import signal
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from tollway_meter.console.access import KubernetesAuthorizer
    from tollway_meter.console.forecast import BudgetSource
    from tollway_meter.ledger import Ledger

DEFAULT_DB = "sqlite:///tollway-ledger.db"
db_option = click.option(
    "--db",
    "dsn",
    envvar="TOLLWAY_METER_DB",
    default=DEFAULT_DB,
    show_default=True,
    help="Ledger: postgresql://… or sqlite:///path (env TOLLWAY_METER_DB).",
)


def console_auth_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """--auth and where the Kubernetes API server is, for the console (`tollway console`, `meter run`)."""
    options = [
        click.option(
            "--auth",
            type=click.Choice(["none", "kubernetes"]),
            default="none",
            show_default=True,
            help="Who may see the console: `kubernetes` checks each bearer token with TokenReview and "
            "SubjectAccessReview per namespace; `none` lets anyone in and is refused unless the console "
            "binds a loopback address.",
        ),
        click.option(
            "--kube-url",
            default=None,
            help="With --auth kubernetes: the API server (default: the in-cluster one, from "
            "KUBERNETES_SERVICE_HOST/PORT).",
        ),
        click.option(
            "--kube-token-file",
            type=click.Path(dir_okay=False, path_type=Path),
            default=None,
            help="The meter's own token for the review calls (default: the in-cluster ServiceAccount's).",
        ),
        click.option(
            "--budgets-from",
            default=None,
            help="Where the overview's budget limits come from: `kubernetes` (list the Budget resources "
            "with the meter's ServiceAccount; needs --auth kubernetes) or a compiled GatewayConfig file "
            "(JSON, e.g. `tollway dev`'s <state-dir>/config.json, re-read when it changes).",
        ),
        click.option(
            "--kube-ca-file",
            type=click.Path(dir_okay=False, path_type=Path),
            default=None,
            help="CA bundle of the API server (default: the in-cluster ServiceAccount's ca.crt).",
        ),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def console_authorizer(
    auth: str, host: str, kube_url: str | None, token_file: Path | None, ca_file: Path | None
) -> KubernetesAuthorizer | None:
    """The console's authorizer for --auth, or None for `none` (only on a loopback `host`)."""
    from tollway_meter.console.access import IN_CLUSTER_DIR, KubeApi, KubernetesAuthorizer, is_loopback

    if auth == "none":
        if not is_loopback(host):
            raise click.UsageError(
                f"--auth none serves every namespace's requests to anyone who reaches {host}: bind a "
                "loopback address (127.0.0.1) or use --auth kubernetes"
            )
        return None
    if kube_url is None:
        try:
            api = KubeApi.in_cluster()
        except ValueError as exc:
            raise click.UsageError(f"--auth kubernetes: {exc}") from None
    else:
        api = KubeApi(kube_url.rstrip("/"), IN_CLUSTER_DIR / "token", None)
    if token_file is not None or ca_file is not None:
        api = KubeApi(api.url, token_file or api.token_file, ca_file or api.ca_file)
    return KubernetesAuthorizer(api)


def console_budgets(source: str | None, authorizer: KubernetesAuthorizer | None) -> BudgetSource | None:
    """Where the overview's budget limits come from; a file is checked once at start (a bad one is
    refused)."""
    if source is None:
        return None
    from tollway_meter.console.forecast import BadBudgets, BudgetFile, ClusterBudgets

    if source == "kubernetes":
        if authorizer is None:
            raise click.BadParameter("`kubernetes` needs --auth kubernetes", param_hint="--budgets-from")
        return ClusterBudgets(authorizer.client)
    budgets = BudgetFile(Path(source))
    try:
        budgets.read()
    except BadBudgets as exc:
        raise click.BadParameter(str(exc), param_hint="--budgets-from") from None
    return budgets


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
    "--redis", "redis_url", envvar="TOLLWAY_REDIS_URL", default=None, help="Redis URL of the stream."
)
@click.option(
    "--outbox",
    "outbox_url",
    envvar="TOLLWAY_METER_OUTBOX",
    default=None,
    help="Instead of --redis: a sidecar's admin URL (http://127.0.0.1:9090) whose in-memory outbox to read.",
)
@db_option
@click.option("--consumer", default=None, help="Consumer name in the group (default: host-pid; --redis).")
@click.option("--batch", default=500, show_default=True, help="Entries per transaction.")
@click.option(
    "--claim-idle-ms", default=60_000, show_default=True, help="Claim entries pending this long (--redis)."
)
@click.option(
    "--dead-letter-file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("tollway-usage-dead.jsonl"),
    show_default=True,
    help="With --outbox: JSON lines of the entries that are not valid events, with their reason.",
)
@click.option("--metrics-port", default=9102, show_default=True, help="/metrics port (0: none).")
@click.option("--metrics-host", default="0.0.0.0", show_default=True)
@click.option("--api-port", default=8090, show_default=True, help="JSON query API port (0: none).")
@click.option("--api-host", default="0.0.0.0", show_default=True)
@click.option(
    "--close-after",
    default=None,
    help="Close each month this long after it ended (e.g. 72h, 3d), once the stream holds none of "
    "its events. Default: never (only `tollway meter close`).",
)
@click.option(
    "--retain-months",
    type=click.IntRange(min=0),
    default=None,
    help="Drop the event detail of closed months older than the current one and this many before "
    "it (roll-ups stay). Default: keep all.",
)
@click.option(
    "--content-expiry-every",
    type=click.FloatRange(min=0.1),
    default=60.0,
    show_default=True,
    help="Seconds between passes deleting captured content whose route's retentionDays passed.",
)
@click.option(
    "--console/--no-console",
    "with_console",
    default=False,
    show_default=True,
    help="Also serve the web console at /console/ on the API port, with --auth kubernetes in a cluster "
    "(--auth none only on a loopback --api-host).",
)
@click.option("--jaeger-url", default=None, help="Jaeger UI base URL the console links traces to.")
@console_auth_options
@click.option("--log-level", default="INFO", show_default=True)
def meter_run(
    redis_url: str | None,
    outbox_url: str | None,
    dsn: str,
    consumer: str | None,
    batch: int,
    claim_idle_ms: int,
    dead_letter_file: Path,
    metrics_port: int,
    metrics_host: str,
    api_port: int,
    api_host: str,
    close_after: str | None,
    retain_months: int | None,
    content_expiry_every: float,
    with_console: bool,
    jaeger_url: str | None,
    auth: str,
    kube_url: str | None,
    kube_token_file: Path | None,
    kube_ca_file: Path | None,
    budgets_from: str | None,
    log_level: str,
) -> None:
    """Consume the usage stream (--redis) or a sidecar's outbox (--outbox) into the ledger until
    SIGTERM or Ctrl-C."""
    if (redis_url is None) == (outbox_url is None):
        raise click.UsageError(
            "give exactly one source: --redis URL (env TOLLWAY_REDIS_URL) for the Redis usage stream, "
            "or --outbox URL (env TOLLWAY_METER_OUTBOX) for a sidecar's in-memory outbox"
            + ("; both are set" if redis_url is not None else "")
        )
    if outbox_url is not None and not outbox_url.startswith(("http://", "https://")):
        raise click.BadParameter(f"expected http://host:port, got {outbox_url!r}", param_hint="--outbox")
    if with_console and not api_port:
        raise click.UsageError("--console is served on the API port: it needs --api-port other than 0")
    authorizer = (
        console_authorizer(auth, api_host, kube_url, kube_token_file, kube_ca_file) if with_console else None
    )
    budgets = console_budgets(budgets_from, authorizer)
    import aiohttp
    import redis.asyncio as aioredis
    from aiohttp import web

    from tollway_meter.api import create_app
    from tollway_meter.consumer import ConsumerOptions, MeterConsumer, default_consumer_name
    from tollway_meter.content import ContentExpiry
    from tollway_meter.maintenance import Maintenance, MaintenanceOptions
    from tollway_meter.metrics import serve_metrics
    from tollway_meter.outbox_source import OutboxConsumer, OutboxOptions, OutboxRefused
    from tollway_meter.shards import ShardedConsumer
    from tollway_sidecar.contract.redis_counters import bounded_client, is_cluster

    if outbox_url is not None and (close_after or retain_months is not None):
        raise click.UsageError("--close-after and --retain-months need the Redis stream (--redis)")

    after = parse_duration(close_after, "--close-after") if close_after else None
    logging.basicConfig(level=log_level, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    ledger = _open(dsn)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        async with contextlib.AsyncExitStack() as stack:
            source: MeterConsumer | OutboxConsumer
            maintenance: Maintenance | None = None
            # Every mode: captured content expires on the database alone (no Redis needed).
            expiry = ContentExpiry(_open(dsn), every_s=content_expiry_every)
            stack.callback(expiry.ledger.close)
            expiry_task = asyncio.create_task(expiry.run(stop))

            async def finish_expiry() -> None:
                stop.set()
                await asyncio.gather(expiry_task, return_exceptions=True)

            stack.push_async_callback(finish_expiry)
            if redis_url is not None and is_cluster(redis_url):
                if after or retain_months is not None:
                    raise click.UsageError("--close-after and --retain-months need one Redis, not a cluster")
                cluster = bounded_client(redis_url, timeout_s=5.0, max_connections=64, decode_responses=False)
                stack.push_async_callback(cluster.aclose)
                sharded = ShardedConsumer(
                    cluster,  # type: ignore[arg-type]  # a cluster URL gives the cluster client
                    ledger,
                    ConsumerOptions(
                        consumer=consumer or default_consumer_name(), batch=batch, claim_idle_ms=claim_idle_ms
                    ),
                )
                if metrics_port:
                    serve_metrics(sharded.stats, metrics_port, metrics_host, None, expiry.state)
                await sharded.run(stop)
                return
            if redis_url is not None:
                client = aioredis.Redis.from_url(redis_url)
                stack.push_async_callback(client.aclose)
                options = ConsumerOptions(
                    consumer=consumer or default_consumer_name(), batch=batch, claim_idle_ms=claim_idle_ms
                )
                source = MeterConsumer(client, ledger, options)
                # Its own connection, like the API's: lag, period state, --close-after, --retain-months.
                maintenance = Maintenance(
                    client,
                    _open(dsn),
                    MaintenanceOptions(
                        stream=options.stream,
                        group=options.group,
                        close_after=after,
                        retain_months=retain_months,
                    ),
                )
                stack.callback(maintenance.ledger.close)
            else:
                assert outbox_url is not None
                outbox = OutboxOptions(url=outbox_url, dead_letter=dead_letter_file, batch=batch)
                session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=outbox.timeout_s))
                stack.push_async_callback(session.close)
                source = OutboxConsumer(session, ledger, outbox)
            if metrics_port:
                serve_metrics(
                    source.stats,
                    metrics_port,
                    metrics_host,
                    maintenance.state if maintenance else None,
                    expiry.state,
                )
            if maintenance is not None:
                task = asyncio.create_task(maintenance.run(stop))

                async def finish_maintenance() -> None:
                    stop.set()
                    await asyncio.gather(task, return_exceptions=True)

                stack.push_async_callback(finish_maintenance)
            if api_port:
                # Its own connection: the consumer's is busy with batches.
                api_ledger = _open(dsn)
                stack.callback(api_ledger.close)
                app = create_app(api_ledger)
                if with_console:
                    from tollway_meter.console import mount

                    # Its own connection too: the API's queries run in another worker thread.
                    console_ledger = _open(dsn)
                    stack.callback(console_ledger.close)
                    mount(app, console_ledger, jaeger_url, authorizer=authorizer, budgets=budgets)
                    if authorizer is not None:
                        stack.push_async_callback(authorizer.close)
                runner = web.AppRunner(app)
                await runner.setup()
                stack.push_async_callback(runner.cleanup)
                await web.TCPSite(runner, api_host, api_port).start()
            await source.run(stop)

    try:
        asyncio.run(main())
    except OutboxRefused as exc:
        raise click.ClickException(f"the sidecar has no outbox to read: {exc}") from None
    finally:
        ledger.close()


@meter.command("migrate")
@db_option
def meter_migrate(dsn: str) -> None:
    """Apply the ledger's pending schema migrations and print the version."""
    ledger = _open(dsn)
    click.echo(f"schema version {ledger.schema_version()}")
    ledger.close()


@meter.command("close")
@click.argument("period")
@db_option
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
@db_option
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


def parse_duration(text: str, name: str) -> timedelta:
    """`72h`, `3d`, `1w`."""
    match = _DURATION.match(text)
    if not match:
        raise click.BadParameter(f"expected e.g. 72h, 3d or 1w, got {text!r}", param_hint=name)
    unit = {"h": "hours", "d": "days", "w": "weeks"}[match.group(2)]
    return timedelta(**{unit: int(match.group(1))})


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
@db_option
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
    from tollway.meter_ops_cli import meter_reconcile, meter_retain

    meter.add_command(meter_reconcile)
    meter.add_command(meter_retain)
    main.add_command(meter)
    main.add_command(usage)
