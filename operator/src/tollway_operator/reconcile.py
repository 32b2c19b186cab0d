"""One pass over the whole cluster: parse → mint → compile → publish → conditions.

The GatewayConfig is one object compiled from every resource, so a change anywhere is one work item
for the whole cluster, not per object. Kopf's handlers only say "something relevant changed"
(`resource_changed`, `secret_changed`); one worker task runs passes, so a burst of N events costs
one or two compiles, not N. A pass reads Kopf's indexes (complete before any handler runs) and
never lists.

Failures use Kopf's error classes: a `kopf.TemporaryError` is retried after its delay (doubling up to
a minute while it keeps failing; up to 5 s while the config Secret's namespace is missing, which a
person fixes with one command), a `kopf.PermanentError` waits for the next change. Any change
retries at once. A config that cannot be published is on every resource's `Ready` condition and in
one Warning Event per resource and failure. A pass also runs every `resync_seconds`, which repairs
edits made behind the operator's back (a deleted GatewayConfig Secret is republished at once: its
events are watched).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, Final

import kopf

from tollway_operator.alerts import event_body
from tollway_operator.cluster import (
    KINDS,
    VIRTUALKEY,
    ClusterView,
    Kind,
    Resource,
    ResourceKey,
    SecretData,
    minted_secret_name,
    referenced_secrets,
    snapshot_secret,
    wants_minted_key,
)
from tollway_operator.compile import CompileResult, Manifest
from tollway_operator.kube import Kube, NamespaceMissing
from tollway_operator.lastgood import compile_keeping_last_good
from tollway_operator.metrics import OperatorMetrics
from tollway_operator.minting import minted_secret
from tollway_operator.publish import Publisher
from tollway_operator.settings import OperatorSettings
from tollway_operator.status import Publication, conditions_for, now_rfc3339, status_patch
from tollway_sidecar.config.models import GatewayConfig

log = logging.getLogger("tollway.operator.reconcile")

_KINDS_BY_NAME: dict[str, Kind] = {kind.name: kind for kind in KINDS}
_MAX_RETRY_SECONDS = 60.0
# Status fields: the generation in the published config, and (while a newer one is rejected) that
# generation's spec as JSON, so that a restarted operator keeps serving it.
SERVED_GENERATION = "servedGeneration"
SERVED_SPEC = "servedSpec"
# A missing namespace costs one failing create per try; a short cap makes its creation take effect
# within seconds.
_MAX_NAMESPACE_RETRY_SECONDS = 5.0
PUBLISH_FAILED: Final = "PublishFailed"  # the Warning Event's reason, as the Ready condition's


class Reconciler:
    def __init__(
        self,
        settings: OperatorSettings,
        kube: Kube,
        view: ClusterView,
        metrics: OperatorMetrics | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics or OperatorMetrics()
        self.kube = kube
        self.view = view
        self.publisher = Publisher(kube, settings.config_secret_namespace, settings.config_secret_name)
        self.ready = asyncio.Event()  # set by the first handler call: Kopf's indexes are complete
        self.result: CompileResult | None = None
        self.passes = 0
        self._dirty = asyncio.Event()
        self._seen: dict[tuple[str, str, str], tuple[str, int]] = {}  # id -> (uid, generation) last pass
        self._secrets: set[ResourceKey] = set()  # the Secrets the last pass read (or looked for)
        self._written: dict[tuple[str, str, str], tuple[str, dict[str, Any]]] = {}  # id -> (uid, status)
        self._good: dict[tuple[str, str, str], _Good] = {}  # id -> the generation that compiled last
        self._logged_held: dict[tuple[str, str, str], int] = {}  # id -> the rejected generation logged
        self._failure_events: dict[str, str] = {}  # uid -> the publish failure its Event reported

    # -- what the handlers call (never blocks) ----------------------------------------------------------

    def resource_changed(self, kind: str, event_type: str | None, body: Mapping[str, Any]) -> None:
        """A VirtualKey, Budget or RouteRule event; status-only changes do not recompile."""
        metadata = body.get("metadata") or {}
        rid = (kind, str(metadata.get("namespace") or ""), str(metadata.get("name") or ""))
        seen = (str(metadata.get("uid") or ""), int(metadata.get("generation") or 0))
        if event_type == "DELETED" or self._seen.get(rid) != seen or not self.ready.is_set():
            self.request()

    def secret_changed(self, namespace: str, name: str) -> None:
        if (namespace, name) == self.settings.config_secret_id:
            self.publisher.forget()  # someone else wrote or deleted it: look and republish if needed
            self.request()
        elif (namespace, name) in self._secrets or not self.ready.is_set():
            self.request()

    def request(self) -> None:
        self.ready.set()
        self._dirty.set()

    @property
    def config(self) -> GatewayConfig | None:
        return self.result.config if self.result is not None else None

    # -- the worker -------------------------------------------------------------------------------------

    async def run(self) -> None:
        await self.ready.wait()
        retry = self.settings.retry_seconds
        while True:
            self._dirty.clear()
            wait = self.settings.resync_seconds
            try:
                await self.reconcile_once()
                retry = self.settings.retry_seconds
            except kopf.PermanentError as exc:
                log.error("pass failed, waiting for the next change: %s", exc)
            except kopf.TemporaryError as exc:
                wait = 0.0 if exc.delay == 0 else max(exc.delay or 0.0, retry)
                if isinstance(exc, NamespaceMissing):
                    wait = min(wait, _MAX_NAMESPACE_RETRY_SECONDS)
                log.warning("pass failed, retrying in %.1f s: %s", wait, exc)
                retry = min(retry * 2, _MAX_RETRY_SECONDS)
            except Exception:
                log.exception("pass failed unexpectedly, retrying in %.1f s", retry)
                wait, retry = retry, min(retry * 2, _MAX_RETRY_SECONDS)
            try:
                await asyncio.wait_for(self._dirty.wait(), wait)
            except TimeoutError:  # a resync: compare with what the cluster says, not with our memory
                self._written.clear()
                self.publisher.forget()

    async def reconcile_once(self) -> CompileResult:
        """One pass, counted in the metrics by its result."""
        with self.metrics.duration.time():
            try:
                result = await self._reconcile()
            except kopf.TemporaryError:
                self.metrics.passes.labels("temporary_error").inc()
                raise
            except kopf.PermanentError:
                self.metrics.passes.labels("permanent_error").inc()
                raise
            except Exception:
                self.metrics.passes.labels("error").inc()
                raise
        self.metrics.passes.labels("ok").inc()
        return result

    async def _reconcile(self) -> CompileResult:
        resources = self.view.all_resources()
        self._seen = {r.id: (r.uid, r.generation) for r in resources}
        wanted = {key for r in resources for key in referenced_secrets(r)}
        self._secrets = wanted  # before reading them: a Secret event from now on triggers another pass
        minted, mint_failures = await self._mint(resources)
        secrets = [
            s for key in sorted(wanted) if (s := self.view.secret(*key) or minted.get(key)) is not None
        ]
        manifests = [r.manifest() for r in resources] + [s.manifest() for s in secrets]
        fallbacks = self._fallbacks(resources)
        result = compile_keeping_last_good(
            manifests, {rid: good.manifest for rid, good in fallbacks.items()}
        ).result
        # Remember this generation when it is served as written; otherwise keep the one to fall back on.
        self._good = {
            r.id: _Good.of(r) if r.id in result.accepted and r.id not in result.held else fallbacks[r.id]
            for r in resources
            if r.id in result.accepted or r.id in fallbacks
        }
        for r in resources:
            if r.id in result.held and self._logged_held.get(r.id) != r.generation:
                log.warning(
                    "%s %s/%s generation %d rejected, generation %d is still served: %s",
                    *r.id,
                    r.generation,
                    self._good[r.id].generation,
                    "; ".join(f"{e.field}: {e.message}" for e in result.errors_for(*r.id)),
                )
        self._logged_held = {r.id: r.generation for r in resources if r.id in result.held}
        self.result = result
        self.passes += 1
        kinds: dict[str, int] = {}
        for resource in resources:
            kinds[resource.kind] = kinds.get(resource.kind, 0) + 1
        self.metrics.compiled(result, kinds)
        where = "/".join(self.settings.config_secret_id)
        publish_error: kopf.TemporaryError | kopf.PermanentError | None = None
        try:
            if await self.publisher.publish(result.config):
                self.metrics.publishes.inc()
            publication = Publication(True, where)
        except (kopf.TemporaryError, kopf.PermanentError) as exc:
            publish_error = exc
            publication = Publication(False, where, str(exc))
        status_errors = await self._write_statuses(resources, result, publication, minted, mint_failures)
        await self._report_publication(resources, publication)
        if publish_error is not None:
            raise publish_error
        if status_errors:
            raise kopf.TemporaryError("; ".join(status_errors[:3]), delay=self.settings.retry_seconds)
        if mint_failures:
            raise kopf.TemporaryError("; ".join(mint_failures.values()), delay=self.settings.retry_seconds)
        return result

    def _fallbacks(self, resources: list[Resource]) -> dict[tuple[str, str, str], _Good]:
        """The last good generation of each resource: remembered, else recorded in its status."""
        found: dict[tuple[str, str, str], _Good] = {}
        for r in resources:
            good = self._good.get(r.id)
            if good is None or good.uid != r.uid:  # a resource recreated under the same name is new
                good = _Good.from_status(r)
            if good is not None:
                found[r.id] = good
        return found

    async def _report_publication(self, resources: list[Resource], publication: Publication) -> None:
        """A Warning Event on each resource the first time a failure (by its message) holds it back."""
        if publication.published:
            self._failure_events.clear()
            return
        message = (
            f"the GatewayConfig could not be published to Secret {publication.where}: {publication.error}"
        )
        now = datetime.now(UTC)
        for r in resources:
            if self._failure_events.get(r.uid) == message:
                continue
            try:
                await self.kube.create_event(r.namespace, event_body(r, message, now, PUBLISH_FAILED))
            except (kopf.TemporaryError, kopf.PermanentError) as exc:
                log.warning(
                    "no Event for the publish failure on %s %s/%s: %s", r.kind, r.namespace, r.name, exc
                )
                continue
            self._failure_events[r.uid] = message

    async def _mint(
        self, resources: list[Resource]
    ) -> tuple[dict[ResourceKey, SecretData], dict[tuple[str, str, str], str]]:
        minted: dict[ResourceKey, SecretData] = {}
        failures: dict[tuple[str, str, str], str] = {}
        if not self.settings.mint_keys:
            return minted, failures
        for vk in resources:
            key = (vk.namespace, minted_secret_name(vk.name))
            if not wants_minted_key(vk) or self.view.secret(*key) is not None:
                continue
            try:
                created = await self.kube.create_secret(vk.namespace, minted_secret(vk))
            except (kopf.TemporaryError, kopf.PermanentError) as exc:
                failures[vk.id] = str(exc)
                continue
            if created is not None:  # None: it exists already (the index has not seen it yet)
                log.info("minted a key for VirtualKey %s/%s into Secret %s", vk.namespace, vk.name, key[1])
                minted[key] = snapshot_secret(created)
        return minted, failures

    async def _write_statuses(
        self,
        resources: list[Resource],
        result: CompileResult,
        publication: Publication,
        minted: Mapping[ResourceKey, SecretData],
        mint_failures: Mapping[tuple[str, str, str], str],
    ) -> list[str]:
        now = now_rfc3339()
        errors: list[str] = []
        live = {r.id for r in resources}
        for rid in [rid for rid in self._written if rid not in live]:
            del self._written[rid]
        for r in resources:
            held = self._good[r.id] if r.id in result.held else None
            conditions = conditions_for(
                r,
                result.errors_for(*r.id),
                r.id in result.accepted,
                publication,
                mint_failures.get(r.id, ""),
                served_generation=held.generation if held is not None else None,
                warnings=result.warnings_for(*r.id),
            )
            written = self._written.get(r.id)
            base = r if written is None or written[0] != r.uid else _with_status(r, written[1])
            served = held.generation if held else r.generation if r.id in result.accepted else None
            extra: dict[str, Any] = {
                SERVED_GENERATION: served,  # None: not in the config (a merge patch removes the field)
                SERVED_SPEC: _spec_text(held.manifest) if held else None,
            }
            if r.kind == VIRTUALKEY.name:
                key = (r.namespace, minted_secret_name(r.name))
                has_minted = wants_minted_key(r) and (self.view.secret(*key) is not None or key in minted)
                if has_minted or base.status.get("keySecret") is not None:
                    extra["keySecret"] = key[1] if has_minted else None
            patch = status_patch(base, conditions, now, extra)
            if patch is None:
                continue
            try:
                await self.kube.patch_status(_KINDS_BY_NAME[r.kind], r.namespace, r.name, patch)
            except (kopf.TemporaryError, kopf.PermanentError) as exc:
                errors.append(str(exc))
                continue
            self._written[r.id] = (r.uid, {**base.status, **patch})
        return errors


@dataclass(frozen=True)
class _Good:
    """A generation of a resource that compiled: served again while a newer one is rejected."""

    uid: str
    generation: int
    manifest: Manifest

    @classmethod
    def of(cls, resource: Resource) -> _Good:
        return cls(resource.uid, resource.generation, resource.manifest())

    @classmethod
    def from_status(cls, resource: Resource) -> _Good | None:
        """What a previous operator recorded while it served an older generation (it may have restarted)."""
        text, generation = resource.status.get(SERVED_SPEC), resource.status.get(SERVED_GENERATION)
        if not isinstance(text, str) or not isinstance(generation, int) or generation == resource.generation:
            return None
        try:
            spec = json.loads(text)
        except ValueError:
            return None
        if not isinstance(spec, dict):
            return None
        return cls(resource.uid, generation, replace(resource, spec=spec).manifest())


def _spec_text(manifest: Manifest) -> str:
    return json.dumps(manifest.body.get("spec"), sort_keys=True, separators=(",", ":"))


def _with_status(resource: Resource, status: Mapping[str, Any]) -> Resource:
    return replace(resource, status=status)
