"""Follow the GatewayConfig Secret through the Kubernetes API: seconds after a change, not a minute.

A mounted Secret is refreshed by the kubelet about once a minute; a watch hears of a change as soon
as the API server stores it. The sidecar watches exactly one Secret, with a `metadata.name` field
selector, so its RBAC can be `watch` on that one name (`resourceNames`) and nothing else.

- Credentials: the Pod's service account (token re-read at each connection, so rotated tokens are
  picked up), or a kubeconfig (token or client certificate) for tests and local runs.
- Each ADDED/MODIFIED event carries the whole Secret; `config.json` is parsed like the mounted file
  (`parse_config`). An invalid config is logged and skipped: the last good one stays. A deleted
  Secret keeps the last good config too.
- The watch resumes from the last resourceVersion seen (bookmarks included); a `410 Gone` starts a
  fresh one, whose first event is the Secret as it is now. Errors back off up to 30 s.
- While the watch is live, the mounted file (followed by `FileWatcher`) is ignored: it lags behind
  and could bring back an older config. When the API is unreachable, the file is the fallback.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import os
import ssl
import tempfile
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final
from urllib.parse import quote

import aiohttp
import yaml

from tollway_sidecar.config.loader import ConfigError, parse_config
from tollway_sidecar.config.models import GatewayConfig

log = logging.getLogger("tollway.config.secret")

CONFIG_KEY: Final = "config.json"
SERVICE_ACCOUNT_DIR: Final = Path("/var/run/secrets/kubernetes.io/serviceaccount")
WATCH_TIMEOUT_SECONDS: Final = 300
MAX_EVENT_BYTES: Final = 16 * 1024 * 1024
MAX_BACKOFF_SECONDS: Final = 30.0


class AccessError(Exception):
    """No usable API server address and credentials."""


@dataclass(frozen=True)
class ApiAccess:
    """Where the API server is and how to authenticate to it."""

    server: str
    ssl_context: ssl.SSLContext | bool
    token: str | None = None
    token_file: Path | None = None

    def headers(self) -> dict[str, str]:
        token = self.token
        if self.token_file is not None:
            token = self.token_file.read_text().strip()
        return {"Authorization": f"Bearer {token}"} if token else {}

    @classmethod
    def in_cluster(cls, directory: Path = SERVICE_ACCOUNT_DIR) -> ApiAccess:
        host, port = os.environ.get("KUBERNETES_SERVICE_HOST"), os.environ.get("KUBERNETES_SERVICE_PORT")
        token = directory / "token"
        if not host or not port or not token.is_file():
            raise AccessError(
                "not in a Pod: KUBERNETES_SERVICE_HOST/PORT or the service account token is missing"
            )
        host = f"[{host}]" if ":" in host else host
        context = ssl.create_default_context(cafile=str(directory / "ca.crt"))
        return cls(server=f"https://{host}:{port}", ssl_context=context, token_file=token)

    @classmethod
    def from_kubeconfig(cls, path: Path) -> ApiAccess:
        """The current context of a kubeconfig: server, CA, and a token or a client certificate."""
        try:
            document = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise AccessError(f"{path}: cannot read the kubeconfig: {exc}") from None

        def named(section: str, name: str | None) -> dict[str, Any]:
            for item in document.get(section) or ():
                if item.get("name") == name:
                    return dict(item.get(section.rstrip("s")) or {})
            raise AccessError(f"{path}: no {section.rstrip('s')} named {name!r}")

        context = named("contexts", document.get("current-context"))
        cluster = named("clusters", context.get("cluster"))
        user = named("users", context.get("user"))
        server = cluster.get("server")
        if not isinstance(server, str) or not server:
            raise AccessError(f"{path}: the cluster has no server")
        base = path.parent
        tls: ssl.SSLContext | bool = True
        if server.startswith("https://"):
            if cluster.get("insecure-skip-tls-verify"):
                tls = False
            else:
                ca_data = cluster.get("certificate-authority-data")
                ca_file = cluster.get("certificate-authority")
                tls = ssl.create_default_context(
                    cadata=base64.b64decode(ca_data).decode() if isinstance(ca_data, str) else None,
                    cafile=str(base / ca_file) if isinstance(ca_file, str) else None,
                )
                _load_client_certificate(tls, user, base)
        token_file = user.get("tokenFile")
        return cls(
            server=server.rstrip("/"),
            ssl_context=tls,
            token=user.get("token"),
            token_file=(base / token_file) if isinstance(token_file, str) else None,
        )

    @classmethod
    def discover(cls, kubeconfig: Path | None = None) -> ApiAccess:
        """An explicit kubeconfig, else the Pod's service account, else $KUBECONFIG."""
        if kubeconfig is not None:
            return cls.from_kubeconfig(kubeconfig)
        try:
            return cls.in_cluster()
        except AccessError:
            env = os.environ.get("KUBECONFIG", "").split(os.pathsep)[0]
            if env:
                return cls.from_kubeconfig(Path(env))
            raise


def _load_client_certificate(context: ssl.SSLContext, user: dict[str, Any], base: Path) -> None:
    """A client certificate from files or from `-data` fields (briefly written to private files)."""
    with tempfile.TemporaryDirectory(prefix="tollway-kube-") as scratch:
        paths = []
        for field in ("client-certificate", "client-key"):
            data, name = user.get(f"{field}-data"), user.get(field)
            if isinstance(data, str):
                target = Path(scratch) / field
                target.write_bytes(base64.b64decode(data))
                paths.append(str(target))
            elif isinstance(name, str):
                paths.append(str(base / name))
        if len(paths) == 2:
            context.load_cert_chain(paths[0], paths[1])


def parse_secret_ref(value: str) -> tuple[str, str]:
    """`namespace/name` → (namespace, name)."""
    namespace, _, name = value.partition("/")
    if not namespace or not name or "/" in name:
        raise ValueError(f"expected namespace/name, got {value!r}")
    return namespace, name


class SecretWatcher:
    """Watches one Secret; calls `on_config` with each new valid GatewayConfig in its `config.json`."""

    def __init__(
        self,
        access: ApiAccess,
        namespace: str,
        name: str,
        on_config: Callable[[GatewayConfig], None],
        *,
        key: str = CONFIG_KEY,
        watch_timeout: int = WATCH_TIMEOUT_SECONDS,
    ) -> None:
        self.access = access
        self.namespace = namespace
        self.name = name
        self.key = key
        self.on_config = on_config
        self.watch_timeout = watch_timeout
        self.live = False  # a watch is open: the file fallback is ignored
        self.applied_checksum: str | None = None  # the config last handed to `on_config`, from anywhere
        self.last_error: str | None = None
        self.events = 0
        self._resource_version: str | None = None
        self._last_payload: str | None = None

    @property
    def source(self) -> str:
        return f"Secret {self.namespace}/{self.name}"

    def offer(self, config: GatewayConfig) -> bool:
        """Apply `config` unless it is the one already applied."""
        if config.checksum == self.applied_checksum:
            return False
        self.applied_checksum = config.checksum
        self.on_config(config)
        return True

    def file_fallback(self) -> Callable[[GatewayConfig], None]:
        """For `FileWatcher`: apply the mounted file's config only while the watch is not live."""

        def apply(config: GatewayConfig) -> None:
            if self.live:
                log.debug("the mounted config %s is ignored: the API watch is live", config.version)
                return
            if self.offer(config):
                log.info("config %s from the mounted file (the API watch is down)", config.version)

        return apply

    # -- the watch ------------------------------------------------------------------------------------

    def watch_url(self) -> str:
        query = (
            f"watch=true&allowWatchBookmarks=true&timeoutSeconds={self.watch_timeout}"
            f"&fieldSelector={quote(f'metadata.name={self.name}')}"
        )
        if self._resource_version:
            query += f"&resourceVersion={quote(self._resource_version)}"
        return f"{self.access.server}/api/v1/namespaces/{quote(self.namespace)}/secrets?{query}"

    async def run(self) -> None:
        """Watch until cancelled, reconnecting after every end or error."""
        backoff = 0.5
        connector = aiohttp.TCPConnector(ssl=self.access.ssl_context)
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=self.watch_timeout + 60)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            while True:
                try:
                    await self._watch_once(session)  # returns when the server ends the watch
                    backoff = 0.5
                    continue
                except _Gone:
                    self._resource_version = None
                    continue
                except (aiohttp.ClientError, TimeoutError, OSError, AccessError, ValueError) as exc:
                    self.live = False
                    self._fail(f"{type(exc).__name__}: {exc}")
                await asyncio.sleep(backoff)  # a watch loop's backoff, not a request handler
                backoff = min(backoff * 2, MAX_BACKOFF_SECONDS)

    async def _watch_once(self, session: aiohttp.ClientSession) -> None:
        async with session.get(self.watch_url(), headers=self.access.headers()) as response:
            if response.status == 410:
                raise _Gone()
            if response.status != 200:
                body = (await response.text())[:500]
                raise AccessError(f"watching {self.source}: HTTP {response.status}: {_api_message(body)}")
            self.live = True
            if self.last_error is not None:
                log.info("watching %s again", self.source)
                self.last_error = None
            async for line in _lines(response.content):
                self._handle(json.loads(line))

    def _handle(self, event: dict[str, Any]) -> None:
        kind, obj = event.get("type"), event.get("object") or {}
        self.events += 1
        if kind == "ERROR":
            if obj.get("code") == 410:
                raise _Gone()
            raise AccessError(f"watching {self.source}: {obj.get('message') or obj}")
        version = (obj.get("metadata") or {}).get("resourceVersion")
        if isinstance(version, str):
            self._resource_version = version
        if kind == "DELETED":
            log.warning("%s was deleted: keeping config %s", self.source, (self.applied_checksum or "")[:12])
        elif kind in ("ADDED", "MODIFIED"):
            self._load(obj)

    def _load(self, secret: dict[str, Any]) -> None:
        payload = (secret.get("data") or {}).get(self.key)
        if payload == self._last_payload:
            return
        self._last_payload = payload
        if not isinstance(payload, str):
            log.error("keeping the previous config: %s has no key %r", self.source, self.key)
            return
        try:
            config = parse_config(base64.b64decode(payload, validate=True), self.source)
        except (binascii.Error, ValueError) as exc:
            log.error("keeping the previous config: %s: %r is not base64: %s", self.source, self.key, exc)
            return
        except ConfigError as exc:
            log.error("keeping the previous config: %s", exc)
            return
        self.offer(config)

    def _fail(self, error: str) -> None:
        if error != self.last_error:
            log.warning("config watch: %s (the mounted file is the fallback meanwhile)", error)
        self.last_error = error


class _Gone(Exception):
    """The resourceVersion is too old: start a fresh watch."""


def _api_message(body: str) -> str:
    try:
        message = json.loads(body).get("message")
    except (ValueError, AttributeError):
        message = None
    return message if isinstance(message, str) else body


async def _lines(stream: aiohttp.StreamReader) -> AsyncIterator[bytes]:
    """Newline-separated events of any size up to MAX_EVENT_BYTES (a Secret event can exceed
    aiohttp's own line limit)."""
    buffer = b""
    async for chunk in stream.iter_any():
        buffer += chunk
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            if line.strip():
                yield line
        if len(buffer) > MAX_EVENT_BYTES:
            raise ValueError(f"a watch event is larger than {MAX_EVENT_BYTES} bytes")
    if buffer.strip():
        yield buffer
