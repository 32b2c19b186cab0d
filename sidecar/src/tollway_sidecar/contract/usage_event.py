"""The usage event (v1): one per settled call, the contract between the sidecar and the meter.

A CloudEvents 1.0 JSON envelope (structured mode) whose `data` says who called, what was routed
where, the tokens and the exact cost. The sidecar appends it to the Redis Stream `USAGE_STREAM`
(field `USAGE_FIELD`); the meter reads that stream as a consumer group. Standard library only, so
the meter can import it without the sidecar's dependencies.

Money is a decimal string in USD with at most 9 fraction digits (one nano-dollar), never a float;
`cost_nanos` gives the integer nano-USD the ledger adds up. A new field that older meters may ignore
keeps `v1`; a change of meaning or a removed field is a new `type` (`...usage.v2`). `data.content`
(a capturing route's redacted prompt and completion) is such an optional v1 field.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import re
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from tollway_sidecar.contract.money import NANO_PER_USD

USAGE_STREAM = "tollway:usage"
USAGE_DEAD_LETTER_STREAM = "tollway:usage:dead"
USAGE_FIELD = "event"
# The producer's cap on the stream (XADD MAXLEN ~, `TOLLWAY_USAGE_STREAM_MAXLEN`): the meter trims
# what it acknowledged; the cap bounds Redis memory (~1 KB an event) when no meter runs, and drops
# the oldest unread events only once a meter is this many events behind.
USAGE_STREAM_MAXLEN = 1_000_000
USAGE_TYPE_V1 = "dev.tollway.usage.v1"
SPEC_VERSION = "1.0"

# Properties are caller-chosen labels (`x-tollway-property-<name>` headers) that end up as group-by
# keys in the ledger: bounded so one client cannot blow up an event or the ledger's indexes.
MAX_PROPERTIES = 16
MAX_PROPERTY_NAME = 64
MAX_PROPERTY_VALUE = 256
PROPERTY_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")
# Every other free-text field (names, ids, paths) is at most this long.
MAX_TEXT = 512

# Counts (tokens, milliseconds) and one call's cost have ceilings, so that a ledger's 64-bit sums
# cannot overflow from one absurd event and a bad value is refused here, not by the database.
MAX_COUNT = 10**12
MAX_COST_USD = 1_000_000

# An event's time picks its month partition and billing period: a plausible range, deterministic
# (not relative to now, so a replay of old events parses the same way).
MIN_YEAR = 2000
MAX_YEAR = 9000

# Captured content (`data.content`): each text at most this many characters, a longer one cut with
# `TRUNCATED` at its end (counted in the bound); kept by the ledger 1-365 days.
MAX_CONTENT_TEXT = 16_384
TRUNCATED = "\n[… truncated by tollway]"
MIN_RETENTION_DAYS = 1
MAX_RETENTION_DAYS = 365

NANOS_PER_USD = NANO_PER_USD
_NANO = Decimal("0.000000001")


class UsageEventError(ValueError):
    """An event that does not match the v1 contract; the message names the field."""

    def __init__(self, field_path: str, problem: str) -> None:
        super().__init__(f"{field_path}: {problem}")
        self.field = field_path
        self.problem = problem


# --- money --------------------------------------------------------------------------------------


_USD_TEXT = re.compile(r"\d+(\.\d{1,9})?")


def parse_usd(text: str, where: str = "cost") -> Decimal:
    """A non-negative USD amount from its decimal string, exact to the nano-dollar."""
    if not isinstance(text, str) or not _USD_TEXT.fullmatch(text):
        raise UsageEventError(where, f"expected a decimal string like '0.000125', <= 9 decimals: {text!r}")
    try:
        return Decimal(text)
    except InvalidOperation as exc:  # unreachable after the pattern, kept for safety
        raise UsageEventError(where, f"not a decimal: {text!r}") from exc


def usd_to_nanos(amount: Decimal) -> int:
    """Exact integer nano-USD; refuses an amount finer than a nano-dollar rather than rounding it."""
    nanos = amount * NANOS_PER_USD
    if nanos != nanos.to_integral_value():
        raise UsageEventError("cost", f"{amount} is finer than one nano-dollar")
    return int(nanos)


def nanos_to_usd(nanos: int) -> Decimal:
    """The Decimal USD for integer nano-USD, always with 9 fraction digits."""
    return (Decimal(nanos) / NANOS_PER_USD).quantize(_NANO)


# --- UUIDv7 -------------------------------------------------------------------------------------

_RAND_BITS = 74  # 12 bits rand_a + 62 bits rand_b


class Uuid7Generator:
    """RFC 9562 UUIDv7s: 48 bits of Unix ms, version 7, variant 10, 74 random bits.

    Ids strictly increase even within one millisecond (RFC 9562 §6.2 method 3: the random part
    counts up) and when the clock steps back, so one replica's event ids sort by creation.
    """

    def __init__(self, clock_ms: Callable[[], int] | None = None) -> None:
        self._clock = clock_ms or (lambda: time.time_ns() // 1_000_000)
        self._lock = threading.Lock()
        self._last_ms = 0
        self._last_rand = 0

    def __call__(self) -> uuid.UUID:
        ms = self._clock()
        with self._lock:
            if ms <= self._last_ms:
                # Same millisecond (or the clock stepped back): stay on the last one and count up.
                ms = self._last_ms
                rand = self._last_rand + 1 + int.from_bytes(os.urandom(2))
                if rand >> _RAND_BITS:
                    ms += 1
                    rand = int.from_bytes(os.urandom(10)) >> 7
            else:
                # The top random bit starts at 0, leaving room to count up within the millisecond.
                rand = int.from_bytes(os.urandom(10)) >> 7
            self._last_ms, self._last_rand = ms, rand
        value = (ms & ((1 << 48) - 1)) << 80 | 0x7 << 76 | (rand >> 62) << 64 | 0b10 << 62
        return uuid.UUID(int=value | (rand & ((1 << 62) - 1)))


uuid7 = Uuid7Generator()


def uuid7_time(value: uuid.UUID) -> datetime:
    """When a UUIDv7 was made (millisecond precision, UTC)."""
    return datetime.fromtimestamp((value.int >> 80) / 1000, tz=UTC)


# --- the event ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Attempt:
    """One try at a backend, in order; the last one answered (or failed) the call."""

    backend: str
    provider: str
    upstream_model: str
    status: int


@dataclass(frozen=True)
class Tokens:
    """Token counts as the provider reported them (or the gateway counted them)."""

    input: int = 0
    output: int = 0
    cached_read: int = 0
    cache_write: int = 0
    reasoning: int = 0


@dataclass(frozen=True)
class Content:
    """A capturing route's prompt and completion, redacted before they were put in the event, and
    how many days the ledger keeps them."""

    prompt: str
    completion: str
    retention_days: int


def bounded_content(text: str) -> str:
    """`text` within `MAX_CONTENT_TEXT`, cut with the `TRUNCATED` marker when longer."""
    if len(text) <= MAX_CONTENT_TEXT:
        return text
    return text[: MAX_CONTENT_TEXT - len(TRUNCATED)] + TRUNCATED


@dataclass(frozen=True)
class UsageData:
    """The `data` of a v1 usage event. `key_name` names the VirtualKey; the key itself never appears."""

    namespace: str
    key_name: str
    route: str
    model: str
    status: int
    outcome: str
    cost: str
    billable: bool
    team: str = ""
    user: str = ""
    end_user: str = ""
    session_id: str = ""
    session_path: str = ""
    session_name: str = ""
    properties: dict[str, str] = field(default_factory=dict)
    attempts: tuple[Attempt, ...] = ()
    tokens: Tokens = field(default_factory=Tokens)
    price_source: str = ""
    price_version: str = ""
    budgets: tuple[str, ...] = ()
    latency_ms: int = 0
    ttft_ms: int | None = None
    streamed: bool = False
    request_id: str = ""
    trace_id: str = ""
    # The response cache: its outcome for the call ("" on a route without one) and, on a hit, what
    # the hit saved (a USD decimal string, the cost of the call that filled the entry). Both are
    # left out of the JSON when empty.
    cache: str = ""
    saved: str = ""
    # Only on a route that captures content; left out of the JSON otherwise.
    content: Content | None = None

    @functools.cached_property
    def cost_nanos(self) -> int:
        return usd_to_nanos(parse_usd(self.cost, "data.cost"))

    @functools.cached_property
    def saved_nanos(self) -> int:
        return usd_to_nanos(parse_usd(self.saved, "data.saved")) if self.saved else 0

    @property
    def is_cache_hit(self) -> bool:
        return self.cache in CACHE_HITS

    @property
    def backend(self) -> str:
        return self.attempts[-1].backend if self.attempts else ""

    @property
    def provider(self) -> str:
        return self.attempts[-1].provider if self.attempts else ""


# `expired`: a reservation that expired unsettled, charged at its estimate (status 504). Added within
# v1: a meter that stores outcomes as text takes it like the others.
OUTCOMES = frozenset({"ok", "error", "denied", "cancelled", "expired"})
CACHE_OUTCOMES = frozenset({"HIT", "SEMANTIC_HIT", "MISS", "REFRESH", "BYPASS"})
CACHE_HITS = frozenset({"HIT", "SEMANTIC_HIT"})
_CACHE_FIELDS = ("cache", "saved")


@dataclass(frozen=True)
class UsageEvent:
    """A CloudEvents 1.0 envelope around `UsageData`. `id` is the gateway's UUIDv7 for the call."""

    id: uuid.UUID
    source: str
    time: datetime
    subject: str
    data: UsageData
    type: str = USAGE_TYPE_V1

    def __post_init__(self) -> None:
        _validate(self)

    def to_json(self, *, content: bool = True) -> str:
        """The event as JSON; `content=False` leaves `data.content` out (the ledger's usage rows)."""
        data = _data_to_dict(self.data)
        if not content:
            data.pop("content", None)
        body = {
            "specversion": SPEC_VERSION,
            "id": str(self.id),
            "source": self.source,
            "type": self.type,
            "time": format_time(self.time),
            "subject": self.subject,
            "datacontenttype": "application/json",
            "data": data,
        }
        return json.dumps(body, separators=(",", ":"), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> UsageEvent:
        """Parse and validate; raises `UsageEventError` naming the first bad field."""
        try:
            if isinstance(text, str) and not text.startswith("\ufeff"):
                body = _DECODER.decode(text)  # json.loads would build this decoder for every event
            else:
                body = json.loads(text, parse_float=Decimal)  # bytes, and its error for a BOM
        except (ValueError, UnicodeDecodeError) as exc:
            raise UsageEventError("(event)", f"not JSON: {exc}") from exc
        return cls.from_dict(body)

    @classmethod
    def from_dict(cls, body: Any) -> UsageEvent:
        if not isinstance(body, dict):
            raise UsageEventError("(event)", "expected a JSON object")
        if body.get("specversion") != SPEC_VERSION:
            raise UsageEventError(
                "specversion", f"expected {SPEC_VERSION!r}, got {body.get('specversion')!r}"
            )
        if body.get("type") != USAGE_TYPE_V1:
            raise UsageEventError(
                "type", f"unknown event type {body.get('type')!r} (this meter reads {USAGE_TYPE_V1})"
            )
        content_type = body.get("datacontenttype", "application/json")
        if content_type != "application/json":
            raise UsageEventError("datacontenttype", f"expected 'application/json', got {content_type!r}")
        raw_id = _get(body, "id", str, "")
        try:
            event_id = uuid.UUID(raw_id)
        except ValueError as exc:
            raise UsageEventError("id", f"not a UUID: {raw_id!r}") from exc
        data = body.get("data")
        if not isinstance(data, dict):
            raise UsageEventError("data", "expected a JSON object")
        return cls(
            id=event_id,
            source=_get(body, "source", str, ""),
            time=_parse_time(_get(body, "time", str, "")),
            subject=_get(body, "subject", str, ""),
            data=_data_from_dict(data),
        )


_DECODER = json.JSONDecoder(parse_float=Decimal)
_DATA_FIELDS = tuple(f.name for f in dataclasses.fields(UsageData))
# `dataclasses.fields` builds its answer on every call: the validation, run per event, reads these.
_TOKEN_FIELDS = tuple(f.name for f in dataclasses.fields(Tokens))


def _data_to_dict(data: UsageData) -> dict[str, Any]:
    """Like dataclasses.asdict, without its deep copies (the event is immutable): ~3x faster."""
    body = {name: getattr(data, name) for name in _DATA_FIELDS}
    body["attempts"] = [
        {"backend": a.backend, "provider": a.provider, "upstream_model": a.upstream_model, "status": a.status}
        for a in data.attempts
    ]
    tokens = data.tokens
    body["tokens"] = {  # explicit: dataclasses.asdict deep-copies, ~5 µs of the event's build
        "input": tokens.input,
        "output": tokens.output,
        "cached_read": tokens.cached_read,
        "cache_write": tokens.cache_write,
        "reasoning": tokens.reasoning,
    }
    body["budgets"] = list(data.budgets)
    content = data.content
    if content is None:
        del body["content"]
    else:
        body["content"] = {
            "prompt": content.prompt,
            "completion": content.completion,
            "retention_days": content.retention_days,
        }
    for name in _CACHE_FIELDS:
        if not body[name]:
            del body[name]
    return body


_ABSENT = object()


def _get(obj: dict[str, Any], name: str, kind: type, where: str) -> Any:
    value = obj.get(name, _ABSENT)
    # The common case, decided without building the path; `type is` also keeps a bool from an int.
    if type(value) is kind:
        return value
    path = f"{where}.{name}" if where else name
    if name not in obj:
        raise UsageEventError(path, "required")
    value = obj[name]
    # bool is an int in Python: a `true` where a count belongs is still an error.
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise UsageEventError(path, f"expected {kind.__name__}, got {type(value).__name__}")
    return value


def _opt(obj: dict[str, Any], name: str, kind: type, where: str, default: Any) -> Any:
    value = obj.get(name, _ABSENT)
    if type(value) is kind:
        return value
    if name not in obj or (obj[name] is None and default is None):
        return default
    return _get(obj, name, kind, where)


_OPTIONAL_TEXT = (
    "team",
    "user",
    "end_user",
    "session_id",
    "session_path",
    "session_name",
    "price_source",
    "price_version",
    "request_id",
    "trace_id",
    *_CACHE_FIELDS,
)


def _data_from_dict(data: dict[str, Any]) -> UsageData:
    w = "data"
    # Unknown fields are ignored: a later v1 producer may add one (see the module docstring).
    text = {n: _opt(data, n, str, w, "") for n in _OPTIONAL_TEXT}
    properties = _opt(data, "properties", dict, w, {})
    tokens = _opt(data, "tokens", dict, w, {})
    attempts = _opt(data, "attempts", list, w, [])
    budgets = _opt(data, "budgets", list, w, [])
    for i, budget in enumerate(budgets):
        if not isinstance(budget, str):
            raise UsageEventError(f"data.budgets[{i}]", "expected str")
    parsed_attempts = []
    for i, attempt in enumerate(attempts):
        where = f"data.attempts[{i}]"
        if not isinstance(attempt, dict):
            raise UsageEventError(where, "expected a JSON object")
        parsed_attempts.append(
            Attempt(
                backend=_get(attempt, "backend", str, where),
                provider=_get(attempt, "provider", str, where),
                upstream_model=_get(attempt, "upstream_model", str, where),
                status=_get(attempt, "status", int, where),
            )
        )
    return UsageData(
        **text,
        cost=_get(data, "cost", str, w),
        namespace=_get(data, "namespace", str, w),
        key_name=_get(data, "key_name", str, w),
        route=_get(data, "route", str, w),
        model=_get(data, "model", str, w),
        outcome=_get(data, "outcome", str, w),
        status=_get(data, "status", int, w),
        billable=_get(data, "billable", bool, w),
        properties=dict(properties),
        attempts=tuple(parsed_attempts),
        tokens=Tokens(**{n: _opt(tokens, n, int, "data.tokens", 0) for n in _TOKEN_FIELDS}),
        budgets=tuple(budgets),
        latency_ms=_opt(data, "latency_ms", int, w, 0),
        ttft_ms=_opt(data, "ttft_ms", int, w, None),
        streamed=_opt(data, "streamed", bool, w, False),
        content=_content_from_dict(_opt(data, "content", dict, w, None)),
    )


def _content_from_dict(content: dict[str, Any] | None) -> Content | None:
    if content is None:
        return None
    w = "data.content"
    return Content(
        prompt=_get(content, "prompt", str, w),
        completion=_get(content, "completion", str, w),
        retention_days=_get(content, "retention_days", int, w),
    )


_REQUIRED_TEXT = frozenset({"namespace", "key_name", "model", "outcome"})


def _validate(event: UsageEvent) -> None:
    if event.type != USAGE_TYPE_V1:
        raise UsageEventError("type", f"unknown event type {event.type!r}")
    if event.id.version != 7 or event.id.variant != uuid.RFC_4122:
        raise UsageEventError("id", f"expected a UUIDv7 made by the gateway, got {event.id}")
    if event.time.tzinfo is None:
        raise UsageEventError("time", "must carry a time zone")
    if not MIN_YEAR <= event.time.astimezone(UTC).year <= MAX_YEAR:
        raise UsageEventError("time", f"outside the years {MIN_YEAR}-{MAX_YEAR}: {format_time(event.time)}")
    for name in ("source", "subject"):
        _check_text(name, getattr(event, name), required=True)
    data = event.data
    for name in _DATA_FIELDS:
        value = getattr(data, name)
        if isinstance(value, str) and not _plain_text(value):
            _check_text(f"data.{name}", value, required=name in _REQUIRED_TEXT)
    if data.outcome not in OUTCOMES:
        raise UsageEventError("data.outcome", f"expected one of {sorted(OUTCOMES)}, got {data.outcome!r}")
    if not 100 <= data.status <= 599:
        raise UsageEventError("data.status", f"expected an HTTP status, got {data.status}")
    cost = data.cost_nanos
    if data.outcome == "denied" and (cost != 0 or data.billable):
        raise UsageEventError("data.cost", "a denied call costs 0 and is not billable")
    if cost > MAX_COST_USD * NANOS_PER_USD:
        raise UsageEventError("data.cost", f"more than {MAX_COST_USD} USD for one call")
    _check_cache(data)
    for f in dataclasses.fields(Tokens):
        _check_count(f"data.tokens.{f.name}", getattr(data.tokens, f.name))
    for name in ("latency_ms", "ttft_ms"):
        value = getattr(data, name)
        if value is not None:
            _check_count(f"data.{name}", value)
    for i, attempt in enumerate(data.attempts):
        for name in ("backend", "provider", "upstream_model"):
            value = getattr(attempt, name)
            if not _plain_text(value):
                _check_text(f"data.attempts[{i}].{name}", value, required=False)
    _check_properties(data.properties)
    if data.content is not None:
        _check_content(data.content)
    for i, budget in enumerate(data.budgets):
        _check_text(f"data.budgets[{i}]", budget, required=True)


def _check_cache(data: UsageData) -> None:
    if data.cache and data.cache not in CACHE_OUTCOMES:
        raise UsageEventError("data.cache", f"expected one of {sorted(CACHE_OUTCOMES)}, got {data.cache!r}")
    if data.saved:
        if data.cache not in CACHE_HITS:
            raise UsageEventError("data.saved", "only a cache hit saves anything")
        if usd_to_nanos(parse_usd(data.saved, "data.saved")) > MAX_COST_USD * NANOS_PER_USD:
            raise UsageEventError("data.saved", f"more than {MAX_COST_USD} USD for one call")


def _check_content(content: Content) -> None:
    for name in ("prompt", "completion"):
        value = getattr(content, name)
        if len(value) > MAX_CONTENT_TEXT:
            raise UsageEventError(f"data.content.{name}", f"longer than {MAX_CONTENT_TEXT} characters")
        _check_storable(f"data.content.{name}", value)
    if not MIN_RETENTION_DAYS <= content.retention_days <= MAX_RETENTION_DAYS:
        raise UsageEventError(
            "data.content.retention_days", f"must be between {MIN_RETENTION_DAYS} and {MAX_RETENTION_DAYS}"
        )


def _check_count(where: str, value: int) -> None:
    if not 0 <= value <= MAX_COUNT:
        raise UsageEventError(where, f"must be between 0 and {MAX_COUNT}")


def _plain_text(value: str) -> bool:
    """Text every `_check_text` accepts (non-empty, short, ASCII without NUL): the common case,
    tested without building the field's path for the error that will not be raised."""
    return bool(value) and len(value) <= MAX_TEXT and value.isascii() and "\x00" not in value


def _check_text(where: str, value: str, *, required: bool) -> None:
    if required and not value:
        raise UsageEventError(where, "required (empty)")
    if len(value) > MAX_TEXT:
        raise UsageEventError(where, f"longer than {MAX_TEXT} characters")
    _check_storable(where, value)


def _check_storable(where: str, value: str) -> None:
    """Text a database can store: no NUL (PostgreSQL refuses it) and valid UTF-8 (no lone surrogate,
    which JSON's \\ud800 escapes can carry)."""
    if "\x00" in value:
        raise UsageEventError(where, "contains a NUL character")
    if value.isascii():  # ASCII always encodes: skip building the bytes
        return
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise UsageEventError(where, "not valid Unicode text (a lone surrogate)") from None


def _check_properties(properties: dict[str, str]) -> None:
    if len(properties) > MAX_PROPERTIES:
        raise UsageEventError("data.properties", f"more than {MAX_PROPERTIES} properties ({len(properties)})")
    for name, value in properties.items():
        where = f"data.properties.{name[:MAX_PROPERTY_NAME]}"
        if len(name) > MAX_PROPERTY_NAME or not PROPERTY_NAME.fullmatch(name):
            raise UsageEventError(
                where, f"a name is 1-{MAX_PROPERTY_NAME} of a-z 0-9 _ . - starting with a letter or digit"
            )
        if not isinstance(value, str):
            raise UsageEventError(where, f"expected str, got {type(value).__name__}")
        if len(value) > MAX_PROPERTY_VALUE:
            raise UsageEventError(where, f"value longer than {MAX_PROPERTY_VALUE} characters")
        _check_storable(where, value)


def format_time(moment: datetime) -> str:
    """An event's `time` as it is written: RFC 3339 in UTC with microseconds and `Z`."""
    return moment.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _parse_time(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError as exc:
        raise UsageEventError("time", f"not an RFC 3339 time: {text!r}") from exc
    if moment.tzinfo is None:
        raise UsageEventError("time", f"must carry a time zone (e.g. 'Z'): {text!r}")
    return moment.astimezone(UTC)
