"""The cost report's e-mail, received by a real SMTP server (aiosmtpd): its parts, the chart PNG the
HTML refers to and what its bars show, and STARTTLS: the message and the login go over TLS verified
against a CA the test makes, an untrusted certificate or a server without STARTTLS is refused."""

from __future__ import annotations

import io
import re
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path

import pytest
import yaml
from ledger_events import make_event
from PIL import Image
from smtp_box import PASSWORD, USERNAME, make_authority, server_context, smtp_server

from tollway_meter.delivery import DeliveryError, EmailChannel
from tollway_meter.ledger import Ledger
from tollway_meter.report import CostReport, Scope, build_report
from tollway_meter.report_chart import BAR
from tollway_meter.report_period import containing, parse_report_period

NOW = datetime(2026, 12, 3, 10, 0, tzinfo=UTC)
WEEK = datetime(2026, 11, 23, tzinfo=UTC)  # Monday of 2026-W48, the last complete week before NOW
DELIVERY = "0f5e8a52-6c1b-5d5e-9a47-3f0c2b1d9e10"


def _report(ledger: Ledger, costs: dict[int, list[str]]) -> CostReport:
    """Last week's report with these costs on these days of the week (0 is Monday)."""
    events = [
        make_event(at=WEEK + timedelta(days=day, hours=9 + i), cost=cost)
        for day, day_costs in costs.items()
        for i, cost in enumerate(day_costs)
    ]
    ledger.ingest([*events, make_event(at=WEEK + timedelta(days=8), cost="3")])  # next week: not shown
    return build_report(ledger, parse_report_period("last-week", NOW), Scope(frozenset({"team-a"})), NOW)


def _plain(port: int) -> EmailChannel:
    return EmailChannel(("a@example.com",), "t@example.com", "127.0.0.1", port, starttls=False)


def _chart(message: EmailMessage) -> Image.Image:
    html = message.get_body(("html",))
    assert html is not None
    (cid,) = re.findall(r'<img src="cid:([^"]+)"', html.get_content())
    (part,) = [p for p in message.walk() if p["Content-ID"] == f"<{cid}>"]
    assert part.get_content_type() == "image/png"
    image = Image.open(io.BytesIO(part.get_content()))
    assert image.format == "PNG" and image.size == (600, 220)
    return image.convert("RGB")


def _bars(image: Image.Image) -> list[tuple[int, int, int]]:
    """(first x, last x, height in pixels) of each run of columns holding bar-coloured pixels."""
    pixels = image.load()
    assert pixels is not None
    heights = [sum(pixels[x, y] == BAR for y in range(image.height)) for x in range(image.width)]
    runs: list[tuple[int, int, int]] = []
    for x, height in enumerate(heights):
        if height == 0:
            continue
        if runs and runs[-1][1] == x - 1 and runs[-1][2] == height:
            runs[-1] = (runs[-1][0], x, height)
        else:
            runs.append((x, x, height))
    return runs


async def test_the_email_is_text_or_html_with_its_chart_then_the_csv(ledger: Ledger) -> None:
    report = _report(ledger, {1: ["0.25"]})
    with smtp_server() as (box, port):
        await _plain(port).send(report, DELIVERY, "Weekly")
    (message,) = box.messages
    assert [p.get_content_type() for p in message.walk()] == [
        "multipart/mixed",
        "multipart/alternative",
        "text/plain",
        "multipart/related",
        "text/html",
        "image/png",
        "text/csv",
    ]
    # The image's id is the delivery's, so a re-send of the same delivery is the same message.
    (image,) = [p for p in message.walk() if p.get_content_type() == "image/png"]
    assert image["Content-ID"] == f"<chart-{DELIVERY}@tollway.dev>"
    assert image.get_content_disposition() == "inline"


# A week is 7 slots of 80 pixels across the 560-pixel plot, 20 pixels in; a bar is its slot less a
# 2-pixel gap, and the period's highest day is the full 160 pixels tall.
@pytest.mark.parametrize(
    ("costs", "bars"),
    [
        ({2: ["0.3", "0.2"]}, [(180, 257, 160)]),
        ({0: ["0.1"], 3: ["0.15", "0.05"]}, [(20, 97, 80), (260, 337, 160)]),
        ({}, []),
    ],
    ids=["one-day", "two-days-1-to-2", "no-spend"],
)
async def test_the_chart_draws_a_bar_for_each_day_with_spend_at_its_height(
    ledger: Ledger, costs: dict[int, list[str]], bars: list[tuple[int, int, int]]
) -> None:
    report = _report(ledger, costs)
    with smtp_server() as (box, port):
        await _plain(port).send(report, DELIVERY, "Weekly")
    (message,) = box.messages
    assert _bars(_chart(message)) == bars


@pytest.fixture
def week_report(tmp_path: Path) -> Iterator[CostReport]:
    ledger = Ledger.open(f"sqlite:///{tmp_path / 'ledger.db'}")
    ledger.migrate()
    try:
        yield _report(ledger, {0: ["0.5"]})
    finally:
        ledger.close()


def test_starttls_to_a_relay_with_a_private_ca_from_the_cli(tmp_path: Path) -> None:
    authority = make_authority(tmp_path, "relay-ca")
    dsn = f"sqlite:///{tmp_path / 'ledger.db'}"
    ledger = Ledger.open(dsn)
    ledger.migrate()
    ledger.ingest([make_event(at=containing("week", datetime.now(UTC)).previous().since, cost="0.5")])
    ledger.close()
    (tmp_path / "secrets" / "smtp").mkdir(parents=True)
    (tmp_path / "secrets" / "smtp" / "username").write_text(USERNAME)
    (tmp_path / "secrets" / "smtp" / "password").write_text(PASSWORD)
    (tmp_path / "reports").mkdir()
    with smtp_server(server_context(authority, tmp_path)) as (box, port):
        spec = {
            "to": ["a@example.com"],
            "from": "t@example.com",
            "host": "127.0.0.1",
            "port": port,
            "startTLS": True,
            "credentialsSecretRef": {"name": "smtp"},
        }
        manifest = {
            "apiVersion": "tollway.dev/v1alpha1",
            "kind": "CostReport",
            "metadata": {"name": "weekly", "namespace": "team-a"},
            "spec": {"schedule": "* * * * *", "channels": [{"name": "mail", "email": spec}]},
        }
        (tmp_path / "reports" / "weekly.yaml").write_text(yaml.safe_dump(manifest))
        run = subprocess.run(
            [
                *(sys.executable, "-m", "tollway.cli", "meter", "reports", "--once"),
                *("--folder", str(tmp_path / "reports"), "--secrets-dir", str(tmp_path / "secrets")),
                *("--smtp-ca-file", str(authority.pem), "--db", dsn),
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "mail: sent" in run.stdout, run.stdout
    assert len(box.messages) == 1 and box.over_tls == [True]
    # The server offered AUTH before STARTTLS too: the channel logged in only once TLS was up.
    assert box.logins == [(USERNAME, True)]


@pytest.mark.parametrize("trusted", ["another-ca", "system-roots"])
async def test_a_certificate_the_channel_does_not_trust_is_refused(
    week_report: CostReport, tmp_path: Path, trusted: str
) -> None:
    server_ca = make_authority(tmp_path, "relay-ca")
    other = make_authority(tmp_path, "other-ca").pem if trusted == "another-ca" else None
    with smtp_server(server_context(server_ca, tmp_path)) as (box, port):
        channel = EmailChannel(
            ("a@example.com",), "t@example.com", "127.0.0.1", port, True, USERNAME, PASSWORD, other
        )
        with pytest.raises(DeliveryError) as refused:
            await channel.send(week_report, DELIVERY, "Weekly")
    reason = str(refused.value)
    assert "certificate verify failed" in reason, reason
    assert PASSWORD not in reason and USERNAME not in reason
    assert box.logins == [] and box.messages == []


async def test_a_server_without_starttls_is_refused_not_spoken_to_in_plain_text(
    week_report: CostReport,
) -> None:
    with smtp_server() as (box, port):
        channel = EmailChannel(
            ("a@example.com",), "t@example.com", "127.0.0.1", port, True, USERNAME, PASSWORD
        )
        with pytest.raises(DeliveryError, match="does not offer STARTTLS; not sending in plain text"):
            await channel.send(week_report, DELIVERY, "Weekly")
    assert box.logins == [] and box.messages == []


async def test_an_unreadable_ca_file_is_named(week_report: CostReport, tmp_path: Path) -> None:
    missing = tmp_path / "missing.pem"
    channel = EmailChannel(("a@example.com",), "t@example.com", "127.0.0.1", 1, ca_file=missing)
    with pytest.raises(DeliveryError, match=f"CA file {re.escape(str(missing))}: not usable"):
        await channel.send(week_report, DELIVERY, "Weekly")
