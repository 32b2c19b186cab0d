"""A cost report's period: `last-week`, `last-month`, `YYYY-MM` or an ISO week `YYYY-Www`, in UTC.

Weeks are ISO weeks (Monday 00:00 UTC to the next Monday), so a week may span two months or two
years (2026-W53 ends in January 2027). The period before a month is the calendar month before it,
the period before a week the week before it: a comparison of like with like, not of equal hours.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Literal

Kind = Literal["week", "month"]
_MONTH = re.compile(r"^(\d{4})-(\d{2})$")
_WEEK = re.compile(r"^(\d{4})-W(\d{2})$")


@dataclass(frozen=True)
class ReportPeriod:
    label: str  # "2026-11" or "2026-W45"
    kind: Kind
    since: datetime
    until: datetime

    def previous(self) -> ReportPeriod:
        return _month(self.since - timedelta(days=1)) if self.kind == "month" else _week(self.since - _DAY)

    def next(self) -> ReportPeriod:
        return _month(self.until) if self.kind == "month" else _week(self.until)


_DAY = timedelta(days=1)


def _month(moment: datetime | date) -> ReportPeriod:
    start = datetime(moment.year, moment.month, 1, tzinfo=UTC)
    end = datetime(start.year + start.month // 12, start.month % 12 + 1, 1, tzinfo=UTC)
    return ReportPeriod(f"{start.year:04d}-{start.month:02d}", "month", start, end)


def _week(moment: datetime | date) -> ReportPeriod:
    year, week, weekday = moment.isocalendar()
    monday = date(moment.year, moment.month, moment.day) - timedelta(days=weekday - 1)
    start = datetime(monday.year, monday.month, monday.day, tzinfo=UTC)
    return ReportPeriod(f"{year:04d}-W{week:02d}", "week", start, start + timedelta(days=7))


def containing(kind: Kind, now: datetime) -> ReportPeriod:
    """The period of `kind` that `now` falls in."""
    utc = now.astimezone(UTC)
    return _month(utc) if kind == "month" else _week(utc)


def parse_report_period(text: str, now: datetime) -> ReportPeriod:
    """`last-week` / `last-month` (the last complete one before `now`), `YYYY-MM` or `YYYY-Www`."""
    if text == "last-week":
        return containing("week", now).previous()
    if text == "last-month":
        return containing("month", now).previous()
    if found := _MONTH.fullmatch(text):
        year, month = int(found[1]), int(found[2])
        if 1 <= month <= 12 and year >= 1:
            return _month(date(year, month, 1))
    if found := _WEEK.fullmatch(text):
        try:
            return _week(date.fromisocalendar(int(found[1]), int(found[2]), 1))
        except ValueError:
            raise ValueError(f"period: {text!r}: {found[1]} has no ISO week {found[2]}") from None
    raise ValueError(f"period: expected last-week, last-month, YYYY-MM or YYYY-Www, got {text!r}")
