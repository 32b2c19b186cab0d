"""Serve the last good version of a resource whose new version does not compile.

A typo must never take traffic down. When a resource that compiled before (a VirtualKey, Budget,
RouteRule, or a Secret from a local folder) is rejected in its new version, the compile runs again
with its last good version in its place; if that version still compiles among everything else, it
is served and the resource is reported as `held`, with the errors of its new version. A Secret
given with its last good value (local mode) is held the same way when its new value breaks a
resource that did not change itself (a key too short, a credential with a trailing newline); that
resource is reported as held too. A resource that is deleted is gone: only a version that is
present and rejected is replaced.

Pure, like the compiler: the caller keeps the `last_good` map between compiles (`tollway dev` in
its loop, the operator in its reconciler) and passes it back.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from tollway_operator.compile import CompileResult, Manifest, ResourceId, compile_manifests


@dataclass(frozen=True)
class Guarded:
    result: CompileResult  # the config as served; `result.held` names the resources kept at an older version
    last_good: dict[ResourceId, Manifest]  # the version of each present resource that compiled last


def compile_keeping_last_good(
    manifests: Sequence[Manifest],
    last_good: Mapping[ResourceId, Manifest],
    *,
    default_namespace: str = "default",
) -> Guarded:
    written = [m if m.namespace else replace(m, namespace=default_namespace) for m in manifests]
    current: dict[ResourceId, Manifest] = {}
    for m in written:
        current.setdefault(m.id, m)  # a duplicate definition is an error of its own, never served
    fresh = compile_manifests(written, default_namespace=default_namespace)

    def serve(held: set[ResourceId]) -> CompileResult:
        substituted = [last_good[m.id] if m.id in held and current[m.id] is m else m for m in written]
        return compile_manifests(substituted, default_namespace=default_namespace)

    changed = {rid for rid, m in current.items() if rid in last_good and last_good[rid].body != m.body}
    held = {rid for rid in changed if not _good(fresh, rid)}
    served = fresh
    while held:  # each round drops the versions that no longer compile either: at most len(held) rounds
        served = serve(held)
        failed = {rid for rid in held if not _good(served, rid)}
        if not failed:
            break
        held -= failed
        served = fresh
    # A Secret's new value can break a resource that did not change (a key that is too short, a
    # credential with a trailing newline): serve that Secret's last good value if it mends them.
    broken = {rid for rid in (last_good.keys() & current.keys()) - changed if not _good(served, rid)}
    secrets = sorted(rid for rid in changed - held if rid[0] == "Secret") if broken else []
    for secret in secrets:
        trial = serve(held | {secret})
        mended = {rid for rid in broken if _good(trial, rid)}
        if mended and all(_good(trial, rid) for rid in current if _good(served, rid)):
            held |= {secret, *mended}
            broken -= mended
            served = trial
    errors = (
        *(e for e in served.errors if (e.kind, e.namespace, e.name) not in held),
        *(e for e in fresh.errors if (e.kind, e.namespace, e.name) in held),
    )
    result = CompileResult(served.config, errors, served.accepted, frozenset(held), served.warnings)
    kept: dict[ResourceId, Manifest] = {}
    for rid, m in current.items():
        if rid not in held and _good(result, rid):
            kept[rid] = m
        elif rid in last_good:  # rejected: its last good version stays the one to fall back on
            kept[rid] = last_good[rid]
    return Guarded(result, kept)


def _good(result: CompileResult, rid: ResourceId) -> bool:
    if rid[0] == "Secret":  # Secrets are inputs, not part of the config: good when nothing is wrong
        return not result.errors_for(*rid)
    return rid in result.accepted
