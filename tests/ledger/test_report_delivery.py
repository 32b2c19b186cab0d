"""Cost reports delivered: a real SMTP server (aiosmtpd) receives the e-mail, an aiohttp receiver
the Slack and webhook payloads; two schedulers racing on one PostgreSQL ledger send once; a
scheduler SIGKILLed while the SMTP server holds its message leaves a claim that is sent again, with
the same Message-ID, only after its lease runs out."""

from __future__ import annotations

import asyncio
import csv
import io
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web
from ledger_events import make_event
from pgserver import PostgresServer
from PIL import Image
from smtp_box import Mailbox, smtp_server

from tollway.ports import free_port
from tollway_meter.costreport import SecretFiles, load_folder, parse_manifest
from tollway_meter.deliveries import DeliveryKey, deliveries
from tollway_meter.ledger import Ledger
from tollway_meter.report_period import containing
from tollway_meter.report_scheduler import Scheduler
from tollway_sidecar.contract.usage_event import UsageEvent, nanos_to_usd

NOW = datetime(2026, 12, 3, 10, 0, tzinfo=UTC)
LAST_WEEK = datetime(2026, 11, 23, tzinfo=UTC)  # 2026-W48


@pytest.fixture
def mailbox() -> Iterator[tuple[Mailbox, int]]:
    with smtp_server() as server:  # no certificate: STARTTLS is off in these specs
        yield server


@dataclass
class Receiver:
    bodies: list[tuple[str, dict[str, Any], str]] = field(default_factory=list)
    delay: float = 0.0


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[Receiver, str]]:
    got = Receiver()

    async def hook(request: web.Request) -> web.Response:
        await asyncio.sleep(got.delay)
        got.bodies.append((request.path, await request.json(), request.headers.get("Idempotency-Key", "")))
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/{name}", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield got, f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


def _manifest(name: str, channels: list[dict[str, Any]], schedule: str = "0 8 * * 1") -> dict[str, Any]:
    return {
        "apiVersion": "tollway.dev/v1alpha1",
        "kind": "CostReport",
        "metadata": {"name": name, "namespace": "team-a"},
        "spec": {
            "schedule": schedule,
            "period": "Weekly",
            "scope": {"namespaces": ["team-a"]},
            "channels": channels,
        },
    }


def _last_week(ledger: Ledger, since: datetime = LAST_WEEK) -> list[UsageEvent]:
    events = [
        make_event(at=since + timedelta(days=i, hours=3), cost=f"0.{i:02d}0000123", key_name=f"k{i}")
        for i in range(6)
    ]
    ledger.ingest([*events, make_event(at=since + timedelta(days=8), cost="3")])
    return events


def _total(events: list[UsageEvent]) -> str:
    return format(nanos_to_usd(sum(e.data.cost_nanos for e in events)), "f")


async def test_the_email_carries_the_totals_and_the_csv(
    ledger: Ledger, mailbox: tuple[Mailbox, int], tmp_path: Path
) -> None:
    box, port = mailbox
    events = _last_week(ledger)
    (tmp_path / "smtp").mkdir()
    (tmp_path / "smtp" / "username").write_text("reports\n")
    (tmp_path / "smtp" / "password").write_text("s3cret\n")
    email_spec = {
        "to": ["fin@example.com"],
        "from": "tollway@example.com",
        "host": "127.0.0.1",
        "port": port,
        "startTLS": False,
        "credentialsSecretRef": {"name": "smtp"},
    }
    report = parse_manifest("test", _manifest("weekly", [{"name": "finance", "email": email_spec}]))
    assert report is not None
    outcomes = await Scheduler(ledger, "one", SecretFiles(tmp_path), clock=lambda: NOW).tick([report])
    assert [(o.period, o.channel, o.result) for o in outcomes] == [("2026-W48", "finance", "sent")]
    (message,) = box.messages
    assert message["To"] == "fin@example.com"
    assert DeliveryKey("team-a", "weekly", "2026-W48", "finance").id in message["Message-ID"]
    text = message.get_body(("plain",))
    html = message.get_body(("html",))
    assert text is not None and html is not None
    assert f"Total {_total(events)} USD over 6 requests" in text.get_content()
    # The page shows the chart as the PNG part its img names (mail clients do not draw SVG).
    page = html.get_content()
    assert "<svg" not in page
    (cid,) = re.findall(r'<img src="cid:([^"]+)"', page)
    (image,) = [p for p in message.walk() if p["Content-ID"] == f"<{cid}>"]
    assert image.get_content_type() == "image/png"
    with Image.open(io.BytesIO(image.get_content())) as png:
        assert png.format == "PNG" and png.size == (600, 220)
    (attachment,) = list(message.iter_attachments())
    assert attachment.get_filename() == "cost-report-2026-W48.csv"
    rows = list(csv.DictReader(io.StringIO(attachment.get_content())))
    assert sum(Decimal(r["cost_usd"]) for r in rows if r["kind"] == "line") == Decimal(_total(events))

    # Sent is sent: the next tick claims nothing.
    again = await Scheduler(ledger, "two", SecretFiles(tmp_path), clock=lambda: NOW).tick([report])
    assert [o.result for o in again] == ["skipped"]
    assert len(box.messages) == 1


async def test_wrong_smtp_credentials_fail_the_delivery_with_a_reason(
    ledger: Ledger, mailbox: tuple[Mailbox, int], tmp_path: Path
) -> None:
    _box, port = mailbox
    _last_week(ledger)
    (tmp_path / "smtp").mkdir()
    (tmp_path / "smtp" / "username").write_text("reports")
    (tmp_path / "smtp" / "password").write_text("wrong-password")
    spec = {
        "to": ["a@example.com"],
        "from": "t@example.com",
        "host": "127.0.0.1",
        "port": port,
        "startTLS": False,
        "credentialsSecretRef": {"name": "smtp"},
    }
    report = parse_manifest("test", _manifest("weekly", [{"email": spec}]))
    assert report is not None
    (outcome,) = await Scheduler(ledger, "one", SecretFiles(tmp_path), clock=lambda: NOW).tick([report])
    assert outcome.result == "failed" and "login refused" in outcome.detail
    assert "wrong-password" not in outcome.detail
    (row,) = deliveries(ledger, "team-a", "weekly")
    assert (row.state, row.attempts) == ("failed", 1) and "login refused" in row.last_error


async def test_slack_and_webhook_payloads(
    ledger: Ledger, receiver: tuple[Receiver, str], tmp_path: Path
) -> None:
    got, base = receiver
    events = _last_week(ledger)
    (tmp_path / "slack").mkdir()
    (tmp_path / "slack" / "url").write_text(f"{base}/slack")
    channels = [
        {"slack": {"webhookSecretRef": {"name": "slack", "key": "url"}}},
        {"webhook": {"url": f"{base}/hook"}},
    ]
    report = parse_manifest("test", _manifest("weekly", channels))
    assert report is not None
    outcomes = await Scheduler(ledger, "one", SecretFiles(tmp_path), clock=lambda: NOW).tick([report])
    assert [(o.channel, o.result) for o in outcomes] == [("slack-0", "sent"), ("webhook-1", "sent")]
    by_path = {path: (body, key) for path, body, key in got.bodies}
    slack, slack_key = by_path["/slack"]
    assert _total(events) in slack["text"]
    assert slack["blocks"][0]["type"] == "header"
    assert slack_key == DeliveryKey("team-a", "weekly", "2026-W48", "slack-0").id
    hook, hook_key = by_path["/hook"]
    assert hook["delivery_id"] == hook_key == DeliveryKey("team-a", "weekly", "2026-W48", "webhook-1").id
    assert hook["report"]["total_usd"] == _total(events)


async def test_two_schedulers_racing_on_postgresql_deliver_once(
    postgres: PostgresServer, receiver: tuple[Receiver, str], tmp_path: Path
) -> None:
    got, base = receiver
    got.delay = 0.3  # the first sender is still sending while the other tries to claim
    dsn = postgres.new_database()
    ledgers = [Ledger.open(dsn) for _ in range(2)]
    try:
        ledgers[0].migrate()
        _last_week(ledgers[0])
        reports = [
            parse_manifest("t", _manifest(f"r{i}", [{"webhook": {"url": f"{base}/r{i}"}}])) for i in range(4)
        ]
        ready = [r for r in reports if r is not None]
        schedulers = [
            Scheduler(ledger, f"s{i}", SecretFiles(None), clock=lambda: NOW)
            for i, ledger in enumerate(ledgers)
        ]
        first, second = await asyncio.gather(*(s.tick(ready) for s in schedulers))
        results = sorted(o.result for o in [*first, *second])
        assert results == ["sent"] * 4 + ["skipped"] * 4
        assert sorted(path for path, _body, _key in got.bodies) == ["/r0", "/r1", "/r2", "/r3"]
    finally:
        for ledger in ledgers:
            ledger.close()


def test_a_scheduler_killed_mid_send_is_resent_after_its_lease(
    mailbox: tuple[Mailbox, int], tmp_path: Path
) -> None:
    box, port = mailbox
    box.hold = threading.Event()
    dsn = f"sqlite:///{tmp_path / 'ledger.db'}"
    ledger = Ledger.open(dsn)
    ledger.migrate()
    _last_week(ledger, containing("week", datetime.now(UTC)).previous().since)
    folder = tmp_path / "reports"
    folder.mkdir()
    (tmp_path / "secrets" / "smtp").mkdir(parents=True)
    (tmp_path / "secrets" / "smtp" / "username").write_text("reports")
    (tmp_path / "secrets" / "smtp" / "password").write_text("s3cret")
    spec = {
        "to": ["a@example.com"],
        "from": "t@example.com",
        "host": "127.0.0.1",
        "port": port,
        "startTLS": False,
        "credentialsSecretRef": {"name": "smtp"},
    }
    (folder / "weekly.yaml").write_text(
        yaml.safe_dump(_manifest("weekly", [{"name": "mail", "email": spec}], "* * * * *"))
    )
    assert len(load_folder(folder)) == 1
    lease = 20.0  # long enough that the second run surely starts inside it on a loaded machine
    command = [
        sys.executable,
        "-m",
        "tollway.cli",
        "meter",
        "reports",
        "--once",
        "--folder",
        str(folder),
        "--secrets-dir",
        str(tmp_path / "secrets"),
        "--lease",
        str(lease),
        "--db",
        dsn,
    ]

    first = subprocess.Popen([*command, "--owner", "first"], stdout=subprocess.DEVNULL)
    try:
        assert box.holding.wait(60), "the scheduler never reached the SMTP server's DATA"
    finally:
        os.kill(first.pid, signal.SIGKILL)
        first.wait(30)
    box.hold.set()
    (row,) = deliveries(ledger, "team-a", "weekly")
    assert (row.state, row.claimed_by, row.attempts) == ("claimed", "first", 1)

    # Within the lease: the claim is still held; nothing is sent.
    with ledger.transaction(readonly=True) as cur:
        cur.execute("SELECT lease_until FROM report_deliveries")
        lease_until = datetime.fromisoformat(cur.fetchone()[0])
    held = subprocess.run([*command, "--owner", "second"], capture_output=True, text=True, timeout=120)
    assert held.returncode == 0, held.stdout + held.stderr
    assert datetime.now(UTC) < lease_until, "the second run ended after the lease: raise `lease`"
    assert "mail: skipped" in held.stdout
    assert len(box.messages) == 1

    time.sleep(max(0.0, (lease_until - datetime.now(UTC)).total_seconds() + 0.5))
    resent = subprocess.run([*command, "--owner", "third"], capture_output=True, text=True, timeout=120)
    assert resent.returncode == 0, resent.stdout + resent.stderr
    assert "mail: sent (attempt 2)" in resent.stdout
    assert len(box.messages) == 2
    assert box.messages[0]["Message-ID"] == box.messages[1]["Message-ID"]
    # The chart too: the same Content-ID and the same PNG bytes (the same report drawn again).
    charts = [[(p["Content-ID"], p.get_content()) for p in m.walk() if p["Content-ID"]] for m in box.messages]
    assert len(charts[0]) == 1 and charts[0] == charts[1]
    (row,) = deliveries(ledger, "team-a", "weekly")
    assert (row.state, row.claimed_by, row.attempts) == ("sent", "third", 2)
    ledger.close()
