"""Who sees what in the console: a bearer token checked with the Kubernetes API.

TokenReview says who the token belongs to; a SubjectAccessReview per namespace of the ledger says
what they may see there: `get virtualkeys.tollway.dev` shows the namespace's rows, `get secrets`
also its captured content. Decisions are cached briefly per token (by its SHA-256, never the token
itself), in a bounded cache. `OPEN` is the decision of `--auth none` (loopback only): everything.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import os
import ssl
import time
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import aiohttp

IN_CLUSTER_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
CACHE_SECONDS = 30.0
CACHE_ENTRIES = 1000
COOKIE = "tollway_console_token"
# What each decision asks the API server about, in every namespace of the ledger.
ROWS = ("get", "tollway.dev", "virtualkeys")
CONTENT = ("get", "", "secrets")


class Unauthenticated(Exception):
    """No token, or one the API server does not accept: a 401."""


class Forbidden(Exception):
    """The user may not see what was asked for (a namespace filter): a 403."""


class ReviewFailed(Exception):
    """The API server could not be asked (down, refused the meter's own call): a 503."""


@dataclass(frozen=True)
class Access:
    """What one user may see. `None` means every namespace (`--auth none`)."""

    user: str
    namespaces: frozenset[str] | None
    content: frozenset[str] | None

    def sees(self, namespace: str) -> bool:
        return self.namespaces is None or namespace in self.namespaces

    def sees_content(self, namespace: str) -> bool:
        # Content is shown only with the rows it belongs to.
        return self.sees(namespace) and (self.content is None or namespace in self.content)

    def scope(self, wanted: str = "") -> frozenset[str] | None:
        """The namespaces a query may read: all the allowed ones, or just `wanted` (403 if not allowed)."""
        if wanted:
            if not self.sees(wanted):
                raise Forbidden(f"namespace {wanted!r}: you may not see its requests")
            return frozenset({wanted})
        return self.namespaces


OPEN = Access("(no access control)", None, None)


def is_loopback(host: str) -> bool:
    """Whether binding `host` keeps a server on this machine (`--auth none` is allowed only then)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def token_of(authorization: str | None, cookie: str | None) -> str | None:
    """The bearer token of a request: the Authorization header first, then the login cookie."""
    if authorization:
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
        return None
    return cookie or None


@dataclass(frozen=True)
class KubeApi:
    """Where the API server is and how the meter proves who it is: a ServiceAccount token file,
    re-read on every call because the kubelet rotates it."""

    url: str
    token_file: Path
    ca_file: Path | None

    @staticmethod
    def in_cluster() -> KubeApi:
        host, port = os.environ.get("KUBERNETES_SERVICE_HOST"), os.environ.get("KUBERNETES_SERVICE_PORT")
        if not host or not port:
            raise ValueError(
                "not in a cluster (KUBERNETES_SERVICE_HOST/PORT unset): pass --kube-url and --kube-token-file"
            )
        shown = f"[{host}]" if ":" in host else host
        return KubeApi(f"https://{shown}:{port}", IN_CLUSTER_DIR / "token", IN_CLUSTER_DIR / "ca.crt")

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_file) if self.ca_file else None)


class Authorizer(Protocol):
    """Turns a request's token into what its user may see over the ledger's namespaces."""

    async def access(self, token: str | None, namespaces: Iterable[str]) -> Access: ...

    async def close(self) -> None: ...


@dataclass
class _Entry:
    expires: float
    user: dict[str, Any] | None  # None: the token was refused
    decisions: dict[str, tuple[bool, bool]] = field(default_factory=dict)  # namespace → (rows, content)


class KubeClient:
    """Calls to the API server as the meter's own ServiceAccount (one pooled aiohttp session)."""

    def __init__(self, api: KubeApi) -> None:
        self.api = api
        self._session: aiohttp.ClientSession | None = None
        self.calls = 0

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def call(
        self, method: str, path: str, body: dict[str, Any] | None = None, *, content_type: str | None = None
    ) -> dict[str, Any]:
        """`content_type`: for a PATCH (e.g. application/merge-patch+json); default a JSON body."""
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=self.api.ssl_context()),
                timeout=aiohttp.ClientTimeout(total=10),
            )
        try:
            own = (await asyncio.to_thread(self.api.token_file.read_text)).strip()
        except OSError as exc:
            raise ReviewFailed(f"the meter's ServiceAccount token {self.api.token_file}: {exc}") from None
        self.calls += 1
        try:
            headers = {"Authorization": f"Bearer {own}"}
            if content_type is not None:
                headers["Content-Type"] = content_type
            async with self._session.request(
                method, self.api.url + path, json=body, headers=headers
            ) as response:
                if response.status not in (200, 201):
                    # Names the meter's own refused call, never a user's token.
                    raise ReviewFailed(f"{method} {path}: HTTP {response.status} from the API server")
                found: dict[str, Any] = await response.json()
                return found
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise ReviewFailed(f"{method} {path}: {type(exc).__name__}: {exc}") from None


class KubernetesAuthorizer:
    """Turns a token into an `Access` for the given namespaces, asking the API server."""

    def __init__(
        self,
        api: KubeApi,
        *,
        ttl: float = CACHE_SECONDS,
        entries: int = CACHE_ENTRIES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = KubeClient(api)
        self.ttl = ttl
        self.entries = entries
        self.clock = clock
        self._cache: OrderedDict[str, _Entry] = OrderedDict()

    @property
    def reviews(self) -> int:
        """Calls made to the API server (the cache's tests read it)."""
        return self.client.calls

    async def close(self) -> None:
        await self.client.close()

    async def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        return await self.client.call("POST", path, body)

    async def _who(self, token: str) -> dict[str, Any] | None:
        review = await self._post(
            "/apis/authentication.k8s.io/v1/tokenreviews",
            {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": token}},
        )
        status = review.get("status") or {}
        if not status.get("authenticated"):
            return None
        user: dict[str, Any] = status.get("user") or {}
        return user

    async def _may(self, user: dict[str, Any], namespace: str, what: tuple[str, str, str]) -> bool:
        verb, group, resource = what
        spec: dict[str, Any] = {
            "user": user.get("username", ""),
            "groups": user.get("groups") or [],
            "resourceAttributes": {
                "namespace": namespace,
                "verb": verb,
                "group": group,
                "resource": resource,
            },
        }
        if user.get("uid"):
            spec["uid"] = user["uid"]
        if user.get("extra"):
            spec["extra"] = user["extra"]
        review = await self._post(
            "/apis/authorization.k8s.io/v1/subjectaccessreviews",
            {"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview", "spec": spec},
        )
        return bool((review.get("status") or {}).get("allowed"))

    def _entry(self, key: str) -> _Entry | None:
        entry = self._cache.get(key)
        if entry is None:
            return None
        if entry.expires <= self.clock():
            del self._cache[key]
            return None
        self._cache.move_to_end(key)
        return entry

    def _store(self, key: str, entry: _Entry) -> None:
        self._cache[key] = entry
        self._cache.move_to_end(key)
        while len(self._cache) > self.entries:
            self._cache.popitem(last=False)

    async def access(self, token: str | None, namespaces: Iterable[str]) -> Access:
        """The user's `Access` over `namespaces`; `Unauthenticated` for no token or a refused one."""
        if not token:
            raise Unauthenticated("no token: send `Authorization: Bearer <token>` or log in")
        key = hashlib.sha256(token.encode()).hexdigest()
        entry = self._entry(key)
        if entry is None:
            entry = _Entry(self.clock() + self.ttl, await self._who(token))
            self._store(key, entry)
        if entry.user is None:
            raise Unauthenticated("the Kubernetes API server does not accept this token")
        user = entry.user
        missing = sorted(set(namespaces) - entry.decisions.keys())
        if missing:
            answers = await asyncio.gather(
                *(self._may(user, ns, what) for ns in missing for what in (ROWS, CONTENT))
            )
            for i, ns in enumerate(missing):
                entry.decisions[ns] = (answers[2 * i], answers[2 * i + 1])
        rows = frozenset(ns for ns, (see, _) in entry.decisions.items() if see)
        content = frozenset(ns for ns, (see, secrets) in entry.decisions.items() if see and secrets)
        return Access(str(user.get("username", "")), rows, content)


def in_clause(column: str, allowed: Collection[str] | None) -> tuple[str, list[object]]:
    """SQL limiting `column` to the allowed values (`None`: no limit; empty: no row at all)."""
    if allowed is None:
        return "1 = 1", []
    if not allowed:
        return "1 = 0", []
    values = sorted(allowed)
    return f"{column} IN ({', '.join(['%s'] * len(values))})", list(values)
