"""Captured content in the ledger: its own table, written only for capturing routes' events, never
into the usage rows; deleted when its retention ends (bounded batches, a driven clock) without
changing a byte of the usage rows or roll-ups, closed periods included; shown on the console's
request page only to a viewer allowed to see content. On SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from console_html import read_page
from ledger_events import NOV, make_event

from tollway_meter.console import mount
from tollway_meter.console.access import Access, Unauthenticated
from tollway_meter.content import ContentExpiry, expire
from tollway_meter.ledger import Ledger
from tollway_meter.retention import retain
from tollway_sidecar.contract.usage_event import Content, UsageEvent

Client = TestClient[web.Request, web.Application]


def captured(days: int, *, at: datetime = NOV, namespace: str = "team-a", n: int = 0) -> UsageEvent:
    content = Content(prompt=f"user: question {n}", completion=f"answer {n}", retention_days=days)
    return make_event(at=at, namespace=namespace, content=content)


def content_rows(ledger: Ledger) -> list[tuple[str, str, datetime, datetime, str, str]]:
    from tollway_meter.console.reads import as_time

    with ledger.transaction(readonly=True) as cur:
        cur.execute(
            "SELECT event_id, namespace, event_time, expires_at, prompt, completion "
            "FROM captured_content ORDER BY event_id"
        )
        return [
            (str(r[0]), str(r[1]), as_time(r[2]), as_time(r[3]), str(r[4]), str(r[5])) for r in cur.fetchall()
        ]


def usage_snapshot(ledger: Ledger) -> tuple[list[str], list[str]]:
    """Every usage row and roll-up, as text, in key order (compared before and after)."""
    with ledger.transaction(readonly=True) as cur:
        cur.execute("SELECT * FROM usage_events ORDER BY id")
        events = [repr(tuple(row)) for row in cur.fetchall()]
        cur.execute("SELECT * FROM usage_hourly ORDER BY hour, adjustment, namespace, key_name, model")
        hourly = [repr(tuple(row)) for row in cur.fetchall()]
    return events, hourly


def stored_event(ledger: Ledger, event: UsageEvent) -> dict[str, Any]:
    with ledger.transaction(readonly=True) as cur:
        cur.execute(ledger.sql("SELECT event FROM usage_events WHERE id = %s"), (ledger.uuid(str(event.id)),))
        row: Any = cur.fetchone()
    return row[0] if isinstance(row[0], dict) else json.loads(row[0])  # type: ignore[no-any-return]


def test_content_goes_into_its_own_table_and_never_into_the_usage_row(ledger: Ledger) -> None:
    with_content, without = captured(30), make_event()
    assert ledger.ingest([with_content, without]).inserted == 2
    assert content_rows(ledger) == [
        (str(with_content.id), "team-a", NOV, NOV + timedelta(days=30), "user: question 0", "answer 0")
    ]
    for event in (with_content, without):
        assert "content" not in stored_event(ledger, event)["data"]
    # The usage row is the event without its content, exactly.
    assert UsageEvent.from_dict(stored_event(ledger, with_content)).data.content is None
    assert stored_event(ledger, with_content) == json.loads(with_content.to_json(content=False))


def test_a_replayed_event_writes_its_content_once(ledger: Ledger) -> None:
    event = captured(7)
    ledger.ingest([event])
    before = content_rows(ledger)
    result = ledger.ingest([event, event])
    assert (result.inserted, result.duplicates) == (0, 2)
    assert content_rows(ledger) == before


def test_old_events_without_the_field_still_ingest(ledger: Ledger) -> None:
    body = json.loads(make_event().to_json())
    assert "content" not in body["data"]
    assert ledger.ingest([UsageEvent.from_dict(body)]).inserted == 1
    assert content_rows(ledger) == []


def test_expiry_drops_exactly_the_expired_content_and_no_usage_byte(ledger: Ledger) -> None:
    events = [captured(days, n=i) for i, days in enumerate((1, 7, 7, 8, 30))] + [make_event()]
    ledger.ingest(events)
    usage = usage_snapshot(ledger)
    assert expire(ledger, NOV + timedelta(days=1) - timedelta(microseconds=1)) == 0
    # At NOV + 7 days: the 1-day row and both 7-day rows (expired at that very moment) go.
    assert expire(ledger, NOV + timedelta(days=7)) == 3
    assert [row[0] for row in content_rows(ledger)] == sorted([str(events[3].id), str(events[4].id)])
    assert usage_snapshot(ledger) == usage
    assert expire(ledger, NOV + timedelta(days=7)) == 0  # nothing more: a second pass is a no-op


def test_expiry_deletes_in_bounded_batches_until_none_is_left(ledger: Ledger) -> None:
    ledger.ingest([captured(1, n=i, at=NOV + timedelta(seconds=i)) for i in range(7)])
    assert expire(ledger, NOV + timedelta(days=2), batch=3) == 7
    assert content_rows(ledger) == []


def test_a_closed_periods_content_still_expires_and_its_rows_stay_frozen(ledger: Ledger) -> None:
    events = [captured(2, n=0), captured(90, n=1), make_event()]
    ledger.ingest(events)
    ledger.close_period("2026-11")
    usage = usage_snapshot(ledger)
    assert expire(ledger, NOV + timedelta(days=3)) == 1
    assert [row[0] for row in content_rows(ledger)] == [str(events[1].id)]
    assert usage_snapshot(ledger) == usage
    assert ledger.closed_periods() == frozenset({"2026-11"})


async def test_the_expiry_job_runs_on_its_clock_and_counts(ledger_dsn: str, ledger: Ledger) -> None:
    ledger.ingest([captured(1, n=0), captured(3, n=1)])
    moments = iter([NOV + timedelta(days=2), NOV + timedelta(days=4)])
    job = ContentExpiry(Ledger.open(ledger_dsn), every_s=0.01, now=lambda: next(moments))
    try:
        assert await job.expire_once() == 1
        assert await job.expire_once() == 1
    finally:
        job.ledger.close()
    assert job.state.expired == 2
    assert content_rows(ledger) == []


async def test_the_expiry_job_stops_when_told(ledger_dsn: str, ledger: Ledger) -> None:
    ledger.ingest([captured(1)])
    job = ContentExpiry(Ledger.open(ledger_dsn), every_s=0.01, now=lambda: NOV + timedelta(days=5))
    stop = asyncio.Event()
    task = asyncio.create_task(job.run(stop))
    try:
        for _ in range(500):
            if job.state.expired:
                break
            await asyncio.sleep(0.01)
        stop.set()
        await asyncio.wait_for(task, timeout=30)
    finally:
        job.ledger.close()
    assert job.state.expired == 1 and content_rows(ledger) == []


def test_detail_retention_takes_the_months_content_with_it(ledger: Ledger) -> None:
    old, kept = captured(365, n=0), captured(365, n=1, at=NOV.replace(year=2027, month=2))
    ledger.ingest([old, kept])
    ledger.close_period("2026-11")
    (dropped,) = [r for r in retain(ledger, NOV.replace(year=2027, month=3), keep_months=2) if r.dropped]
    assert dropped.period == "2026-11"
    assert [row[0] for row in content_rows(ledger)] == [str(kept.id)]


# --- the console ---------------------------------------------------------------------------------


class Fixed:
    """Viewers decided at the access layer (the decision itself: tests/kube/test_console_rbac.py)."""

    def __init__(self, decisions: dict[str, Access]) -> None:
        self.decisions = decisions

    async def access(self, token: str | None, namespaces: object) -> Access:
        if token is None or token not in self.decisions:
            raise Unauthenticated("not a token this test knows")
        return self.decisions[token]

    async def close(self) -> None:
        return None


READER = Access("reader", frozenset({"team-a"}), frozenset({"team-a"}))  # may get secrets
VIEWER = Access("viewer", frozenset({"team-a"}), frozenset())  # rows only


@pytest.fixture
async def console(ledger: Ledger) -> AsyncIterator[tuple[Client, list[UsageEvent]]]:
    secret = Content(
        prompt="user: <b>my plan</b>", completion="the [REDACTED:email] answer", retention_days=7
    )
    events = [
        make_event(content=secret),
        make_event(),
        captured(1, at=NOV - timedelta(days=2), n=9),  # expired, not yet deleted by the job
    ]
    ledger.ingest(events)
    app = web.Application()
    authorizer = Fixed({"reader": READER, "viewer": VIEWER})
    mount(app, ledger, clock=lambda: NOV + timedelta(hours=1), authorizer=authorizer)
    async with TestClient(TestServer(app)) as client:
        yield client, events


async def page(client: Client, event: UsageEvent, token: str) -> str:
    answer = await client.get(f"/console/requests/{event.id}", headers={"Authorization": f"Bearer {token}"})
    html = await answer.text()
    assert answer.status == 200, html
    return html


async def test_an_allowed_viewer_sees_the_captured_prompt_and_response(
    console: tuple[Client, list[UsageEvent]],
) -> None:
    client, events = console
    html = await page(client, events[0], "reader")
    texts = read_page(html).texts
    assert texts["content-prompt"] == "user: <b>my plan</b>"  # shown as text, escaped
    assert "<b>my plan</b>" not in html
    assert texts["content-completion"] == "the [REDACTED:email] answer"
    assert "2026-11-17 09:15:00" in texts["content"]  # kept until the call's time plus 7 days


async def test_a_viewer_without_secrets_access_sees_it_hidden(
    console: tuple[Client, list[UsageEvent]],
) -> None:
    client, events = console
    html = await page(client, events[0], "viewer")
    texts = read_page(html).texts
    assert "content-hidden" in texts and "content" not in texts
    assert "my plan" not in html and "REDACTED:email" not in html


@pytest.mark.parametrize("index", [1, 2], ids=["not captured", "expired"])
async def test_a_request_without_content_says_so(
    console: tuple[Client, list[UsageEvent]], index: int
) -> None:
    client, events = console
    texts = read_page(await page(client, events[index], "reader")).texts
    assert "not captured for this route" in texts["content"].lower()
    assert "content-prompt" not in texts
