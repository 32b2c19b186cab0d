"""What a route's shape costs: one backend against two (a route that can fall back), same gateway.

    .venv/bin/python -m bench.route_shapes [--rounds 600] [--rate 200] [--seconds 4]

`make bench` measures Tollway on one-backend routes: the router filter rewrites such a call
itself, 4 ext_proc messages per call. A route with several backends also runs the upstream filter
on every attempt: one more gRPC stream and 2 more messages per call when the first backend answers
(request headers, and response headers to decide on a fallback; 3 when the model is renamed).
This starts Tollway as `make bench` does (Redis quotas, spans to an OTLP receiver), adds a route
with two backends on the same mock upstream, and measures both routes on the same gateway:
concurrency 1 interleaved (p50/p99), then CPU per call at `--rate` for each.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

from bench import load
from bench.http import Endpoint
from bench.procs import CpuMeter
from bench.run import Config, Stack, start_stack
from bench.systems import CHAT_PATH, request_body

TWO_BACKENDS = "bench-two-backends"


def _two_backend_route(mock_port: int, backend_model: str) -> str:
    backends = [
        {"name": name, "provider": "openai-compatible", "model": backend_model,
         "baseURL": f"http://127.0.0.1:{mock_port}/v1"}
        for name in ("first", "second")
    ]  # fmt: skip
    rule = {
        "apiVersion": "tollway.dev/v1alpha1",
        "kind": "RouteRule",
        "metadata": {"name": TWO_BACKENDS},
        "spec": {"model": TWO_BACKENDS, "backends": backends},
    }
    return json.dumps(rule, indent=2) + "\n"


async def _wait_until_served(endpoint: Endpoint, seconds: float = 30.0) -> None:
    """`tollway dev` picks up the new RouteRule within a couple of seconds."""
    deadline = time.monotonic() + seconds
    while True:
        step = await load.interleaved({"probe": endpoint}, rounds=1, warmup=0)
        if step.errors["probe"] == 0:
            return
        if time.monotonic() > deadline:
            raise SystemExit(f"the route {TWO_BACKENDS} was not served within {seconds:.0f} s")
        await asyncio.sleep(0.5)


async def _measure(stack: Stack, config: Config, rounds: int, rate: float, seconds: float) -> None:
    scenario = stack.scenarios["fast"]
    tollway = stack.systems["tollway"]
    port, model = tollway.ports["fast"]
    headers = {"Authorization": f"Bearer {tollway.auth}"}
    one_body = request_body(scenario, config.prompt_bytes)
    two_body = one_body.replace(json.dumps(model).encode(), json.dumps(TWO_BACKENDS).encode(), 1)
    endpoints = {
        "one backend": Endpoint.build("127.0.0.1", port, CHAT_PATH, one_body, headers),
        "two backends": Endpoint.build("127.0.0.1", port, CHAT_PATH, two_body, headers),
    }
    await _wait_until_served(endpoints["two backends"])
    result = await load.interleaved(endpoints, rounds=rounds, warmup=50)
    print(f"concurrency 1, {rounds} interleaved calls each (0 ms upstream):")
    for name in endpoints:
        stats = load.summary(result.latency_ms[name])
        latency = f"p50 {stats['p50']:6.2f} ms  p99 {stats['p99']:6.2f} ms"
        print(f"  {name:<13} {latency}  errors {result.errors[name]}")
    print(f"CPU per call at {rate:.0f}/s for {seconds:g} s:")
    for name, endpoint in endpoints.items():
        meter = CpuMeter(stack.procs_for("tollway", "fast"))
        cpu: dict[str, dict[str, float]] = {}

        def stop(meter: CpuMeter = meter, cpu: dict[str, dict[str, float]] = cpu) -> None:
            cpu.update(meter.stop())

        step = await load.open_loop(
            endpoint, rate, seconds, 0.5, on_measure_start=meter.start, on_measure_end=stop
        )
        served = max(1, step.ok + step.errors)
        per_call = ", ".join(f"{proc} {v['stat_s'] / served * 1e6:.0f}" for proc, v in cpu.items())
        latency = f"p50 {step.latency['p50']:6.2f} ms  p99 {step.latency['p99']:6.2f} ms"
        print(f"  {name:<13} {latency}  errors {step.errors + step.timeouts}  µs/call: {per_call}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=600)
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--seconds", type=float, default=4.0)
    args = parser.parse_args()
    config = Config(systems=("tollway",), quiet=True)
    stack = start_stack(config)
    try:
        mock_port, _proc = stack.mocks["fast"]
        folder = stack.state_dir / "tollway-config"
        (folder / "two-backends.yaml").write_text(
            _two_backend_route(mock_port, stack.scenarios["fast"].model)
        )
        assert stack.tollway is not None
        compiled = stack.tollway.compile()  # what `tollway dev` does every 0.5 s
        if not compiled.ok:
            raise SystemExit(f"the extra RouteRule does not compile: {compiled.errors}")
        asyncio.run(_measure(stack, config, args.rounds, args.rate, args.seconds))
    finally:
        stack.stop()


if __name__ == "__main__":
    main()
