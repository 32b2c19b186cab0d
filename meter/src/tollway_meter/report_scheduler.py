"""The cost reports' scheduler: each tick, each CostReport's latest due period goes to each of its
channels once (`tollway_meter.deliveries`), however many schedulers run.

A report is due for the last complete period before its schedule's latest firing (a Weekly report
firing on Monday 08:00 covers the ISO week that ended at Monday 00:00). A report that has never
been sent sends its latest due period at once; a period whose firing passed while no scheduler ran
is not sent later, only the latest one is.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

from croniter import croniter

from tollway_meter import deliveries
from tollway_meter.console.access import KubeClient, ReviewFailed
from tollway_meter.console.forecast import BadBudgets, BudgetSource, Limit
from tollway_meter.console.reads import as_time
from tollway_meter.costreport import BadCostReport, ChannelSpec, CostReportResource, Secrets
from tollway_meter.costreport_kube import KubernetesEventChannel
from tollway_meter.delivery import Channel, DeliveryError, EmailChannel, SlackChannel, WebhookChannel
from tollway_meter.ledger import Ledger
from tollway_meter.report import CostReport, Scope, build_report
from tollway_meter.report_period import ReportPeriod, containing

log = logging.getLogger("tollway.meter.reports")
DEFAULT_LEASE = timedelta(minutes=10)


@dataclass(frozen=True)
class Outcome:
    report: str  # namespace/name
    period: str
    channel: str
    result: str  # sent, failed, skipped (held or already sent), lost (sent after the lease ran out)
    detail: str = ""


def due(resource: CostReportResource, now: datetime) -> tuple[ReportPeriod, datetime]:
    """(the period due now, the next firing)."""
    utc = now.astimezone(UTC)
    fired: datetime = croniter(resource.spec.schedule, utc).get_prev(datetime)
    upcoming: datetime = croniter(resource.spec.schedule, utc).get_next(datetime)
    return containing("month" if resource.spec.period == "Monthly" else "week", fired).previous(), upcoming


async def channel_of(
    spec: ChannelSpec,
    resource: CostReportResource,
    secrets: Secrets,
    kube: KubeClient | None,
    smtp_ca_file: Path | None = None,
) -> Channel:
    ns = resource.namespace
    if spec.slack is not None:
        slack = spec.slack.webhook_secret_ref
        return SlackChannel(await secrets.read(ns, slack.name, slack.key or "url"))
    if spec.webhook is not None:
        ref = spec.webhook.url_secret_ref
        url = spec.webhook.url if ref is None else await secrets.read(ns, ref.name, ref.key or "url")
        assert url is not None  # the model requires one of them
        return WebhookChannel(url)
    if spec.email is not None:
        mail = spec.email
        creds = mail.credentials_secret_ref
        return EmailChannel(
            to=mail.to,
            sender=mail.sender,
            host=mail.host,
            port=mail.port,
            starttls=mail.start_tls,
            username=None if creds is None else await secrets.read(ns, creds.name, "username"),
            password=None if creds is None else await secrets.read(ns, creds.name, "password"),
            ca_file=smtp_ca_file,
        )
    if kube is None or not resource.uid:
        raise BadCostReport("kubernetesEvent: only for CostReports read from the API server (--kubernetes)")
    return KubernetesEventChannel(kube, ns, resource.name, resource.uid)


class StatusSink(Protocol):
    async def write_status(self, resource: CostReportResource, status: dict[str, Any]) -> None: ...


def _rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def status_of(rows: list[deliveries.Delivery], period: str, upcoming: datetime) -> dict[str, Any]:
    """The CostReport's status from its delivery rows: the period due now and when the next is."""
    status: dict[str, Any] = {"nextDue": _rfc3339(upcoming)}
    sent = [r for r in rows if r.state == "sent" and r.sent_at is not None]
    if sent:
        last = max(sent, key=lambda r: (r.key.period, r.sent_at or ""))
        status["lastSent"] = _rfc3339(as_time(last.sent_at))
        status["lastPeriod"] = last.key.period
    now = [r for r in rows if r.key.period == period]
    if now and all(r.state != "claimed" for r in now):
        states = {r.state for r in now}
        status["lastResult"] = (
            "Sent" if states == {"sent"} else "PartlyFailed" if "sent" in states else "Failed"
        )
        failed = sorted(f"{r.key.channel}: {r.last_error}" for r in now if r.state == "failed")
        status["conditions"] = [
            {
                "type": "Delivered",
                "status": "True" if not failed else "False",
                "reason": "Sent" if not failed else "ChannelFailed",
                "message": (f"{period} sent to every channel" if not failed else "; ".join(failed))[:1000],
            }
        ]
    return status


class Scheduler:
    def __init__(
        self,
        ledger: Ledger,
        owner: str,
        secrets: Secrets,
        lease: timedelta = DEFAULT_LEASE,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        kube: KubeClient | None = None,
        status: StatusSink | None = None,
        budgets: BudgetSource | None = None,
        smtp_ca_file: Path | None = None,
    ) -> None:
        self.ledger, self.owner, self.secrets, self.lease, self.clock = ledger, owner, secrets, lease, clock
        self.kube, self.status, self.budgets = kube, status, budgets
        # For every e-mail channel: a CostReport names no CA (the relay's CA is the meter's setting).
        self.smtp_ca_file = smtp_ca_file
        self._written: dict[str, dict[str, Any]] = {}  # the last status written per report

    async def tick(self, resources: list[CostReportResource]) -> list[Outcome]:
        outcomes: list[Outcome] = []
        for resource in resources:
            outcomes.extend(await self._report(resource))
        return outcomes

    async def _report(self, resource: CostReportResource) -> list[Outcome]:
        now = self.clock()
        period, upcoming = due(resource, now)
        ident = f"{resource.namespace}/{resource.name}"
        built: CostReport | None = None
        outcomes = []
        for name, spec in resource.channel_names():
            key = deliveries.DeliveryKey(resource.namespace, resource.name, period.label, name)
            held = await asyncio.to_thread(deliveries.claim, self.ledger, key, self.owner, now, self.lease)
            if held is None:
                outcomes.append(
                    Outcome(ident, period.label, name, "skipped", "held, sent or out of attempts")
                )
                continue
            try:
                channel = await channel_of(spec, resource, self.secrets, self.kube, self.smtp_ca_file)
                if built is None:
                    built = await self._build(resource, period, now)
                await channel.send(built, key.id, resource.spec.title)
            except (DeliveryError, BadCostReport) as exc:
                retry = self.clock() + timedelta(minutes=2**held.attempt)
                await asyncio.to_thread(deliveries.mark_failed, self.ledger, held, str(exc), retry)
                log.warning("cost report %s %s to %s failed: %s", ident, period.label, name, exc)
                outcomes.append(Outcome(ident, period.label, name, "failed", str(exc)))
                continue
            kept = await asyncio.to_thread(deliveries.mark_sent, self.ledger, held, self.clock())
            outcomes.append(
                Outcome(ident, period.label, name, "sent" if kept else "lost", f"attempt {held.attempt}")
            )
        if self.status is not None:
            await self._write_status(resource, period.label, upcoming)
        return outcomes

    async def _build(self, resource: CostReportResource, period: ReportPeriod, now: datetime) -> CostReport:
        scope = resource.spec.scope
        chosen = Scope(frozenset(scope.namespaces), frozenset(scope.teams), frozenset(scope.keys))
        limits: dict[str, Limit] | None = None
        if self.budgets is not None:
            try:
                limits = await self.budgets.limits()
            except (ReviewFailed, BadBudgets, OSError) as exc:
                # The report goes out without its budgets rather than not at all.
                log.warning("cost reports: budget limits unavailable: %s", exc)
        return await asyncio.to_thread(build_report, self.ledger, period, chosen, now, limits)

    async def _write_status(self, resource: CostReportResource, period: str, upcoming: datetime) -> None:
        rows = await asyncio.to_thread(deliveries.deliveries, self.ledger, resource.namespace, resource.name)
        status = status_of(rows, period, upcoming)
        ident = f"{resource.namespace}/{resource.name}"
        if self.status is None or self._written.get(ident) == status:
            return
        try:
            await self.status.write_status(resource, status)
        except ReviewFailed as exc:
            log.warning("cost report %s: status not written: %s", ident, exc)
            return
        self._written[ident] = status
