"""Calendar budget periods in UTC: Daily, Weekly (from Monday), Monthly, or Total."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from tollway_sidecar.config.models import Period

__all__ = ["EPOCH", "ms_to_datetime", "period_bounds", "period_key"]

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def ms_to_datetime(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


def period_bounds(period: Period, now: datetime) -> tuple[datetime, datetime | None]:
    """[start, end) of the period containing `now`; `end` is None for Total."""
    now = now.astimezone(UTC)
    day = now.replace(hour=0, minute=0, second=0, microsecond=0)
    if period == "Daily":
        return day, day + timedelta(days=1)
    if period == "Weekly":
        start = day - timedelta(days=day.weekday())
        return start, start + timedelta(days=7)
    if period == "Monthly":
        start = day.replace(day=1)
        end = (
            start.replace(year=start.year + 1, month=1)
            if start.month == 12
            else start.replace(month=start.month + 1)
        )
        return start, end
    return EPOCH, None


def period_key(period: Period, now: datetime) -> str:
    """A stable name for the period containing `now`, e.g. `2026-11-22`, `2026-W47`, `2026-11`, `total`."""
    start, _end = period_bounds(period, now)
    if period == "Daily":
        return start.strftime("%Y-%m-%d")
    if period == "Weekly":
        year, week, _ = start.isocalendar()
        return f"{year}-W{week:02d}"
    if period == "Monthly":
        return start.strftime("%Y-%m")
    return "total"
