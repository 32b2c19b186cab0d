"""Conditions on every VirtualKey, Budget and RouteRule: Accepted, ResolvedRefs, Ready.

- Accepted: the resource compiled into the GatewayConfig. False names every problem as
  `field: message`, with the first problem's reason (`Invalid`, `SecretNotFound`, ...).
- ResolvedRefs: every Secret and Budget it names exists and holds what is needed. False names the
  reference.
- Ready: accepted and the GatewayConfig holding this generation is published.

A compile warning (a field served narrower than written, such as a Semantic cache whose embeddings
route is missing) keeps Accepted=True, with the warning's reason and `field: message`; a warning
about a reference also makes ResolvedRefs=False.

A generation that is rejected while an earlier one still compiles leaves that earlier one served
(`lastgood`): Accepted=False says which generation was rejected and which is served, and Ready is
False with reason `PreviousGenerationServed`.

Each condition carries the resource's `observedGeneration`; `lastTransitionTime` changes only when
the condition's status does. Writing is skipped when nothing changed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, Final

from tollway_operator.cluster import Resource
from tollway_operator.compile import KEY_NOT_MINTED, REFERENCE_REASONS, CompileError

ACCEPTED: Final = "Accepted"
RESOLVED_REFS: Final = "ResolvedRefs"
READY: Final = "Ready"
CONDITION_TYPES: Final = (ACCEPTED, RESOLVED_REFS, READY)
MAX_MESSAGE: Final = 2048


@dataclass(frozen=True)
class Condition:
    type: str
    status: str  # "True" | "False" | "Unknown"
    reason: str
    message: str
    observed_generation: int

    def as_dict(self, last_transition_time: str) -> dict[str, Any]:
        return {
            "type": self.type,
            "status": self.status,
            "reason": self.reason,
            "message": self.message,
            "observedGeneration": self.observed_generation,
            "lastTransitionTime": last_transition_time,
        }


@dataclass(frozen=True)
class Publication:
    """What happened to the GatewayConfig of this pass."""

    published: bool  # the Secret holds this pass's config
    where: str  # "namespace/name" of the Secret
    error: str = ""  # why it could not be published


def _describe(errors: Iterable[CompileError]) -> str:
    return _trim("; ".join(f"{e.field}: {e.message}" if e.field else e.message for e in errors))


def _trim(text: str) -> str:
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 1] + "…"


def conditions_for(
    resource: Resource,
    errors: Sequence[CompileError],
    accepted: bool,
    publication: Publication,
    mint_failure: str = "",
    served_generation: int | None = None,  # set when an earlier generation is served instead of this one
    warnings: Sequence[CompileError] = (),
) -> list[Condition]:
    generation = resource.generation
    if mint_failure:
        errors = [
            replace(e, message=f"{e.message}; minting it failed: {mint_failure}")
            if e.reason == KEY_NOT_MINTED
            else e
            for e in errors
        ]
    refs = [e for e in errors if e.reason in REFERENCE_REASONS]
    if served_generation is not None:
        message = (
            f"generation {generation} rejected, generation {served_generation} is still served: "
            f"{_describe(errors)}"
        )
        reason = errors[0].reason if errors else "Invalid"
        accepted_c = Condition(ACCEPTED, "False", reason, _trim(message), generation)
    elif accepted and not errors and warnings:
        message = f"compiled into the GatewayConfig, narrower than written: {_describe(warnings)}"
        accepted_c = Condition(ACCEPTED, "True", warnings[0].reason, _trim(message), generation)
        refs += [w for w in warnings if w.reason in REFERENCE_REASONS]
    elif accepted and not errors:
        accepted_c = Condition(ACCEPTED, "True", "Accepted", "compiled into the GatewayConfig", generation)
    else:
        reason = errors[0].reason if errors else "Invalid"
        accepted_c = Condition(ACCEPTED, "False", reason, _describe(errors) or "not compiled", generation)
    if refs:
        refs_c = Condition(RESOLVED_REFS, "False", refs[0].reason, _describe(refs), generation)
    else:
        refs_c = Condition(RESOLVED_REFS, "True", "ResolvedRefs", "every reference resolved", generation)
    if served_generation is not None:
        message = (
            f"generation {served_generation} is served (GatewayConfig Secret {publication.where}); "
            f"generation {generation} is not, see Accepted"
        )
        ready_c = Condition(READY, "False", "PreviousGenerationServed", message, generation)
    elif accepted_c.status != "True":
        ready_c = Condition(READY, "False", "NotAccepted", accepted_c.message, generation)
    elif publication.published:
        # No config version here: it changes with every edit anywhere, and every status would follow.
        message = f"in the GatewayConfig published to Secret {publication.where}"
        ready_c = Condition(READY, "True", "Published", message, generation)
    else:
        message = (
            f"the GatewayConfig could not be published to Secret {publication.where}: {publication.error}"
        )
        ready_c = Condition(READY, "False", "PublishFailed", message, generation)
    return [accepted_c, refs_c, ready_c]


def now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def merged_conditions(
    old: Sequence[Mapping[str, Any]] | None, new: Sequence[Condition], now: str
) -> list[dict[str, Any]]:
    """The new conditions, keeping each type's lastTransitionTime while its status is unchanged."""
    previous = {c.get("type"): c for c in old or () if isinstance(c, Mapping)}
    merged = []
    for condition in new:
        before = previous.get(condition.type)
        since = now
        if before is not None and before.get("status") == condition.status:
            since = str(before.get("lastTransitionTime") or now)
        merged.append(condition.as_dict(since))
    return merged


def status_patch(
    resource: Resource, conditions: Sequence[Condition], now: str, extra: Mapping[str, Any] | None = None
) -> dict[str, Any] | None:
    """The status to merge into `resource`, or None when it already says all of this."""
    current = resource.status
    desired: dict[str, Any] = {
        "conditions": merged_conditions(current.get("conditions"), conditions, now),
        "observedGeneration": resource.generation,
        **(extra or {}),
    }
    if all(current.get(field) == value for field, value in desired.items()):
        return None
    return desired
