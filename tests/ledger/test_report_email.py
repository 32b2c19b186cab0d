"""The cost report's e-mail, received by a real SMTP server (aiosmtpd): its parts, the chart PNG the
HTML refers to and what its bars show."""

from __future__ import annotations

import io
import re
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage

import pytest
from ledger_events import make_event
from PIL import Image
from smtp_box import smtp_server

from tollway_meter.delivery import EmailChannel
from tollway_meter.ledger import Ledger
from tollway_meter.report import CostReport, Scope, build_report
from tollway_meter.report_chart import BAR
from tollway_meter.report_period import parse_report_period

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
