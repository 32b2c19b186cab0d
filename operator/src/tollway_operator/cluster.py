"""What the operator keeps of the cluster: compact snapshots in Kopf's indexes, and a view over them.

Kopf keeps one index per watched kind, updated before any handler runs and fully populated before
the first one does. The index functions store only what the compiler and the status writers need
(never managed fields, never a Secret's data unless it can matter), so memory stays proportional to
the Tollway resources, not to the cluster.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from tollway_operator.compile import MINTED_SECRET_PREFIX, Manifest
from tollway_operator.resources import API_VERSION

GROUP: Final = "tollway.dev"
VERSION: Final = "v1alpha1"
SOURCE: Final = "cluster"

ResourceKey = tuple[str, str]  # (namespace, name)


@dataclass(frozen=True)
class Kind:
    name: str
    plural: str


VIRTUALKEY: Final = Kind("VirtualKey", "virtualkeys")
BUDGET: Final = Kind("Budget", "budgets")
ROUTERULE: Final = Kind("RouteRule", "routerules")
KINDS: Final = (VIRTUALKEY, BUDGET, ROUTERULE)

# Secret types that never hold a provider credential or a virtual key: indexed without their data
# (Helm release Secrets alone can be megabytes each).
_DATALESS_SECRET_TYPES: Final = frozenset(
    {
        "helm.sh/release.v1",
        "kubernetes.io/service-account-token",
        "kubernetes.io/dockercfg",
        "kubernetes.io/dockerconfigjson",
        "bootstrap.kubernetes.io/token",
    }
)


@dataclass(frozen=True)
class Resource:
    """A VirtualKey, Budget or RouteRule as last seen: identity, spec and status."""

    kind: str
    namespace: str
    name: str
    uid: str
    generation: int
    spec: Mapping[str, Any]
    status: Mapping[str, Any] = field(default_factory=dict)
    created: str = ""  # metadata.creationTimestamp: the older claim on a model name wins

    @property
    def key(self) -> ResourceKey:
        return self.namespace, self.name

    @property
    def id(self) -> tuple[str, str, str]:
        return self.kind, self.namespace, self.name

    def manifest(self) -> Manifest:
        body = {
            "apiVersion": API_VERSION,
            "kind": self.kind,
            "metadata": {"name": self.name, "namespace": self.namespace, "creationTimestamp": self.created},
            "spec": self.spec,
        }
        return Manifest.from_object(body, source=SOURCE)


@dataclass(frozen=True)
class SecretData:
    namespace: str
    name: str
    type: str
    data: Mapping[str, str]  # base64, as the API serves it

    def manifest(self) -> Manifest:
        body = {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": self.name, "namespace": self.namespace},
            "data": dict(self.data),
        }
        return Manifest.from_object(body, source=SOURCE)


def _plain(value: Any) -> Any:
    """A deep, plain-dict copy (Kopf hands out views over its own raw bodies)."""
    return copy.deepcopy(dict(value)) if isinstance(value, Mapping) else {}


def snapshot_resource(kind: str, body: Mapping[str, Any]) -> Resource:
    metadata = body.get("metadata") or {}
    return Resource(
        kind=kind,
        namespace=str(metadata.get("namespace") or ""),
        name=str(metadata.get("name") or ""),
        uid=str(metadata.get("uid") or ""),
        generation=int(metadata.get("generation") or 0),
        spec=_plain(body.get("spec")),
        status=_plain(body.get("status")),
        created=str(metadata.get("creationTimestamp") or ""),
    )


def snapshot_secret(body: Mapping[str, Any]) -> SecretData:
    metadata = body.get("metadata") or {}
    secret_type = str(body.get("type") or "Opaque")
    data = {} if secret_type in _DATALESS_SECRET_TYPES else _plain(body.get("data"))
    return SecretData(
        namespace=str(metadata.get("namespace") or ""),
        name=str(metadata.get("name") or ""),
        type=secret_type,
        data={str(k): str(v) for k, v in data.items()},
    )


def minted_secret_name(virtualkey_name: str) -> str:
    return MINTED_SECRET_PREFIX + virtualkey_name


def wants_minted_key(resource: Resource) -> bool:
    return resource.kind == VIRTUALKEY.name and not resource.spec.get("secretRef")


def referenced_secrets(resource: Resource) -> Iterator[ResourceKey]:
    """The Secrets (same namespace) a resource reads: credentials, a key, or its minted key."""
    if resource.kind == VIRTUALKEY.name:
        ref = resource.spec.get("secretRef")
        if isinstance(ref, Mapping) and isinstance(ref.get("name"), str):
            yield resource.namespace, ref["name"]
        else:
            yield resource.namespace, minted_secret_name(resource.name)
    elif resource.kind == ROUTERULE.name:
        for backend in resource.spec.get("backends") or ():
            ref = backend.get("credentialsSecretRef") if isinstance(backend, Mapping) else None
            if isinstance(ref, Mapping) and isinstance(ref.get("name"), str):
                yield resource.namespace, ref["name"]


class ClusterView:
    """Read-only access to Kopf's live indexes (a `kopf.Index` maps a key to a store of values)."""

    def __init__(
        self,
        resources: Mapping[str, Mapping[Any, Iterable[Any]]],
        secrets: Mapping[Any, Iterable[Any]],
    ) -> None:
        self._resources = resources  # kind name -> index of (namespace, name) -> [Resource]
        self._secrets = secrets  # index of (namespace, name) -> [SecretData]

    def resources(self, kind: str) -> list[Resource]:
        index = self._resources.get(kind, {})
        found = [
            value for key in list(index) for value in list(index.get(key, ())) if isinstance(value, Resource)
        ]
        return sorted(found, key=lambda r: r.key)

    def all_resources(self) -> list[Resource]:
        return [r for kind in KINDS for r in self.resources(kind.name)]

    def resource(self, kind: str, namespace: str, name: str) -> Resource | None:
        for value in self._resources.get(kind, {}).get((namespace, name), ()):
            if isinstance(value, Resource):
                return value
        return None

    def secret(self, namespace: str, name: str) -> SecretData | None:
        for value in self._secrets.get((namespace, name), ()):
            if isinstance(value, SecretData):
                return value
        return None
