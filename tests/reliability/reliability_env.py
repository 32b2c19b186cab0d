"""Shared code for tests/reliability: the resources, gateways, an async HTTP client and the figures.

A module of its own (not conftest) so the test files import it by a name no other folder uses. The
gateways are the integration tier's (tests/integration: quotagateway.py, redisserver.py), started by
the same code as `tollway dev`; only the LLM provider is a mock.
"""

from __future__ import annotations

import http.server
import io
import json
import os
import secrets
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT / "tests" / "integration") not in sys.path:
    sys.path.insert(0, str(ROOT / "tests" / "integration"))

from quotagateway import (  # noqa: E402
    QuotaGateway,
    budget_yaml,
    config_folder,
    key_value,
    key_yaml,
    start_gateway,
)
from redisserver import RedisServer, redis_server_fixture  # noqa: E402

__all__ = [
    "COST",
    "IN_PRICE",
    "OUT_PRICE",
    "RESERVED",
    "Client",
    "QuotaGateway",
    "RedisServer",
    "Reply",
    "budget_yaml",
    "chat_body",
    "config_folder",
    "env_overrides",
    "key_value",
    "key_yaml",
    "record",
    "redis_server_fixture",
    "start_gateway",
    "wait_for",
]

# USD per token of every route below (declared, so no catalogue change moves the figures).
IN_PRICE = Decimal("0.15") / 1_000_000
OUT_PRICE = Decimal("0.60") / 1_000_000
# A "hi" chat call with max_tokens 20: the mock reports 5 prompt and 20 completion tokens; the
# gateway reserves its estimate of 9 prompt tokens + max_tokens.
COST = 5 * IN_PRICE + 20 * OUT_PRICE
RESERVED = 9 * IN_PRICE + 20 * OUT_PRICE

# The client-facing models the reliability routes serve (each on the mock, prices declared).
ROUTES = """\
---
apiVersion: v1
kind: Secret
metadata: {{name: rel-provider-credentials}}
stringData: {{apiKey: {provider_key}}}
---
apiVersion: tollway.dev/v1alpha1
kind: RouteRule
metadata: {{name: rel-chat}}
spec:
  model: rel-chat
  timeout: 2s
  backends:
    - name: rel-mock
      provider: openai-compatible
      model: gpt-4o-mini
      baseURL: http://127.0.0.1:{mock_port}/v1
      credentialsSecretRef: {{name: rel-provider-credentials, key: apiKey}}
      pricing: {{inputPerMillion: "0.15", outputPerMillion: "0.60"}}
---
apiVersion: tollway.dev/v1alpha1
kind: RouteRule
metadata: {{name: rel-embed}}
spec:
  model: rel-embed
  timeout: 2s
  backends:
    - name: rel-mock-embed
      provider: openai-compatible
      model: text-embedding-3-small
      baseURL: http://127.0.0.1:{mock_port}/v1
      credentialsSecretRef: {{name: rel-provider-credentials, key: apiKey}}
      pricing: {{inputPerMillion: "0.02", outputPerMillion: "0"}}
---
apiVersion: tollway.dev/v1alpha1
kind: RouteRule
metadata: {{name: rel-claude}}
spec:
  model: rel-claude
  timeout: 2s
  backends:
    - name: rel-anthropic
      provider: anthropic
      model: claude-haiku-4-5
      baseURL: http://127.0.0.1:{mock_port}
      credentialsSecretRef: {{name: rel-provider-credentials, key: apiKey}}
      pricing: {{inputPerMillion: "1", outputPerMillion: "5"}}
"""


FAULTY_ROUTE = """\
---
apiVersion: tollway.dev/v1alpha1
kind: RouteRule
metadata: {{name: rel-faulty}}
spec:
  model: rel-faulty
  timeout: 2s
  backends:
    - name: rel-faulty
      provider: openai-compatible
      model: gpt-4o-mini
      baseURL: http://127.0.0.1:{faulty_port}/v1
      pricing: {{inputPerMillion: "0.15", outputPerMillion: "0.60"}}
"""


def routes_yaml(mock_port: int, provider_key: str, faulty_port: int | None = None) -> str:
    text = ROUTES.format(mock_port=mock_port, provider_key=provider_key)
    if faulty_port is not None:
        text += FAULTY_ROUTE.format(faulty_port=faulty_port)
    return text


# --- answers the mock provider does not give -----------------------------------------------------

HTML_PAGE = b"<!DOCTYPE html><html><head><title>Sign in</title></head><body>Captive portal</body></html>"
# A real chat.completion, cut in the middle: a complete HTTP message whose JSON ends too early.
TRUNCATED_JSON = (
    b'{"id":"chatcmpl-x","object":"chat.completion","created":1,"model":"gpt-4o-mini","choices":[{"index":0,'
    b'"message":{"role":"assistant","content":"This is a mock re'
)


class _FaultyHandler(http.server.BaseHTTPRequestHandler):
    """`x-fault: html` answers 200 text/html (a proxy's or portal's page); `x-fault:
    truncated-json` answers 200 application/json with a whole-but-cut JSON body."""

    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length") or 0))
        fault = self.headers.get("x-fault", "html")
        body, content_type = (
            (TRUNCATED_JSON, "application/json")
            if fault == "truncated-json"
            else (HTML_PAGE, "text/html; charset=utf-8")
        )
        self.send_response(200)
        self.send_header("content-type", content_type)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class FaultyProvider:
    """A provider stand-in on a free loopback port, in a thread (it answers while tests block)."""

    def __init__(self) -> None:
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _FaultyHandler)
        self.port = int(self.server.server_address[1])
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def provider_key() -> str:
    """A provider credential no test writes anywhere but into the config folder."""
    return "sk-relprov-" + secrets.token_hex(16)


def chat_body(
    model: str = "rel-chat", *, max_tokens: int | None = 20, stream: bool = False, text: str = "hi"
) -> bytes:
    body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": text}]}
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    if stream:
        body["stream"] = True
    return json.dumps(body).encode()


@contextmanager
def env_overrides(values: Mapping[str, str]) -> Iterator[None]:
    """Environment variables for the children a gateway starts (DevGateway copies os.environ)."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, old in saved.items():
            if old is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = old


def wait_for(check: Any, what: str, seconds: float = 10.0, every: float = 0.1) -> float:
    """Poll `check()` until truthy; returns the seconds it took, fails naming `what`."""
    start = time.monotonic()
    while not check():
        assert time.monotonic() - start < seconds, f"{what} within {seconds:.0f} s"
        time.sleep(every)
    return time.monotonic() - start


def get_json(url: str, timeout: float = 5) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.loads(response.read())


@dataclass
class Shared:
    """The session's gateway for the fuzzing and fault tests (conftest's `shared` fixture)."""

    gateway: QuotaGateway
    redis: RedisServer
    mock_url: str
    provider_key: str
    state_dir: Path


# --- an async client ----------------------------------------------------------------------------


@dataclass
class Reply:
    status: int  # 0: no HTTP answer (connection reset, timeout); see `error`
    headers: dict[str, str]
    body: bytes
    error: str | None = None
    started: float = 0.0
    ended: float = 0.0

    def json(self) -> Any:
        return json.loads(self.body)

    def error_object(self) -> dict[str, Any] | None:
        """The OpenAI error object when the body is exactly that shape, else None."""
        try:
            payload = json.loads(self.body)
        except ValueError:
            return None
        if not isinstance(payload, dict) or set(payload) != {"error"}:
            return None
        error = payload["error"]
        if not isinstance(error, dict) or set(error) != {"message", "type", "param", "code"}:
            return None
        return error if isinstance(error["message"], str) and error["message"] else None

    def anthropic_error(self) -> dict[str, Any] | None:
        try:
            payload = json.loads(self.body)
        except ValueError:
            return None
        if (
            isinstance(payload, dict)
            and payload.get("type") == "error"
            and isinstance(payload.get("error"), dict)
        ):
            error = payload["error"]
            if isinstance(error.get("type"), str) and isinstance(error.get("message"), str):
                return dict(error)
        return None

    @property
    def cost(self) -> Decimal | None:
        raw = self.headers.get("x-tollway-cost-usd")
        return Decimal(raw) if raw is not None else None


@dataclass
class Client:
    """aiohttp against one gateway origin, `limit` connections; never raises for a failed call."""

    origin: str
    limit: int = 16
    _session: aiohttp.ClientSession | None = field(default=None, init=False)

    async def __aenter__(self) -> Client:
        connector = aiohttp.TCPConnector(limit=self.limit, force_close=False)
        self._session = aiohttp.ClientSession(connector=connector, auto_decompress=False)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._session is not None
        await self._session.close()

    async def send(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        *,
        timeout_s: float = 15.0,
        stream_events: list[bytes] | None = None,
    ) -> Reply:
        """One call. With `stream_events`, each SSE event read is appended as it arrives."""
        assert self._session is not None
        started = time.monotonic()
        all_headers = dict(headers or {})
        skip = ("Content-Type",) if not any(k.lower() == "content-type" for k in all_headers) else ()
        try:
            async with self._session.request(
                method,
                self.origin + path,
                # Big bodies as a stream: aiohttp warns (and the warning fails the test) on raw bytes.
                data=io.BytesIO(body) if body is not None and len(body) > 1 << 20 else body,
                headers=all_headers,
                skip_auto_headers=skip,
                timeout=aiohttp.ClientTimeout(total=timeout_s),
            ) as response:
                status = response.status
                got = {k.lower(): v for k, v in response.headers.items()}
                if stream_events is None:
                    data = await response.read()
                    return Reply(status, got, data, None, started, time.monotonic())
                # A stream keeps its status and what arrived when it breaks: `error` says how.
                chunks: list[bytes] = []
                pending = b""
                broke: str | None = None
                try:
                    async for piece in response.content.iter_any():
                        chunks.append(piece)
                        pending += piece
                        while b"\n\n" in pending:
                            event, pending = pending.split(b"\n\n", 1)
                            stream_events.append(event)
                except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                    broke = f"{type(exc).__name__}: {exc}"
                return Reply(status, got, b"".join(chunks), broke, started, time.monotonic())
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            return Reply(0, {}, b"", f"{type(exc).__name__}: {exc}", started, time.monotonic())


# --- figures ------------------------------------------------------------------------------------

FIGURES: dict[str, dict[str, Any]] = {}
FIGURES_FILE: list[Path] = []  # set by conftest: where the figures are written after each record


def record(section: str, **values: Any) -> None:
    """Keep a figure for the summary table and the JSON file (docs/reliability.md copies them)."""
    FIGURES.setdefault(section, {}).update(values)
    for path in FIGURES_FILE:
        path.write_text(json.dumps(FIGURES, indent=2, sort_keys=True, default=str))
