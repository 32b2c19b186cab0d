"""The CostReport resource (tollway.dev/v1alpha1) as the meter reads it: from a folder of YAML.

The meter has no Kubernetes watch of its own (its image has no kube client library), so the
scheduler reads CostReport manifests from a folder (`tollway meter reports --folder`), and Secrets
as files in the layout a mounted Secret has: `<secrets dir>/<secret name>/<key>`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Protocol

import yaml
from croniter import croniter
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

KIND = "CostReport"
API_VERSION = "tollway.dev/v1alpha1"


class BadCostReport(ValueError):
    """A manifest the scheduler cannot use: names the file, the resource and the field."""


class _Spec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)


class SecretRef(_Spec):
    name: str = Field(min_length=1)
    key: str = Field(default="", description="The key in the Secret (for a credentials Secret: unused).")


class Slack(_Spec):
    webhook_secret_ref: SecretRef = Field(alias="webhookSecretRef")


class Email(_Spec):
    to: tuple[str, ...] = Field(min_length=1)
    sender: str = Field(alias="from", min_length=3)
    host: str = Field(min_length=1)
    port: int = Field(default=587, ge=1, le=65535)
    start_tls: bool = Field(default=True, alias="startTLS")
    # A Secret with the keys `username` and `password`.
    credentials_secret_ref: SecretRef | None = Field(default=None, alias="credentialsSecretRef")


class Webhook(_Spec):
    url: str | None = None
    url_secret_ref: SecretRef | None = Field(default=None, alias="urlSecretRef")

    @model_validator(mode="after")
    def _one_url(self) -> Webhook:
        if (self.url is None) == (self.url_secret_ref is None):
            raise ValueError("expected exactly one of url and urlSecretRef")
        return self


class KubernetesEvent(_Spec):
    pass


class ChannelSpec(_Spec):
    name: str | None = None
    slack: Slack | None = None
    email: Email | None = None
    webhook: Webhook | None = None
    kubernetes_event: KubernetesEvent | None = Field(default=None, alias="kubernetesEvent")

    @model_validator(mode="after")
    def _one_kind(self) -> ChannelSpec:
        kinds = [k for k in ("slack", "email", "webhook", "kubernetes_event") if getattr(self, k) is not None]
        if len(kinds) != 1:
            raise ValueError("expected exactly one of slack, email, webhook, kubernetesEvent")
        return self

    @property
    def kind(self) -> str:
        return next(k for k in ("slack", "email", "webhook", "kubernetesEvent") if self._get(k) is not None)

    def _get(self, kind: str) -> object:
        return self.kubernetes_event if kind == "kubernetesEvent" else getattr(self, kind)


class ScopeSpec(_Spec):
    namespaces: tuple[str, ...] = ()
    teams: tuple[str, ...] = ()
    # Keys by name (`name` or `namespace/name`): usage events carry a key's name, not its labels.
    keys: tuple[str, ...] = ()


class CostReportSpec(_Spec):
    schedule: str
    period: Literal["Weekly", "Monthly"] = "Weekly"
    title: str = "Tollway cost report"
    scope: ScopeSpec = ScopeSpec()
    channels: tuple[ChannelSpec, ...] = Field(min_length=1)

    @field_validator("schedule")
    @classmethod
    def _cron(cls, value: str) -> str:
        if not croniter.is_valid(value):
            raise ValueError(f"not a cron expression: {value!r}")
        return value

    @model_validator(mode="after")
    def _unique_names(self) -> CostReportSpec:
        names = [c.name or f"{c.kind}-{i}" for i, c in enumerate(self.channels)]
        if len(set(names)) != len(names):
            raise ValueError("channel names must be unique (each names one delivery record)")
        return self


class CostReportResource(_Spec):
    namespace: str
    name: str
    spec: CostReportSpec
    uid: str = ""  # from the API server (an Event names it); empty from a folder

    def channel_names(self) -> list[tuple[str, ChannelSpec]]:
        """Each channel's name in the delivery ledger: its `name`, else `<kind>-<index>`."""
        # Unique: CostReportSpec checks it.
        return [(c.name or f"{c.kind}-{i}", c) for i, c in enumerate(self.spec.channels)]


def parse_manifest(where: str, body: object) -> CostReportResource | None:
    """A CostReport from one YAML document; None for a document of another kind."""
    if not isinstance(body, dict) or body.get("kind") != KIND:
        return None
    if body.get("apiVersion") != API_VERSION:
        raise BadCostReport(f"{where}: apiVersion: expected {API_VERSION}, got {body.get('apiVersion')!r}")
    meta = body.get("metadata") or {}
    name, namespace = meta.get("name"), meta.get("namespace", "default")
    try:
        return CostReportResource(
            namespace=namespace, name=name, uid=meta.get("uid", ""), spec=body.get("spec")
        )
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        raise BadCostReport(f"{where}: CostReport {namespace}/{name}: {field}: {first['msg']}") from None


def load_folder(folder: Path) -> list[CostReportResource]:
    """Every CostReport in the folder's *.yaml and *.yml files (other kinds are skipped)."""
    found: list[CostReportResource] = []
    for path in sorted([*folder.glob("*.yaml"), *folder.glob("*.yml")]):
        try:
            documents = list(yaml.safe_load_all(path.read_text()))
        except (OSError, yaml.YAMLError) as exc:
            raise BadCostReport(f"{path}: not readable YAML: {exc}") from None
        for index, body in enumerate(documents):
            report = parse_manifest(f"{path}[{index}]", body)
            if report is not None:
                found.append(report)
    return found


class Secrets(Protocol):
    async def read(self, namespace: str, name: str, key: str) -> str: ...


class SecretFiles:
    """Secrets as files: `<folder>/<name>/<key>` (a mounted Secret's layout; the namespace is not
    part of the path: one folder serves the reports it is given)."""

    def __init__(self, folder: Path | None) -> None:
        self.folder = folder

    async def read(self, namespace: str, name: str, key: str) -> str:
        if self.folder is None:
            raise BadCostReport(f"Secret {name}: no secrets folder given (--secrets-dir)")
        path = self.folder / name / key
        try:
            return path.read_text().strip()
        except OSError:
            raise BadCostReport(f"Secret {name}: key {key!r} not found in {self.folder / name}") from None
