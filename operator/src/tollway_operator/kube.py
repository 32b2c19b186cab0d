"""The operator's writes to the Kubernetes API, through kubernetes_asyncio.

Kopf watches; this module writes (Secrets, status subresources, Events). Every API failure leaves as
Kopf's own error classes: `kopf.TemporaryError` when trying again can help (conflicts, throttling,
server errors, a broken connection), `kopf.PermanentError` when it cannot (forbidden, invalid).
"""

from __future__ import annotations

import json
import os
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar, cast

import aiohttp
import kopf
from kubernetes_asyncio import client as k8s
from kubernetes_asyncio import config as k8s_config
from kubernetes_asyncio.client.exceptions import ApiException

from tollway_operator.cluster import GROUP, VERSION, Kind

T = TypeVar("T")

_RETRIABLE_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504})
_IN_CLUSTER_TOKEN = "/var/run/secrets/kubernetes.io/serviceaccount/token"
MERGE_PATCH = "application/merge-patch+json"


class NamespaceMissing(kopf.TemporaryError):
    """A namespace the operator writes into does not exist. Temporary: creating it is one command
    away (the Helm chart creates it), so the worker tries again within seconds, not at the resync."""

    def __init__(self, namespace: str, what: str) -> None:
        super().__init__(
            f"{what}: namespace {namespace} does not exist; create it (kubectl create namespace "
            f"{namespace}; the Helm chart creates it)",
            delay=1,
        )
        self.namespace = namespace


def api_message(exc: ApiException) -> str:
    """The API server's own words (its Status `message`), else the HTTP reason."""
    try:
        body = json.loads(exc.body) if exc.body else {}
    except (TypeError, ValueError):
        body = {}
    message = body.get("message") if isinstance(body, dict) else None
    return f"HTTP {exc.status}: {message or exc.reason}"


def as_kopf_error(exc: BaseException, what: str) -> kopf.TemporaryError | kopf.PermanentError:
    if isinstance(exc, ApiException):
        text = f"{what}: {api_message(exc)}"
        if exc.status in _RETRIABLE_STATUS or exc.status is None:
            return kopf.TemporaryError(text, delay=5)
        return kopf.PermanentError(text)
    return kopf.TemporaryError(f"{what}: {type(exc).__name__}: {exc}", delay=5)


async def _call(what: str, make: Callable[[], Awaitable[T]]) -> T:
    try:
        return await make()
    except ApiException as exc:
        raise as_kopf_error(exc, what) from exc
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        raise as_kopf_error(exc, what) from exc


class Kube:
    """The few calls the operator makes; bodies in and out are plain dicts."""

    def __init__(self, api: k8s.ApiClient) -> None:
        self.api = api
        self.core = k8s.CoreV1Api(api)
        self.custom = k8s.CustomObjectsApi(api)

    @classmethod
    async def connect(cls) -> Kube:
        """In a Pod: its service account. Elsewhere: $KUBECONFIG or ~/.kube/config."""
        configuration = k8s.Configuration()
        if "KUBERNETES_SERVICE_HOST" in os.environ and Path(_IN_CLUSTER_TOKEN).is_file():  # noqa: ASYNC240
            load_incluster: Any = k8s_config.load_incluster_config
            load_incluster(client_configuration=configuration)
        else:
            await k8s_config.load_kube_config(client_configuration=configuration)
        return cls(k8s.ApiClient(configuration=configuration))

    async def close(self) -> None:
        await self.api.close()

    def _plain(self, obj: Any) -> dict[str, Any]:
        return dict(self.api.sanitize_for_serialization(obj))

    # -- Secrets ------------------------------------------------------------------------------------

    async def get_secret(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            obj = await self.core.read_namespaced_secret(name, namespace)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise as_kopf_error(exc, f"reading Secret {namespace}/{name}") from exc
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise as_kopf_error(exc, f"reading Secret {namespace}/{name}") from exc
        return self._plain(obj)

    async def create_secret(self, namespace: str, body: Mapping[str, Any]) -> dict[str, Any] | None:
        """The created Secret, or None when one of that name already exists (it is left alone)."""
        name = body["metadata"]["name"]
        try:
            obj = await self.core.create_namespaced_secret(namespace, cast(Any, dict(body)))
        except ApiException as exc:
            if exc.status == 409:
                return None
            if exc.status == 404:  # a create finds nothing else missing: the namespace is
                raise NamespaceMissing(namespace, f"creating Secret {namespace}/{name}") from exc
            raise as_kopf_error(exc, f"creating Secret {namespace}/{name}") from exc
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise as_kopf_error(exc, f"creating Secret {namespace}/{name}") from exc
        return self._plain(obj)

    async def replace_secret(self, namespace: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """PUT with the body's resourceVersion: a concurrent writer makes this a 409 (temporary)."""
        name = body["metadata"]["name"]
        obj = await _call(
            f"updating Secret {namespace}/{name}",
            lambda: self.core.replace_namespaced_secret(name, namespace, cast(Any, dict(body))),
        )
        return self._plain(obj)

    # -- status and Events --------------------------------------------------------------------------

    async def patch_status(self, kind: Kind, namespace: str, name: str, status: Mapping[str, Any]) -> bool:
        """Merge `status` into the object's status subresource; False when the object is gone."""
        try:
            await cast(Any, self.custom).patch_namespaced_custom_object_status(
                GROUP,
                VERSION,
                namespace,
                kind.plural,
                name,
                {"status": dict(status)},
                _content_type=MERGE_PATCH,
            )
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise as_kopf_error(exc, f"patching the status of {kind.name} {namespace}/{name}") from exc
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise as_kopf_error(exc, f"patching the status of {kind.name} {namespace}/{name}") from exc
        return True

    async def create_event(self, namespace: str, body: Mapping[str, Any]) -> None:
        await _call(
            f"creating an Event in {namespace}",
            lambda: self.core.create_namespaced_event(namespace, cast(Any, dict(body))),
        )
