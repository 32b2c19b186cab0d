"""Two sidecar worker processes behind one real Envoy, sharing a real Redis: every call served on
one-backend and fallback routes, the load spread over both workers, budgets exact across them, one
aggregated /metrics, a dead worker restarted, and SIGTERM draining the calls under way."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import openai
import pytest
from gateway_env import ROOT, start_mock
from httpcall import Answer, bearer, call
from prometheus_client.parser import text_string_to_metric_families
from quotagateway import QuotaGateway, budget_yaml, config_folder, key_value, key_yaml, start_gateway
from redisserver import RedisServer

from tollway.children import Children
from tollway.dev import free_port

sys.path.insert(0, str(ROOT / "tests" / "kube"))  # the Jaeger harness lives with the other tool harnesses
from jaeger_harness import Jaeger

CHAT = "/v1/chat/completions"
MESSAGES = [{"role": "user", "content": "hi"}]
ADMITTED = 37
RESERVED_PER_CALL = Decimal("0.00000735")  # gpt-4o-mini, 9 prompt tokens + max_tokens 10

FALLBACK_ROUTE = """\
---
apiVersion: tollway.dev/v1alpha1
kind: RouteRule
metadata: {{name: wk-fallback}}
spec:
  model: wk-fallback
  backends:
    - {{name: failing, provider: openai-compatible, model: gpt-4o-mini, baseURL: "http://127.0.0.1:{failing}/v1"}}
    - {{name: mock, provider: openai-compatible, model: gpt-4o-mini, baseURL: "http://127.0.0.1:{mock}/v1"}}
"""


@dataclass
class Workers:
    gateway: QuotaGateway
    folder: Path
    ports: dict[str, int]
    jaeger: Jaeger

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        with urllib.request.urlopen(f"{self.gateway.admin_url}/metrics", timeout=5) as response:
            text = response.read().decode()
        return {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }

    def streams(self, role: str, worker: int) -> float:
        labels = (("filter", role), ("worker", str(worker)))
        return self.metrics().get(("tollway_extproc_streams_total", labels), 0.0)

    def requests_of(self, key: str) -> float:
        return sum(
            value
            for (name, labels), value in self.metrics().items()
            if name == "tollway_requests_total" and ("key", key) in labels
        )

    @property
    def sidecar_pid(self) -> int:
        return next(p.pid for name, p in self.gateway.dev.children.started if name == "sidecar")

    def worker_pids(self) -> list[int]:
        pid = self.sidecar_pid
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        return [int(child) for child in children]

    def readyz(self) -> int:
        try:
            with urllib.request.urlopen(f"{self.gateway.admin_url}/readyz", timeout=5) as response:
                return int(response.status)
        except urllib.error.HTTPError as exc:
            return exc.code
        except (urllib.error.URLError, OSError):
            return 0


@pytest.fixture(scope="module")
def workers(tmp_path_factory: pytest.TempPathFactory, redis_server: RedisServer) -> Iterator[Workers]:
    base = tmp_path_factory.mktemp("workers")
    mock_port, failing_port = free_port(), free_port()
    fleet = Children(base / "fleet")
    start_mock(fleet, "mock-failing", failing_port, "--status", "503")
    resources = "".join(
        [
            FALLBACK_ROUTE.format(failing=failing_port, mock=mock_port),
            budget_yaml("wk-budget", ADMITTED * RESERVED_PER_CALL, "period: Total"),
            key_yaml("wk-burst", "budgetRefs: [wk-budget]"),
            key_yaml("wk-calls"),
        ]
    )
    folder = config_folder(base, mock_port, resources)
    jaeger = Jaeger.start(base / "jaeger")
    otel = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://{jaeger.otlp_grpc}",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
        "OTEL_SERVICE_NAME": "tollway-workers-test",
    }
    saved = {name: os.environ.get(name) for name in otel}
    os.environ.update(otel)  # the sidecar's workers read the standard OTEL_* variables at start-up
    try:
        gateway = start_gateway(base / "gw", folder, redis_server.url, mock_port=mock_port, workers=2)
    except BaseException:
        fleet.stop()
        jaeger.stop()
        raise
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    try:
        yield Workers(gateway, folder, {"failing": failing_port, "mock": mock_port}, jaeger)
    finally:
        gateway.dev.stop()
        fleet.stop()
        jaeger.stop()


def chat(workers: Workers, model: str, key: str = "wk-calls", **headers: str) -> Answer:
    body = json.dumps({"model": model, "messages": MESSAGES, "max_tokens": 10}).encode()
    return call(workers.gateway.origin, "POST", CHAT, body, {**bearer(key_value(key)), **headers})


def test_calls_on_one_backend_and_fallback_routes_all_succeed_on_both_workers(workers: Workers) -> None:
    before = {(role, w): workers.streams(role, w) for role in ("router", "upstream") for w in (0, 1)}
    requests_before = workers.requests_of("default/wk-calls")

    def both(_: int) -> tuple[Answer, Answer]:
        return chat(workers, "gpt-4o-mini"), chat(workers, "wk-fallback")

    with_threads: list[tuple[Answer, Answer]] = []
    threads = [threading.Thread(target=lambda i=i: with_threads.append(both(i))) for i in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(with_threads) == 20
    for direct, fallback in with_threads:
        assert direct.status == 200, direct.body
        assert fallback.status == 200, fallback.body
        assert fallback.headers["x-tollway-backend"] == "mock"
        assert fallback.headers["x-tollway-attempts"] == "2"
    grew = {k: workers.streams(*k) - v for k, v in before.items()}
    # Every call has one router stream, every fallback call two upstream streams (one per attempt),
    # each on the worker that admitted the call.
    assert grew[("router", 0)] + grew[("router", 1)] == 40
    assert grew[("upstream", 0)] + grew[("upstream", 1)] == 40
    assert all(grew[(role, w)] > 0 for role in ("router", "upstream") for w in (0, 1)), grew
    # One /metrics for the Pod: the calls of both workers, each counted once.
    assert workers.requests_of("default/wk-calls") - requests_before == 40


async def test_100_concurrent_calls_across_the_workers_against_a_budget_admitting_exactly_37(
    workers: Workers,
) -> None:
    router_before = [workers.streams("router", w) for w in (0, 1)]
    async with openai.AsyncOpenAI(
        base_url=workers.gateway.base_url, api_key=key_value("wk-burst"), max_retries=0, timeout=60
    ) as sdk:

        async def one() -> str:
            try:
                await sdk.chat.completions.create(
                    model="gpt-4o-mini",
                    messages=MESSAGES,  # type: ignore[arg-type]
                    max_tokens=10,
                    extra_headers={"x-mock-prompt-tokens": "9"},
                )
            except openai.RateLimitError as exc:
                return str(exc.code)
            return "ok"

        outcomes = await asyncio.gather(*(one() for _ in range(100)))
    assert outcomes.count("ok") == ADMITTED
    assert outcomes.count("budget_exceeded") == 100 - ADMITTED
    served = [workers.streams("router", w) - router_before[w] for w in (0, 1)]
    assert sum(served) == 100 and min(served) > 0, served
    budget = workers.gateway.spend()["budgets"]["default/wk-budget"]
    assert Decimal(budget["spent_usd"]) == ADMITTED * RESERVED_PER_CALL == Decimal(budget["limit_usd"])
    assert budget["reserved_usd"] == "0"
    assert workers.requests_of("default/wk-burst") == 100  # answered calls, 200s and 429s alike


def _spans(jaeger: Jaeger, trace_id: str, want: int, timeout: float = 15.0) -> list[dict[str, object]]:
    deadline = time.monotonic() + timeout
    spans: list[dict[str, object]] = []
    while time.monotonic() < deadline:
        try:
            spans = jaeger._get(f"/api/traces/{trace_id}")["data"][0]["spans"]
        except (OSError, KeyError, IndexError):
            spans = []
        if len(spans) >= want:
            return spans
        time.sleep(0.2)
    raise AssertionError(f"trace {trace_id}: {len(spans)} spans, wanted {want}")


def test_each_worker_exports_its_calls_spans(workers: Workers) -> None:
    before = [workers.streams("router", w) for w in (0, 1)]
    ids = [f"{i + 1:032x}" for i in range(8)]
    for trace_id in ids:
        answer = chat(workers, "wk-fallback", traceparent=f"00-{trace_id}-00f067aa0ba902b7-01")
        assert answer.status == 200, answer.body
    served = [workers.streams("router", w) - before[w] for w in (0, 1)]
    assert min(served) > 0, served  # both workers' exporters had calls to send
    for trace_id in ids:
        assert len(_spans(workers.jaeger, trace_id, 3)) == 3  # the call and its two attempts


def _live_config_versions(workers: Workers) -> set[str]:
    return {
        dict(labels)["version"]
        for (name, labels), value in workers.metrics().items()
        if name == "tollway_config_info" and value == 1.0
    }


def test_every_worker_follows_a_config_change(workers: Workers) -> None:
    before = _live_config_versions(workers)
    route = FALLBACK_ROUTE.replace("wk-fallback", "wk-added").format(**workers.ports)
    (workers.folder / "zz-added.yaml").write_text(route)
    workers.gateway.dev.compile()  # what the `tollway dev` loop does every half second
    # Each worker polls the config file on its own clock, so they may pick it up up to one poll apart.
    deadline = time.monotonic() + 15
    while (live := _live_config_versions(workers)) & before or len(live) != 1:
        assert time.monotonic() < deadline, f"the workers never all loaded the new config: {live}"
        time.sleep(0.1)
    while chat(workers, "wk-added").status != 200:
        assert time.monotonic() < deadline, "the new route was never served"
        time.sleep(0.1)
    upstream_before = [workers.streams("upstream", w) for w in (0, 1)]
    # Enough calls that both workers admit some, each having loaded the route and its cluster copies.
    answers = [chat(workers, "wk-added") for _ in range(16)]
    assert [a.status for a in answers] == [200] * 16, [a.body for a in answers if a.status != 200]
    assert all(a.headers["x-tollway-attempts"] == "2" for a in answers)
    grew = [workers.streams("upstream", w) - upstream_before[w] for w in (0, 1)]
    assert sum(grew) == 32 and min(grew) > 0, grew
    versions = {
        dict(labels)["version"]: value
        for (name, labels), value in workers.metrics().items()
        if name == "tollway_config_info"
    }
    assert list(versions.values()).count(1.0) == 1, versions  # both workers on the same version


def test_a_dead_worker_fails_readiness_until_it_is_restarted(workers: Workers) -> None:
    assert workers.readyz() == 200
    pids = workers.worker_pids()
    assert len(pids) == 2
    os.kill(pids[1], signal.SIGKILL)
    deadline = time.monotonic() + 20
    replaced = False
    while time.monotonic() < deadline:
        now = workers.worker_pids()
        if len(now) == 2 and set(now) != set(pids) and workers.readyz() == 200:
            replaced = True
            break
        time.sleep(0.1)
    assert replaced, f"worker not restarted: {workers.worker_pids()} (was {pids})"
    answers = [chat(workers, model) for model in ("gpt-4o-mini", "wk-fallback") * 4]
    assert [a.status for a in answers] == [200] * 8, [a.body for a in answers if a.status != 200]


def test_sigterm_to_the_parent_drains_every_worker(workers: Workers) -> None:
    pids = workers.worker_pids()
    answers: list[Answer] = []
    slow = [
        threading.Thread(target=lambda m=m: answers.append(chat(workers, m, **{"x-mock-latency-ms": "1500"})))
        for m in ("gpt-4o-mini", "wk-fallback") * 3
    ]
    for thread in slow:
        thread.start()
    time.sleep(0.5)  # the calls are under way, on both workers
    parent = next(p for name, p in workers.gateway.dev.children.started if name == "sidecar")
    os.kill(parent.pid, signal.SIGTERM)
    for thread in slow:
        thread.join()
    assert [a.status for a in answers] == [200] * 6, [a.body for a in answers]
    assert parent.wait(timeout=15) == 0
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()
