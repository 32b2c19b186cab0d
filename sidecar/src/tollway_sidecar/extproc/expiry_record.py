"""The usage event of a call whose reservation expires unsettled, built at reserve time.

The reserve keeps this event with the reservation (`QuotaStore.reserve`), and the sweep that
expires the reservation appends it, so a call charged at its estimate has its one event like a
settled call. It says: outcome `expired`, status 504 (the gateway never learned how the call
ended), no attempts (none was known yet), the estimate's tokens and nano-USD (`plan.expiry_charge`:
what the expiry leaves in the counters), timed at the reservation (the period its counters were
charged in), latency the reservation's lifetime (the call lasted at least that).

It is built on the request path, so it is built from a **template**: the event of the same key,
route, model, budgets and replica, made once with the contract's own `UsageEvent` (every fixed
field validated) and `to_json`, and cut at the per-call values; a call fills those in (its id and
time, the client's end user, session, properties and request id, the tokens and cost) with the
JSON encoder's own string and object encoding. The result is byte for byte what `expiry_event`
(the validated slow path) writes, which the tests check; the per-call text is bounded by `clip` and
`bounded_properties` like every event's, and the counts and cost are checked here.
"""

from __future__ import annotations

import functools
import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from json.encoder import encode_basestring_ascii as json_string  # what json.dumps writes for a str
from typing import Final

from tollway_sidecar.contract.money import format_usd, from_nano
from tollway_sidecar.contract.usage_event import (
    MAX_COST_USD,
    MAX_COUNT,
    NANOS_PER_USD,
    Tokens,
    UsageData,
    UsageEvent,
    UsageEventError,
    format_time,
)
from tollway_sidecar.extproc.state import RequestState
from tollway_sidecar.extproc.usage_record import (
    bounded_properties,
    budgets_of,
    call_facts,
    clip,
    trace_id_of,
    usage_event,
)
from tollway_sidecar.quota.plan import Charge, Plan, expiry_charge, ms_to_datetime

__all__ = ["EXPIRED_STATUS", "EXPIRY_PRICE_SOURCE", "expiry_event", "expiry_event_json"]

# An expired reservation: the gateway never learned how the call ended within the reservation's
# lifetime (the sidecar died, or the call outlived it), so it is a gateway timeout.
EXPIRED_STATUS: Final = 504
EXPIRY_PRICE_SOURCE: Final = "estimate"  # an expired call is charged at its reserved estimate


def expiry_event(state: RequestState, plan: Plan, event_id: uuid.UUID, *, source: str) -> UsageEvent:
    """The validated event (the slow path: the reference the template must equal)."""
    facts = call_facts(
        state,
        id=event_id,
        source=source,
        at=ms_to_datetime(plan.now_ms),
        plan=plan,
        status=EXPIRED_STATUS,
        outcome="expired",
        attempts=(),
        price_source=EXPIRY_PRICE_SOURCE,
        price_version="",
        latency_ms=plan.ttl_ms,
        ttft_ms=None,
    )
    return usage_event(facts, expiry_charge(plan))


# -- the template ------------------------------------------------------------------------------------

# Stand-ins for the per-call values, each unlike anything a fixed field can hold: a text slot
# carries \x01 (never in a resource name), a count is near the contract's ceiling.
_ID = uuid.UUID("00000000-0000-7000-8000-000000000000")
_TIME = datetime(2000, 1, 1, tzinfo=UTC)
_INPUT, _OUTPUT = 987_654_321_011, 987_654_321_013
_COST = "987654.123456789"
_TEXT = ("end_user", "session_id", "session_path", "session_name", "request_id", "trace_id")
_PROPERTIES = {"x": "\x01properties\x01"}


def _stand_in(name: str) -> str:
    return f"\x01{name}\x01"


@dataclass(frozen=True, slots=True)
class _Template:
    parts: tuple[str, ...]  # the fixed JSON around the slots
    slots: tuple[str, ...]  # the slot between parts[i] and parts[i + 1]

    def fill(self, values: dict[str, str]) -> str:
        out = [self.parts[0]]
        for slot, part in zip(self.slots, self.parts[1:], strict=True):
            out.append(values[slot])
            out.append(part)
        return "".join(out)


@functools.lru_cache(maxsize=4096)
def _template(
    source: str,
    namespace: str,
    key_name: str,
    team: str,
    user: str,
    route: str,
    model: str,
    budgets: tuple[str, ...],
    latency_ms: int,
    streamed: bool,
) -> _Template:
    data = UsageData(
        namespace=namespace,
        key_name=key_name,
        route=route,
        model=model,
        status=EXPIRED_STATUS,
        outcome="expired",
        cost=_COST,
        billable=True,
        team=team,
        user=user,
        properties=dict(_PROPERTIES),
        tokens=Tokens(input=_INPUT, output=_OUTPUT),
        price_source=EXPIRY_PRICE_SOURCE,
        budgets=budgets,
        latency_ms=latency_ms,
        streamed=streamed,
        end_user=_stand_in("end_user"),
        session_id=_stand_in("session_id"),
        session_path=_stand_in("session_path"),
        session_name=_stand_in("session_name"),
        request_id=_stand_in("request_id"),
        trace_id=_stand_in("trace_id"),
    )
    text = UsageEvent(
        id=_ID, source=source, time=_TIME, subject=f"{namespace}/{key_name}", data=data
    ).to_json()
    marks = {
        "id": json_string(str(_ID)),
        "time": json_string(format_time(_TIME)),
        "input": f'"input":{_INPUT}',
        "output": f'"output":{_OUTPUT}',
        "cost": json_string(_COST),
        "properties": _object_json(_PROPERTIES),
        **{name: json_string(_stand_in(name)) for name in _TEXT},
    }
    found = []
    for slot, mark in marks.items():
        at = text.find(mark)
        if at < 0 or text.find(mark, at + 1) >= 0:
            raise UsageEventError(f"data.{slot}", "the expiry template's stand-in is not unique")
        found.append((at, slot, mark))
    found.sort()
    parts, slots, cut = [], [], 0
    for at, slot, mark in found:
        prefix = mark[: mark.index(":") + 1] if slot in ("input", "output") else ""
        parts.append(text[cut:at] + prefix)
        slots.append(slot)
        cut = at + len(mark)
    parts.append(text[cut:])
    return _Template(tuple(parts), tuple(slots))


def _object_json(value: dict[str, str]) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True)  # as `UsageEvent.to_json` writes


def _check(charge: Charge) -> None:
    """The contract's bounds on what a call fills in: counts and one call's cost."""
    for name, value in (("input", charge.input_tokens), ("output", charge.output_tokens)):
        if not 0 <= value <= MAX_COUNT:
            raise UsageEventError(f"data.tokens.{name}", f"must be between 0 and {MAX_COUNT}")
    if not 0 <= charge.nano_usd <= MAX_COST_USD * NANOS_PER_USD:
        raise UsageEventError("data.cost", f"more than {MAX_COST_USD} USD for one call")


def expiry_event_json(state: RequestState, plan: Plan, event_id: uuid.UUID, *, source: str) -> str:
    """The JSON of `expiry_event(...)`, from the template of the call's fixed fields."""
    key = state.key
    assert key is not None  # only calls that passed authentication are reserved
    charge = expiry_charge(plan)
    _check(charge)
    template = _template(
        source,
        key.namespace,
        key.name,
        clip(key.owner_team),
        clip(key.owner_user),
        state.route.id if state.route is not None else "",
        clip(state.client_model) or "unknown",
        budgets_of(plan),
        plan.ttl_ms,
        state.stream,
    )
    properties = bounded_properties(state.properties)
    return template.fill(
        {
            "id": json_string(str(event_id)),
            "time": json_string(format_time(ms_to_datetime(plan.now_ms))),
            "input": str(charge.input_tokens),
            "output": str(charge.output_tokens),
            "cost": json_string(format_usd(from_nano(charge.nano_usd))),
            "properties": _object_json(properties) if properties else "{}",
            "end_user": json_string(clip(state.end_user)),
            "session_id": json_string(clip(state.session)),
            "session_path": json_string(clip(state.session_path)),
            "session_name": json_string(clip(state.session_name)),
            "request_id": json_string(clip(state.envoy_request_id or state.request_id)),
            "trace_id": json_string(trace_id_of(state.span)),
        }
    )
