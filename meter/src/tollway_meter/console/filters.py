"""The console's query-string parameters as typed filters, each bad value a `BadFilter` naming it.

Times are ISO 8601 (UTC unless they say otherwise) or a duration back from now (`7d`, `12h`, `2w`);
the request list's page cursor is `<event time>~<event id>` of the last row shown, the sessions
list's `<last call's time>~<session id>` of the last session shown.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from tollway_sidecar.contract.usage_event import PROPERTY_NAME

DEFAULT_SINCE = timedelta(days=7)
PAGE_SIZE = 50
MAX_PAGE_SIZE = 500
_DURATION = re.compile(r"^(\d+)([hdw])$")
_UNITS = {"h": "hours", "d": "days", "w": "weeks"}


class BadFilter(ValueError):
    def __init__(self, param: str, message: str) -> None:
        super().__init__(f"{param}: {message}")
        self.param = param


def parse_time(param: str, text: str, now: datetime) -> datetime:
    match = _DURATION.match(text)
    if match:
        return now - timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise BadFilter(param, f"expected an ISO 8601 time or 7d / 12h / 2w, got {text!r}") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


@dataclass(frozen=True)
class TimeRange:
    since: datetime
    until: datetime

    @staticmethod
    def parse(query: Mapping[str, str], now: datetime) -> TimeRange:
        since_text, until_text = query.get("since", ""), query.get("until", "")
        since = parse_time("since", since_text, now) if since_text else now - DEFAULT_SINCE
        until = parse_time("until", until_text, now) if until_text else now + timedelta(hours=1)
        if since >= until:
            raise BadFilter("since", f"{since.isoformat()} is not before until {until.isoformat()}")
        return TimeRange(since, until)


@dataclass(frozen=True)
class Cursor:
    """Where the previous page ended: rows strictly older than (time, id) come next."""

    time: datetime
    id: str

    def text(self) -> str:
        return f"{self.time.astimezone(UTC).isoformat()}~{self.id}"

    @staticmethod
    def parse(text: str) -> Cursor:
        time_text, _, id_text = text.partition("~")
        try:
            moment = datetime.fromisoformat(time_text)
            event_id = str(uuid.UUID(id_text))
        except ValueError:
            raise BadFilter("after", f"not a page cursor: {text!r}") from None
        return Cursor(moment if moment.tzinfo else moment.replace(tzinfo=UTC), event_id)


@dataclass(frozen=True)
class SessionCursor:
    """Where the previous sessions page ended: sessions last active before (last, session id) come
    next. The id is any text; the time, first, holds no `~`."""

    last: datetime
    session_id: str

    def text(self) -> str:
        return f"{self.last.astimezone(UTC).isoformat()}~{self.session_id}"

    @staticmethod
    def parse(text: str) -> SessionCursor:
        time_text, sep, session_id = text.partition("~")
        try:
            moment = datetime.fromisoformat(time_text)
        except ValueError:
            moment = None
        if moment is None or not sep or not session_id:
            raise BadFilter("after", f"not a sessions page cursor: {text!r}")
        return SessionCursor(moment if moment.tzinfo else moment.replace(tzinfo=UTC), session_id)


def parse_limit(query: Mapping[str, str]) -> int:
    limit_text = query.get("limit", str(PAGE_SIZE))
    if not limit_text.isdigit() or not 1 <= int(limit_text) <= MAX_PAGE_SIZE:
        raise BadFilter("limit", f"expected an integer from 1 to {MAX_PAGE_SIZE}, got {limit_text!r}")
    return int(limit_text)


@dataclass(frozen=True)
class SessionFilter:
    """The sessions list: a time range, the namespace scope, and its page."""

    range: TimeRange
    namespace: str = ""
    after: SessionCursor | None = None
    limit: int = PAGE_SIZE

    @staticmethod
    def parse(query: Mapping[str, str], now: datetime) -> SessionFilter:
        after_text = query.get("after", "")
        return SessionFilter(
            range=TimeRange.parse(query, now),
            namespace=query.get("namespace", ""),
            after=SessionCursor.parse(after_text) if after_text else None,
            limit=parse_limit(query),
        )

    def query(self, **changes: str) -> dict[str, str]:
        params = {
            "since": self.range.since.isoformat(),
            "until": self.range.until.isoformat(),
            "namespace": self.namespace,
            "limit": str(self.limit),
        }
        params.update(changes)
        return {k: v for k, v in params.items() if v}


@dataclass(frozen=True)
class RequestFilter:
    """The request list's filters; empty text means "any"."""

    range: TimeRange
    namespace: str = ""  # not a column filter: the access scope narrowed to it (403 if not allowed)
    key: str = ""
    team: str = ""
    user: str = ""
    end_user: str = ""
    model: str = ""
    status: int | None = None
    session: str = ""
    prop_name: str = ""
    prop_value: str = ""
    after: Cursor | None = None
    limit: int = PAGE_SIZE

    @staticmethod
    def parse(query: Mapping[str, str], now: datetime) -> RequestFilter:
        status_text = query.get("status", "")
        if status_text and not (status_text.isdigit() and 100 <= int(status_text) <= 599):
            raise BadFilter("status", f"expected an HTTP status 100-599, got {status_text!r}")
        limit = parse_limit(query)
        prop_name, prop_value = "", ""
        prop_text = query.get("property", "")
        if prop_text:
            prop_name, sep, prop_value = prop_text.partition("=")
            if not sep or not PROPERTY_NAME.fullmatch(prop_name):
                raise BadFilter(
                    "property", f"expected name=value with a valid property name, got {prop_text!r}"
                )
        after_text = query.get("after", "")
        return RequestFilter(
            range=TimeRange.parse(query, now),
            namespace=query.get("namespace", ""),
            key=query.get("key", ""),
            team=query.get("team", ""),
            user=query.get("user", ""),
            end_user=query.get("end_user", ""),
            model=query.get("model", ""),
            status=int(status_text) if status_text else None,
            session=query.get("session", ""),
            prop_name=prop_name,
            prop_value=prop_value,
            after=Cursor.parse(after_text) if after_text else None,
            limit=limit,
        )

    def columns(self) -> dict[str, str | int]:
        """The equality filters on plain columns: column name → value."""
        chosen: dict[str, str | int] = {
            "key_name": self.key,
            "team": self.team,
            "user_id": self.user,
            "end_user": self.end_user,
            "model": self.model,
            "session_id": self.session,
        }
        found = {column: value for column, value in chosen.items() if value != ""}
        if self.status is not None:
            found["status"] = self.status
        return found

    def query(self, **changes: str) -> dict[str, str]:
        """These filters as query-string parameters (for the form and the next page's link)."""
        params = {
            "since": self.range.since.isoformat(),
            "until": self.range.until.isoformat(),
            "namespace": self.namespace,
            "key": self.key,
            "team": self.team,
            "user": self.user,
            "end_user": self.end_user,
            "model": self.model,
            "status": "" if self.status is None else str(self.status),
            "session": self.session,
            "property": f"{self.prop_name}={self.prop_value}" if self.prop_name else "",
        }
        params.update(changes)
        return {k: v for k, v in params.items() if v}
