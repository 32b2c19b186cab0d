"""The channels a cost report goes out on: e-mail over SMTP, a Slack-compatible incoming webhook and
a generic JSON webhook. Each `send` raises `DeliveryError` with a reason that names no secret (a
Slack webhook's URL is one, and so are SMTP credentials).

The e-mail is multipart/mixed: a multipart/alternative of the text table and the HTML page (a
multipart/related of the page and its chart as a PNG, `<img src="cid:...">`), then the CSV of the
lines as an attachment. Its Message-ID, the chart's Content-ID and the webhooks' `Idempotency-Key`
header carry the delivery id, the same on every attempt. STARTTLS (on by default) verifies the
server's certificate against the system's roots or `ca_file`, and a server that does not offer it is
refused rather than spoken to in plain text.
"""

from __future__ import annotations

import asyncio
import email.utils
import smtplib
import ssl
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import Any, Protocol

import aiohttp

from tollway_meter.report import CostReport
from tollway_meter.report_chart import HEIGHT, WIDTH, render_png
from tollway_meter.report_render import (
    ChartImage,
    change_percent,
    render_csv,
    render_html,
    render_text,
    report_dict,
    usd,
)

IDEMPOTENCY_HEADER = "Idempotency-Key"
TIMEOUT = 30.0


class DeliveryError(RuntimeError):
    """The channel did not accept the report; the message says why (and never a secret)."""


class Channel(Protocol):
    async def send(self, report: CostReport, delivery_id: str, title: str) -> None: ...


def summary(report: CostReport, title: str) -> str:
    return (
        f"{title}: {usd(report.cost_nanos)} USD over {report.requests} requests in {report.period.label} "
        f"({change_percent(report)} vs the period before)"
    )


@dataclass(frozen=True)
class EmailChannel:
    to: tuple[str, ...]
    sender: str
    host: str
    port: int = 587
    starttls: bool = True
    username: str | None = None
    password: str | None = None
    # PEM roots to verify the server with instead of the system's (a private relay's own CA).
    ca_file: Path | None = None
    kind: str = "email"

    def message(self, report: CostReport, delivery_id: str, title: str) -> EmailMessage:
        message = EmailMessage()
        message["Subject"] = summary(report, title)
        message["From"] = self.sender
        message["To"] = ", ".join(self.to)
        message["Date"] = email.utils.formatdate(usegmt=True)
        message["Message-ID"] = f"<{delivery_id}@tollway.dev>"
        message.set_content(render_text(report))
        # The page refers to the PNG instead of carrying the SVG: Gmail and Outlook drop inline SVG,
        # and a client that draws it would show the chart twice.
        cid = f"chart-{delivery_id}@tollway.dev"
        message.add_alternative(render_html(report, ChartImage(f"cid:{cid}", WIDTH, HEIGHT)), subtype="html")
        page = message.get_body(("html",))
        assert page is not None  # just added
        page.add_related(render_png(report), maintype="image", subtype="png", cid=f"<{cid}>")
        message.add_attachment(
            render_csv(report).encode(),
            maintype="text",
            subtype="csv",
            filename=f"cost-report-{report.period.label}.csv",
        )
        return message

    async def send(self, report: CostReport, delivery_id: str, title: str) -> None:
        message = self.message(report, delivery_id, title)
        await asyncio.to_thread(self._send, message)

    def _tls(self, where: str) -> ssl.SSLContext:
        try:
            return ssl.create_default_context(cafile=None if self.ca_file is None else str(self.ca_file))
        except (OSError, ssl.SSLError) as exc:
            raise DeliveryError(f"{where}: CA file {self.ca_file}: not usable ({exc})") from None

    def _send(self, message: EmailMessage) -> None:
        where = f"SMTP {self.host}:{self.port}"
        context = self._tls(where) if self.starttls else None
        try:
            with smtplib.SMTP(self.host, self.port, timeout=TIMEOUT) as smtp:
                if context is not None:
                    smtp.ehlo_or_helo_if_needed()
                    if not smtp.has_extn("starttls"):
                        raise DeliveryError(
                            f"{where}: the server does not offer STARTTLS; not sending in plain text "
                            "(startTLS: false allows it)"
                        )
                    smtp.starttls(context=context)
                if self.username is not None:
                    smtp.login(self.username, self.password or "")
                refused = smtp.send_message(message)
        except smtplib.SMTPAuthenticationError as exc:
            raise DeliveryError(f"{where}: login refused ({exc.smtp_code})") from None
        except (smtplib.SMTPException, OSError) as exc:
            raise DeliveryError(f"{where}: {type(exc).__name__}: {exc}") from None
        if refused:
            raise DeliveryError(f"{where}: refused recipients {sorted(refused)}")


async def _post(url: str, body: dict[str, Any], headers: dict[str, str], what: str) -> None:
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT)) as session,
            session.post(url, json=body, headers=headers) as answer,
        ):
            if answer.status >= 300:
                raise DeliveryError(f"{what}: answered HTTP {answer.status}")
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise DeliveryError(f"{what}: {type(exc).__name__}") from None


@dataclass(frozen=True)
class SlackChannel:
    """A Slack incoming webhook (or anything that takes its payload: Mattermost, Rocket.Chat)."""

    url: str
    kind: str = "slack"

    def payload(self, report: CostReport, title: str) -> dict[str, Any]:
        body = report_dict(report)
        top = "\n".join(f"• {s['name'] or '-'}: {s['cost_usd']} USD" for s in body["top"]["key"][:5])
        fields = [
            f"*Total*\n{body['total_usd']} USD",
            f"*Change*\n{body['change_usd']} USD ({body['change_percent']})",
            f"*Requests*\n{report.requests}",
            f"*Cache saved*\n{body['cache']['saved_usd']} USD",
        ]
        blocks: list[dict[str, Any]] = [
            # Slack refuses a header over 150 characters.
            {
                "type": "header",
                "text": {"type": "plain_text", "text": f"{title} {report.period.label}"[:150]},
            },
            {"type": "section", "fields": [{"type": "mrkdwn", "text": f} for f in fields]},
        ]
        if top:
            blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": f"*Top keys*\n{top}"}})
        if report.anomalies:
            lines = "\n".join(
                f"• {a['dimension']} {a['name']}: {a['cost_usd']} USD" for a in body["anomalies"]
            )
            blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": f"*Anomalies*\n{lines}"}})
        return {"text": summary(report, title), "blocks": blocks}

    async def send(self, report: CostReport, delivery_id: str, title: str) -> None:
        await _post(self.url, self.payload(report, title), {IDEMPOTENCY_HEADER: delivery_id}, "slack webhook")


@dataclass(frozen=True)
class WebhookChannel:
    """The whole report as JSON (the `tollway report --format json` body) with its delivery id."""

    url: str
    kind: str = "webhook"

    async def send(self, report: CostReport, delivery_id: str, title: str) -> None:
        body = {"delivery_id": delivery_id, "title": title, "report": report_dict(report)}
        await _post(self.url, body, {IDEMPOTENCY_HEADER: delivery_id}, "webhook")
