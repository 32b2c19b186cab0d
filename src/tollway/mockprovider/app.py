"""The mock LLM provider: an aiohttp application speaking OpenAI's and Anthropic's wire formats.

``create_app(settings)`` builds the application, ``await serve(settings)`` starts it and returns the
``web.AppRunner`` (``base_url(runner)`` tells where it listens), ``run(host, port, settings)`` blocks.
See docs/mock-provider.md for the endpoints and the ``x-mock-*`` header knobs.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import signal
import sys
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from . import anthropic_api, bedrock_api, openai_api, responses_api, sts_api, vertex_api
from .knobs import (
    FAIL_GARBAGE,
    FAIL_HTML,
    FAIL_RESET,
    FAIL_STALL,
    JSON_CT,
    Flavor,
    KnobError,
    dumps,
    error_response,
    parse_knobs,
)
from .runtime import STATE_KEY, Call, MockState, abort_connection, stall
from .settings import MockSettings

__all__ = ["MockSettings", "base_url", "create_app", "run", "serve"]

Impl = Callable[[Call], Awaitable[web.StreamResponse]]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

GARBAGE_BODY = b'<html><body>502 upstream hiccup: this is not JSON {"choices": [</body></html>'
# What a load balancer or captive portal in front of a provider answers with a 200.
HTML_BODY = (
    b"<!DOCTYPE html><html><head><title>Service maintenance</title></head>"
    b"<body><h1>We'll be back soon</h1></body></html>"
)
CLIENT_MAX_SIZE = 64 * 1024 * 1024


def _authorized(request: web.Request, flavor: Flavor, key: str) -> bool:
    """Bearer token everywhere; ``x-api-key`` on Anthropic paths; ``api-key`` on Azure's (``/openai/``)."""
    candidates: list[str] = []
    auth = request.headers.get("Authorization", "")
    if auth[:7].lower() == "bearer ":
        candidates.append(auth[7:].strip())
    if flavor is Flavor.ANTHROPIC:
        candidates.append(request.headers.get("x-api-key", ""))
    elif "deployment" in request.match_info or request.path.startswith("/openai/"):
        candidates.append(request.headers.get("api-key", ""))
    expected = key.encode()
    return any(hmac.compare_digest(c.encode(), expected) for c in candidates if c)


def _endpoint(flavor: Flavor, impl: Impl) -> Handler:
    """Wrap a provider endpoint: record, knobs, latency, failures, auth, body check, then ``impl``."""

    async def handler(request: web.Request) -> web.StreamResponse:
        state = request.app[STATE_KEY]
        settings = state.settings
        request_id = state.new_id("req_")
        body: Any = None
        body_text: str | None = None
        raw = b""
        if request.body_exists:
            raw = await request.read()
            try:
                body = json.loads(raw)
            except ValueError:
                body_text = raw.decode("utf-8", "replace")
        state.record(request, body, body_text)

        try:
            knobs = parse_knobs(request.headers, settings)
        except KnobError as exc:
            return error_response(flavor, 400, str(exc), request_id=request_id)
        if knobs.latency_ms > 0:
            await asyncio.sleep(knobs.latency_ms / 1000)
        if FAIL_RESET in knobs.fail:
            await abort_connection(request)
            return web.Response()
        if FAIL_STALL in knobs.fail:
            await stall(request, state.stopping)
            await abort_connection(request)
            return web.Response()
        if knobs.status is not None:
            return error_response(flavor, knobs.status, request_id=request_id, retry_after=knobs.retry_after)
        if flavor is Flavor.BEDROCK:
            refused = bedrock_api.verify_signature(request, raw, settings)
            if refused is not None:
                return refused
        elif "publisher" in request.match_info:  # Vertex: a token from this mock's `POST /token`
            refused = vertex_api.verify_token(request)
            if refused is not None:
                return refused
        elif settings.require_key is not None and not _authorized(request, flavor, settings.require_key):
            return error_response(flavor, 401, request_id=request_id)
        if request.method == "POST" and not isinstance(body, dict):
            return error_response(
                flavor,
                400,
                "We could not parse the JSON body of your request: expected a JSON object.",
                request_id=request_id,
            )
        if FAIL_GARBAGE in knobs.fail:
            return web.Response(body=GARBAGE_BODY, content_type=JSON_CT)
        if FAIL_HTML in knobs.fail:
            return web.Response(body=HTML_BODY, content_type="text/html")
        return await impl(
            Call(request, body if isinstance(body, dict) else {}, knobs, state, flavor, request_id)
        )

    return handler


async def _health(request: web.Request) -> web.Response:
    return web.Response(text='{"status":"ok"}', content_type=JSON_CT)


async def _get_requests(request: web.Request) -> web.Response:
    return web.Response(text=dumps(list(request.app[STATE_KEY].requests)), content_type=JSON_CT)


async def _clear_requests(request: web.Request) -> web.Response:
    recorded = request.app[STATE_KEY].requests
    count = len(recorded)
    recorded.clear()
    return web.Response(text=dumps({"cleared": count}), content_type=JSON_CT)


async def _on_shutdown(app: web.Application) -> None:
    app[STATE_KEY].stopping.set()  # releases stalled requests so cleanup does not wait for them


def _vertex_endpoints() -> Handler:
    """Vertex's `…/publishers/{publisher}/models/{model}:{method}`, by publisher and method."""
    vx, an = Flavor.VERTEX, Flavor.ANTHROPIC
    methods: dict[tuple[str, str], Handler] = {
        ("google", "generateContent"): _endpoint(vx, vertex_api.generate_content),
        ("google", "streamGenerateContent"): _endpoint(vx, vertex_api.stream_generate_content),
        ("anthropic", "rawPredict"): _endpoint(an, vertex_api.raw_predict),
        ("anthropic", "streamRawPredict"): _endpoint(an, vertex_api.stream_raw_predict),
    }

    async def handler(request: web.Request) -> web.StreamResponse:
        method = request.match_info["tail"].rpartition(":")[2]
        endpoint = methods.get((request.match_info["publisher"], method))
        if endpoint is None:
            return error_response(vx, 404, f"Method {method!r} not found.", request_id="")
        return await endpoint(request)

    return handler


def create_app(settings: MockSettings | None = None) -> web.Application:
    """Build the mock provider application (no access log is attached; the runner decides)."""
    settings = settings or MockSettings()
    app = web.Application(client_max_size=CLIENT_MAX_SIZE)
    app[STATE_KEY] = MockState(settings=settings, requests=deque(maxlen=settings.record_limit))
    app[responses_api.STORE_KEY] = responses_api.ResponseStore()
    app[vertex_api.TOKENS_KEY] = vertex_api.TokenStore()
    app[sts_api.ISSUED_KEY] = sts_api.IssuedKeys()
    app.on_shutdown.append(_on_shutdown)

    oa, an = Flavor.OPENAI, Flavor.ANTHROPIC
    chat = _endpoint(oa, openai_api.chat_completions)
    embed = _endpoint(oa, openai_api.embeddings)
    models = _endpoint(oa, openai_api.list_models)
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_post("/chat/completions", chat)
    app.router.add_post("/openai/deployments/{deployment}/chat/completions", chat)
    app.router.add_post("/v1/embeddings", embed)
    app.router.add_post("/embeddings", embed)
    app.router.add_post("/openai/deployments/{deployment}/embeddings", embed)
    app.router.add_get("/v1/models", models, allow_head=False)
    app.router.add_get("/models", models, allow_head=False)
    app.router.add_get("/v1/models/{model}", _endpoint(oa, openai_api.retrieve_model), allow_head=False)
    create, retrieve, items, delete = (
        _endpoint(oa, responses_api.create),
        _endpoint(oa, responses_api.retrieve),
        _endpoint(oa, responses_api.input_items),
        _endpoint(oa, responses_api.delete),
    )
    for prefix in ("/v1", "", "/openai/v1"):  # OpenAI, the base-path-less alias, Azure's v1 API
        app.router.add_post(f"{prefix}/responses", create)
        app.router.add_get(f"{prefix}/responses/{{response_id}}", retrieve, allow_head=False)
        app.router.add_get(f"{prefix}/responses/{{response_id}}/input_items", items, allow_head=False)
        app.router.add_delete(f"{prefix}/responses/{{response_id}}", delete)
    app.router.add_post("/v1/messages", _endpoint(an, anthropic_api.messages))
    app.router.add_post("/v1/messages/count_tokens", _endpoint(an, anthropic_api.count_tokens))
    app.router.add_post("/model/{model}/converse", _endpoint(Flavor.BEDROCK, bedrock_api.converse))
    app.router.add_post(
        "/model/{model}/converse-stream", _endpoint(Flavor.BEDROCK, bedrock_api.converse_stream)
    )
    app.router.add_post("/token", vertex_api.token)
    app.router.add_post(
        "/v1/projects/{project}/locations/{location}/publishers/{publisher}/models/{tail}",
        _vertex_endpoints(),
    )
    # STS's query API: botocore posts to the endpoint's root (`AWS_ENDPOINT_URL_STS`).
    app.router.add_post("/", sts_api.assume_role_with_web_identity)
    app.router.add_post("/sts", sts_api.assume_role_with_web_identity)
    app.router.add_get("/_mock/health", _health)
    app.router.add_get("/_mock/requests", _get_requests, allow_head=False)
    app.router.add_delete("/_mock/requests", _clear_requests)
    return app


async def serve(
    settings: MockSettings | None = None, *, host: str | None = None, port: int | None = None
) -> web.AppRunner:
    """Start the mock provider on ``host:port`` (default: the settings'; port 0 = a free port).

    Returns the started runner; ``base_url(runner)`` is its address and ``await runner.cleanup()``
    stops it.
    """
    settings = settings or MockSettings()
    runner = web.AppRunner(create_app(settings), access_log=None, shutdown_timeout=settings.shutdown_timeout)
    await runner.setup()
    site = web.TCPSite(
        runner,
        host if host is not None else settings.host,
        port if port is not None else settings.port,
        backlog=settings.backlog,
    )
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner


def base_url(runner: web.AppRunner) -> str:
    """``http://host:port`` of the first address the runner listens on."""
    address = runner.addresses[0]
    host, port = address[0], address[1]
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


def run(host: str | None = None, port: int | None = None, settings: MockSettings | None = None) -> None:
    """Serve until SIGINT/SIGTERM (uses uvloop when it is installed)."""
    settings = settings or MockSettings()

    async def main() -> None:
        runner = await serve(settings, host=host, port=port)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, stop.set)
        print(f"tollway mock provider listening on {base_url(runner)}", file=sys.stderr, flush=True)
        try:
            await stop.wait()
        finally:
            await runner.cleanup()

    try:
        import uvloop
    except ImportError:
        asyncio.run(main())
    else:
        uvloop.run(main())
