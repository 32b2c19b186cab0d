"""The sidecar's watch of the GatewayConfig Secret, against a small stand-in for the watch API.

The real API server is in tests/operator_e2e; here the stand-in lets each test script the stream:
events, a 410 Gone, an invalid config, a dropped connection.
"""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from tollway_sidecar.config.models import Budget, GatewayConfig
from tollway_sidecar.config.secret_watch import AccessError, ApiAccess, SecretWatcher, parse_secret_ref


def config(limit: str) -> GatewayConfig:
    return GatewayConfig(budgets=(Budget(name="b", namespace="n", limit_usd=limit),)).with_checksum()


def event(kind: str, payload: bytes | None, version: str) -> dict[str, Any]:
    data = {} if payload is None else {"config.json": base64.b64encode(payload).decode()}
    return {"type": kind, "object": {"metadata": {"name": "gw", "resourceVersion": version}, "data": data}}


class FakeApi:
    """Each watch request is answered by the next script: a list of events, then the stream ends."""

    def __init__(self) -> None:
        self.scripts: asyncio.Queue[tuple[int, list[dict[str, Any]]]] = asyncio.Queue()
        self.requests: list[web.Request] = []

    async def watch(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(request)
        status, events = await self.scripts.get()
        if status != 200:
            return web.json_response({"kind": "Status", "message": "secrets is forbidden"}, status=status)
        response = web.StreamResponse()
        await response.prepare(request)
        for item in events:
            await response.write(json.dumps(item).encode() + b"\n")
        return response


@pytest.fixture
async def api(unused_tcp_port: int) -> Any:
    fake = FakeApi()
    app = web.Application()
    app.router.add_get("/api/v1/namespaces/tollway-system/secrets", fake.watch)
    runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=0.1)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", unused_tcp_port).start()
    fake.url = f"http://127.0.0.1:{unused_tcp_port}"  # type: ignore[attr-defined]
    yield fake
    await runner.cleanup()


async def until(check: Any) -> None:
    for _ in range(500):  # 5 s
        if check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("timed out")


@pytest.fixture
async def watching(api: Any) -> Any:
    applied: list[GatewayConfig] = []
    watcher = SecretWatcher(ApiAccess(api.url, False, token="t0ken"), "tollway-system", "gw", applied.append)
    task = asyncio.create_task(watcher.run())
    yield watcher, applied
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_each_new_valid_config_is_applied_and_a_bad_one_keeps_the_last_good(
    api: Any, watching: Any
) -> None:
    watcher, applied = watching
    one, two = config("1"), config("2")
    await api.scripts.put(
        (
            200,
            [
                event("ADDED", one.model_dump_json().encode(), "10"),
                event("MODIFIED", b'{"keys": "not a list"}', "11"),
                event(
                    "MODIFIED",
                    json.dumps({**json.loads(two.model_dump_json()), "checksum": "0" * 64}).encode(),
                    "12",
                ),
                {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "13"}}},
                event("MODIFIED", two.model_dump_json().encode(), "14"),
                event("DELETED", None, "15"),
            ],
        )
    )
    await until(lambda: watcher.events == 6)

    assert [c.checksum for c in applied] == [one.checksum, two.checksum]
    request = api.requests[0]
    assert request.query["fieldSelector"] == "metadata.name=gw"
    assert request.query["watch"] == "true"
    assert "resourceVersion" not in request.query
    assert request.headers["Authorization"] == "Bearer t0ken"


async def test_a_reconnect_resumes_and_a_410_starts_afresh(api: Any, watching: Any) -> None:
    watcher, applied = watching
    one = config("1")
    await api.scripts.put((200, [event("ADDED", one.model_dump_json().encode(), "10")]))
    await until(lambda: len(api.requests) == 2)  # the stream ended: it watches again from there
    assert api.requests[1].query["resourceVersion"] == "10"
    await api.scripts.put((200, [{"type": "ERROR", "object": {"kind": "Status", "code": 410}}]))
    await until(lambda: len(api.requests) == 3)
    assert "resourceVersion" not in api.requests[2].query
    await api.scripts.put((200, [event("ADDED", one.model_dump_json().encode(), "20")]))
    await until(lambda: watcher.events == 3)
    assert len(applied) == 1  # the same config again is not applied twice


async def test_the_mounted_file_is_used_only_while_the_watch_is_down(api: Any, watching: Any) -> None:
    watcher, applied = watching
    fallback = watcher.file_fallback()
    await api.scripts.put((403, []))
    await until(lambda: watcher.last_error is not None)
    assert "HTTP 403: secrets is forbidden" in watcher.last_error
    assert not watcher.live
    fallback(config("1"))  # the API is down: the mounted file's config is applied
    assert [c.checksum for c in applied] == [config("1").checksum]

    await api.scripts.put((200, [event("ADDED", config("2").model_dump_json().encode(), "30")]))
    await until(lambda: watcher.live and len(applied) == 2)
    fallback(config("3"))  # the kubelet's copy, late: ignored while the watch is live
    assert [c.checksum for c in applied] == [config("1").checksum, config("2").checksum]


def test_a_kubeconfig_with_a_token(tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        json.dumps(
            {
                "clusters": [{"name": "c", "cluster": {"server": "http://127.0.0.1:1/"}}],
                "users": [{"name": "u", "user": {"token": "abc"}}],
                "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "x",
            }
        )
    )
    access = ApiAccess.from_kubeconfig(kubeconfig)
    assert access.server == "http://127.0.0.1:1"
    assert access.headers() == {"Authorization": "Bearer abc"}


def test_a_kubeconfig_without_its_context_is_refused(tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text("current-context: missing\n")
    with pytest.raises(AccessError, match="no context named 'missing'"):
        ApiAccess.from_kubeconfig(kubeconfig)


def test_the_service_account_token_is_read_at_each_connection(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("one\n")
    access = ApiAccess("https://10.0.0.1:443", False, token_file=token)
    assert access.headers() == {"Authorization": "Bearer one"}
    token.write_text("two")  # the kubelet rotated it
    assert access.headers() == {"Authorization": "Bearer two"}


@pytest.mark.parametrize("value", ["gw", "/gw", "ns/", "a/b/c"])
def test_the_secret_reference_is_namespace_slash_name(value: str) -> None:
    with pytest.raises(ValueError, match="namespace/name"):
        parse_secret_ref(value)
    assert parse_secret_ref("tollway-system/gw") == ("tollway-system", "gw")
