"""`tollway report`: one cost report from the ledger, printed (text, JSON, HTML or CSV)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import click

from tollway.meter_cli import _open, db_option


@click.command("report")
@click.option(
    "--period",
    default="last-week",
    show_default=True,
    help="last-week, last-month, YYYY-MM or YYYY-Www (UTC).",
)
@click.option(
    "--format", "fmt", type=click.Choice(["text", "json", "html", "csv"]), default="text", show_default=True
)
@click.option("--namespace", "namespaces", multiple=True, help="Only these namespaces (repeatable).")
@click.option("--team", "teams", multiple=True, help="Only these teams (repeatable).")
@click.option("--key", "keys", multiple=True, help="Only these keys: name or namespace/name (repeatable).")
@click.option(
    "--budgets-from",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="A compiled GatewayConfig (e.g. tollway dev's config.json): forecast each budget.",
)
@db_option
def report(
    period: str,
    fmt: str,
    namespaces: tuple[str, ...],
    teams: tuple[str, ...],
    keys: tuple[str, ...],
    budgets_from: Path | None,
    dsn: str,
) -> None:
    """A cost report for one period: totals, change, top spenders, errors, anomalies, budgets."""
    from tollway_meter.console.forecast import BadBudgets, load_limits
    from tollway_meter.report import Scope, build_report
    from tollway_meter.report_period import parse_report_period
    from tollway_meter.report_render import render

    now = datetime.now(UTC)
    try:
        chosen = parse_report_period(period, now)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--period") from None
    try:
        limits = load_limits(budgets_from) if budgets_from is not None else None
    except BadBudgets as exc:
        raise click.BadParameter(str(exc), param_hint="--budgets-from") from None
    scope = Scope(frozenset(namespaces), frozenset(teams), frozenset(keys))
    ledger = _open(dsn)
    try:
        built = build_report(ledger, chosen, scope, now, limits)
    finally:
        ledger.close()
    click.echo(render(built, fmt), nl=False)


@click.command("reports")
@click.option(
    "--folder",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help="A folder of CostReport manifests (*.yaml), re-read every tick.",
)
@click.option(
    "--kubernetes",
    "from_kubernetes",
    is_flag=True,
    help="Instead: list the CostReports with the meter's ServiceAccount, write their status, read "
    "their Secrets and send kubernetesEvent channels.",
)
@click.option("--namespace", "namespaces", multiple=True, help="--kubernetes: only these namespaces.")
@click.option("--kube-url", default=None, help="--kubernetes: the API server (default: in-cluster).")
@click.option("--kube-token-file", type=click.Path(dir_okay=False, path_type=Path), default=None)
@click.option("--kube-ca-file", type=click.Path(dir_okay=False, path_type=Path), default=None)
@click.option(
    "--secrets-dir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help="With --folder: Secrets as files, <dir>/<secret name>/<key> (a mounted Secret's layout).",
)
@click.option(
    "--budgets-from",
    "budgets_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="With --folder: a compiled GatewayConfig whose budgets the reports forecast "
    "(--kubernetes lists the Budget resources instead).",
)
@click.option(
    "--smtp-ca-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="PEM roots that e-mail channels verify the SMTP server's STARTTLS certificate with, "
    "instead of the system's (a private mail relay's CA).",
)
@click.option("--interval", default=60.0, show_default=True, help="Seconds between ticks.")
@click.option("--lease", default=600.0, show_default=True, help="Seconds a claimed delivery is held.")
@click.option("--once", is_flag=True, help="One tick, then exit (its outcomes printed).")
@click.option("--owner", default=None, help="This scheduler's name in the deliveries (default: host-pid).")
@db_option
def meter_reports(
    folder: Path | None,
    from_kubernetes: bool,
    namespaces: tuple[str, ...],
    kube_url: str | None,
    kube_token_file: Path | None,
    kube_ca_file: Path | None,
    secrets_dir: Path | None,
    budgets_file: Path | None,
    smtp_ca_file: Path | None,
    interval: float,
    lease: float,
    once: bool,
    owner: str | None,
    dsn: str,
) -> None:
    """Send the CostReports that are due, each period to each channel once."""
    import asyncio
    import os
    import socket
    from datetime import timedelta

    from tollway_meter.console.access import IN_CLUSTER_DIR, KubeApi, KubeClient, ReviewFailed
    from tollway_meter.console.forecast import BudgetFile, BudgetSource, ClusterBudgets
    from tollway_meter.costreport import BadCostReport, SecretFiles, load_folder
    from tollway_meter.costreport_kube import ClusterCostReports, ClusterSecrets
    from tollway_meter.ledger import LedgerUnavailableError
    from tollway_meter.report_scheduler import Scheduler

    if (folder is None) == (not from_kubernetes):
        raise click.UsageError("give exactly one of --folder DIR and --kubernetes")
    name = owner or f"{socket.gethostname()}-{os.getpid()}"
    kube: KubeClient | None = None
    cluster: ClusterCostReports | None = None
    if from_kubernetes:
        try:
            api = (
                KubeApi.in_cluster()
                if kube_url is None
                else KubeApi(kube_url.rstrip("/"), IN_CLUSTER_DIR / "token", None)
            )
        except ValueError as exc:
            raise click.UsageError(f"--kubernetes: {exc}") from None
        api = KubeApi(api.url, kube_token_file or api.token_file, kube_ca_file or api.ca_file)
        kube = KubeClient(api)
        cluster = ClusterCostReports(kube, namespaces)
    ledger = _open(dsn)
    secrets = ClusterSecrets(kube) if kube is not None else SecretFiles(secrets_dir)
    budgets: BudgetSource | None = (
        ClusterBudgets(kube) if kube is not None else BudgetFile(budgets_file) if budgets_file else None
    )
    scheduler = Scheduler(
        ledger,
        name,
        secrets,
        timedelta(seconds=lease),
        kube=kube,
        status=cluster,
        budgets=budgets,
        smtp_ca_file=smtp_ca_file,
    )

    async def run() -> None:
        try:
            while True:
                try:
                    resources = await cluster.list() if cluster is not None else load_folder(folder or Path())
                    outcomes = await scheduler.tick(resources)
                except (BadCostReport, ReviewFailed, LedgerUnavailableError) as exc:
                    if once:
                        raise click.ClickException(str(exc)) from None
                    click.echo(f"cost reports: {exc}", err=True)
                    outcomes = []
                for o in outcomes:
                    detail = f" ({o.detail})" if o.detail else ""
                    click.echo(f"{o.report} {o.period} {o.channel}: {o.result}{detail}")
                if once:
                    return
                await asyncio.sleep(interval)
        finally:
            if kube is not None:
                await kube.close()

    try:
        asyncio.run(run())
    finally:
        ledger.close()


def register(main: click.Group) -> None:
    from tollway.meter_cli import meter

    main.add_command(report)
    meter.add_command(meter_reports)
