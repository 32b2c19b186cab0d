"""Quota latency: reserve and settle as the sidecar sees them, and a call with limits on versus off.

    .venv/bin/python -m bench.quota_bench [--ops 5000] [--calls 400]

Starts its own redis-server (scripts/tools/redis.sh) on a free loopback port, then:

1. In process, exactly what the sidecar does per call, against that Redis:
   `QuotaGate.admit` (estimate + plan + the reserve script: one round trip) and `QuotaGate.settle`
   (the settle script: one round trip), with and without the call's usage event (built from its
   facts and appended by the same script: `extproc/usage_record.py`), for a key with
   requests/tokens per minute, tokens per day and two budgets (one perUser). Sequential (latency
   of one call) and 32 at a time (a busy sidecar).
   `store.reserve` alone is timed too, to separate the round trip from estimating and planning;
   and `admit` with the call's expiry event (built at reserve time from the request's state and
   kept with the reservation: `usage_record.expiry_event_json`) against `admit` without it.
2. End to end through `tollway dev` (Envoy + sidecar + mock provider, one at a time, keep-alive):
   the same gateway with Redis, a key with limits and budgets versus a key with none (which still
   makes one round trip to count its spend), and a gateway on the in-memory store.

Prints a table of median and p99 (microseconds in process, milliseconds end to end). Loopback,
2 shared cores: absolute numbers are this machine's; compare rows, not machines.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import functools
import http.client
import json
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

from tollway.dev import DevGateway, DevOptions, free_port
from tollway_sidecar.config.models import Backend, Budget, GatewayConfig, Limits, Pricing, Route, VirtualKey
from tollway_sidecar.contract.usage_event import Attempt, uuid7
from tollway_sidecar.extproc.expiry_record import expiry_event_json
from tollway_sidecar.extproc.state import RequestState
from tollway_sidecar.extproc.usage_record import CallFacts, event_json
from tollway_sidecar.pricing import PriceBook
from tollway_sidecar.quota.gate import Admission, QuotaGate
from tollway_sidecar.quota.plan import Charge
from tollway_sidecar.quota.redis_store import RedisStore
from tollway_sidecar.quota.tokens import warm

ROOT = Path(__file__).resolve().parents[1]
BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say hello to the gateway"}]}


def percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered), ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def start_redis(workdir: Path) -> tuple[subprocess.Popen[bytes], int]:
    binary = subprocess.run(
        ["bash", str(ROOT / "scripts" / "tools" / "redis.sh")], capture_output=True, text=True, check=True
    ).stdout.strip()
    port = free_port()
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        cwd=workdir,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    for _ in range(200):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return process, port
        except OSError:
            time.sleep(0.02)
    raise RuntimeError("redis-server did not start")


# -- 1. in process -----------------------------------------------------------------------------------


def bench_objects() -> tuple[VirtualKey, dict[str, Budget], Route, PriceBook]:
    backend = Backend(
        name="mock",
        provider="openai-compatible",
        model="gpt-4o-mini",
        base_url="http://127.0.0.1:9",
        pricing=Pricing(input_per_million=Decimal("0.15"), output_per_million=Decimal("0.6")),
    )
    route = Route(id="bench", name="bench", namespace="bench", model="gpt-4o-mini", backends=(backend,))
    budgets = {
        "bench/monthly": Budget(name="monthly", namespace="bench", limit_usd=Decimal("1000000")),
        "bench/per-user": Budget(
            name="per-user", namespace="bench", limit_usd=Decimal("1000000"), per_user=True, period="Daily"
        ),
    }
    key = VirtualKey(
        name="bench",
        namespace="bench",
        key_sha256="0" * 64,
        limits=Limits(requests_per_minute=10**9, tokens_per_minute=10**12, tokens_per_day=10**13),
        budgets=tuple(budgets),
    )
    return key, budgets, route, PriceBook(GatewayConfig(routes=(route,)))


def sample_facts(key: VirtualKey) -> CallFacts:
    """A typical call's event facts: a session, two properties, one fallback, a budget."""
    return CallFacts(
        id=uuid7(),
        source="tollway-7d9f8-abcde",
        at=datetime.now(UTC),
        namespace=key.namespace,
        key_name=key.name,
        model="gpt-4o-mini",
        status=200,
        outcome="ok",
        team="search",
        end_user="user-1",
        session_id="c1a2b3",
        properties={"env": "prod", "feature": "summaries"},
        route="default-gpt-4o-mini",
        attempts=(
            Attempt("primary", "openai", "gpt-4o-mini", 503),
            Attempt("spare", "openai", "gpt-4o-mini", 200),
        ),
        budgets=("bench/monthly", "bench/per-user"),
        latency_ms=412,
        ttft_ms=120,
        request_id=str(uuid.uuid4()),
        trace_id="4bf92f3577b34da6a3ce929d0e0e4736",
    )


def sample_state(key: VirtualKey, route: Route) -> RequestState:
    """What the router's state holds when it admits a typical call: the facts its expiry event reads."""
    state = RequestState(request_id=uuid.uuid4().hex, started=time.monotonic())
    state.key, state.route, state.client_model, state.end_user = key, route, "gpt-4o-mini", "user-1"
    state.session = "c1a2b3"
    state.properties = {"env": "prod", "feature": "summaries"}
    state.envoy_request_id = str(uuid.uuid4())
    return state


async def in_process(url: str, ops: int) -> list[tuple[str, float, float]]:
    key, budgets, route, prices = bench_objects()
    store = RedisStore(url, timeout_s=0.2)
    gate = QuotaGate(store, default_max_tokens=256)
    state = sample_state(key, route)

    async def admit(expiry: bool = False) -> Admission:
        result = await gate.admit(
            key=key,
            budgets=budgets,
            route=route,
            prices=prices,
            operation="chat",
            body=BODY,
            user="user-1",
            rid=uuid.uuid4().hex,
            # As the router passes it: the state's facts, read when the gate builds the event.
            expiry_event=functools.partial(expiry_event_json, state, source="tollway-7d9f8-abcde")
            if expiry
            else None,
        )
        assert isinstance(result, Admission), result
        return result

    async def timed(make: Callable[[], Awaitable[object]]) -> float:
        started = time.perf_counter()
        await make()
        return (time.perf_counter() - started) * 1e6

    facts = sample_facts(key)

    def event(charge: Charge) -> str:
        return event_json(dataclasses.replace(facts, id=uuid7()), charge)

    prebuilt = event(Charge(10, 10, 9_000))

    def ready(_charge: Charge) -> str:
        return prebuilt  # the append alone: what the outbox costs Redis

    rows: list[tuple[str, float, float]] = []
    for _ in range(200):  # warm up: connections, script cache
        await gate.settle(await admit(), Charge(10, 10, 9_000))
    for concurrency in (1, 32):
        reserve_us: list[float] = []
        expiry_us: list[float] = []
        settle_us: list[float] = []
        outbox_us: list[float] = []
        append_us: list[float] = []
        raw_us: list[float] = []

        async def worker(
            count: int,
            reserve_us: list[float],
            expiry_us: list[float],
            settle_us: list[float],
            raw_us: list[float],
            outbox_us: list[float],
            append_us: list[float],
        ) -> None:
            for i in range(count):
                with_expiry = i % 2 == 1  # alternate, so both see the same load
                started = time.perf_counter()
                admission = await admit(with_expiry)
                (expiry_us if with_expiry else reserve_us).append((time.perf_counter() - started) * 1e6)
                if i % 3 == 2:  # rotate, so the settles see the same load and the same Redis
                    append_us.append(
                        await timed(lambda a=admission: gate.settle(a, Charge(10, 10, 9_000), ready))  # type: ignore[misc]
                    )
                elif i % 3 == 1:
                    outbox_us.append(
                        await timed(lambda a=admission: gate.settle(a, Charge(10, 10, 9_000), event))  # type: ignore[misc]
                    )
                else:
                    settle_us.append(await timed(lambda a=admission: gate.settle(a, Charge(10, 10, 9_000))))  # type: ignore[misc]
                fresh = dataclasses.replace(admission.plan, rid=uuid.uuid4().hex)
                raw_us.append(await timed(lambda p=fresh: store.reserve(p)))  # type: ignore[misc]

        await asyncio.gather(
            *(
                worker(ops // concurrency, reserve_us, expiry_us, settle_us, raw_us, outbox_us, append_us)
                for _ in range(concurrency)
            )
        )
        label = "sequential" if concurrency == 1 else f"{concurrency} concurrent"
        rows.append((f"admit: estimate + plan + reserve ({label})", *percentiles(reserve_us)))
        rows.append((f"admit + expiry event built and kept ({label})", *percentiles(expiry_us)))
        rows.append((f"reserve script alone ({label})", *percentiles(raw_us)))
        rows.append((f"settle ({label})", *percentiles(settle_us)))
        rows.append((f"settle + usage event built and appended ({label})", *percentiles(outbox_us)))
        rows.append((f"settle + a prebuilt event appended ({label})", *percentiles(append_us)))
    plan = (await admit()).plan
    build_us = []
    for _ in range(ops):
        started = time.perf_counter()
        expiry_event_json(state, plan, uuid7(), source="tollway-7d9f8-abcde")
        build_us.append((time.perf_counter() - started) * 1e6)
    rows.append(("expiry event alone: built + serialised", *percentiles(build_us)))
    await gate.close()
    return rows


# -- 2. end to end -----------------------------------------------------------------------------------

RESOURCES = """\
apiVersion: v1
kind: Secret
metadata: {name: bench-keys}
stringData:
  limited: tw-bench-limited-0123456789abcdef0123
  plain: tw-bench-plain-0123456789abcdef012345
---
apiVersion: tollway.dev/v1alpha1
kind: Budget
metadata: {name: bench-budget}
spec: {limit: "1000000", period: Monthly}
---
apiVersion: tollway.dev/v1alpha1
kind: VirtualKey
metadata: {name: limited}
spec:
  secretRef: {name: bench-keys, key: limited}
  limits: {requestsPerMinute: 1000000000, tokensPerMinute: 1000000000000, tokensPerDay: 1000000000000}
  perUserLimits: {requestsPerMinute: 1000000000}
  budgetRefs: [bench-budget]
---
apiVersion: tollway.dev/v1alpha1
kind: VirtualKey
metadata: {name: plain}
spec:
  secretRef: {name: bench-keys, key: plain}
"""


KEYS = {"limited": "tw-bench-limited-0123456789abcdef0123", "plain": "tw-bench-plain-0123456789abcdef012345"}


def end_to_end(
    base: Path, redis_url: str | None, keys: list[str], calls: int
) -> dict[str, tuple[float, float]]:
    config = base / "config"
    shutil.copytree(ROOT / "examples" / "local", config)
    mock_port = free_port()
    for path in config.glob("*.yaml"):
        path.write_text(path.read_text().replace("127.0.0.1:9000", f"127.0.0.1:{mock_port}"))
    (config / "zz-bench.yaml").write_text(RESOURCES)
    dev = DevGateway(
        DevOptions(
            config_dir=config,
            port=free_port(),
            admin_port=free_port(),
            mock_port=mock_port,
            redis_url=redis_url,
            state_dir=base / "state",
            quiet=True,
            log_level="WARNING",
        )
    )
    dev.start()
    out: dict[str, tuple[float, float]] = {}
    try:
        body = json.dumps({**BODY, "max_tokens": 16, "user": "user-1"}).encode()
        for name in keys:
            value = KEYS[name]
            connection = http.client.HTTPConnection("127.0.0.1", dev.options.port, timeout=10)
            headers = {"authorization": f"Bearer {value}", "content-type": "application/json"}
            samples: list[float] = []
            for i in range(calls + 50):
                started = time.perf_counter()
                connection.request("POST", "/v1/chat/completions", body=body, headers=headers)
                response = connection.getresponse()
                response.read()
                if response.status != 200:
                    raise RuntimeError(f"{name}: HTTP {response.status}")
                if i >= 50:  # warm-up
                    samples.append((time.perf_counter() - started) * 1e3)
            connection.close()
            out[name] = percentiles(samples)
    finally:
        dev.stop()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ops", type=int, default=4800, help="reserve+settle pairs per in-process row")
    parser.add_argument("--calls", type=int, default=400, help="calls per end-to-end row")
    args = parser.parse_args()
    warm()
    workdir = Path(tempfile.mkdtemp(prefix="tollway-quota-bench-"))
    redis, port = start_redis(workdir)
    url = f"redis://127.0.0.1:{port}/0"
    try:
        rows = asyncio.run(in_process(url, args.ops))
        with_redis = end_to_end(workdir / "redis-gw", url, ["limited", "plain"], args.calls)
        in_memory = end_to_end(workdir / "memory-gw", None, ["limited"], args.calls)
    finally:
        redis.terminate()
        redis.wait()
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"\nQuota store latency as the sidecar sees it (Redis on loopback, {args.ops} ops per row)\n")
    print(f"{'operation':<55} {'p50 µs':>9} {'p99 µs':>9}")
    for name, p50, p99 in rows:
        print(f"{name:<55} {p50:>9.0f} {p99:>9.0f}")
    print(f"\nEnd to end through Envoy + sidecar + mock provider ({args.calls} sequential calls per row)\n")
    print(f"{'gateway / key':<55} {'p50 ms':>9} {'p99 ms':>9}")
    for label, (p50, p99) in [
        ("Redis store, key with limits + budget (limits on)", with_redis["limited"]),
        ("Redis store, key without limits or budgets", with_redis["plain"]),
        ("in-memory store, key with limits + budget", in_memory["limited"]),
    ]:
        print(f"{label:<55} {p50:>9.2f} {p99:>9.2f}")


if __name__ == "__main__":
    main()
