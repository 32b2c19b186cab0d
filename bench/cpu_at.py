"""CPU per call of several systems at the same offered rate (the benchmark's CPU table measures each
at half its own capacity, which flatters the faster ones).

    .venv/bin/python -m bench.cpu_at [--rate 300] [--seconds 4] [--systems floor,tollway]

Starts the systems as `make bench` does (mock upstreams, and for Tollway Redis and an OTLP
receiver), sends the `fast` scenario's request open loop at `--rate` to each in turn, and prints
p50/p99 and CPU microseconds per call of every process involved (`/proc` utime+stime).
"""

from __future__ import annotations

import argparse
import asyncio

from bench import load
from bench.procs import CpuMeter
from bench.run import Config, Stack, start_stack
from bench.systems import request_body


async def _measure(stack: Stack, config: Config, rate: float, seconds: float) -> None:
    scenario = stack.scenarios["fast"]
    body = request_body(scenario, config.prompt_bytes)
    for name in config.systems:
        meter = CpuMeter(stack.procs_for(name, "fast"))
        cpu: dict[str, dict[str, float]] = {}

        def stop(meter: CpuMeter = meter, cpu: dict[str, dict[str, float]] = cpu) -> None:
            cpu.update(meter.stop())

        step = await load.open_loop(
            stack.systems[name].endpoint(scenario, body),
            rate,
            seconds,
            0.5,
            on_measure_start=meter.start,
            on_measure_end=stop,
        )
        served = max(1, step.ok + step.errors)
        per_call = ", ".join(f"{proc} {v['stat_s'] / served * 1e6:.0f}" for proc, v in cpu.items())
        print(
            f"{name:<8} {rate:.0f}/s  p50 {step.latency['p50']:.2f} ms  p99 {step.latency['p99']:.2f} ms"
            f"  errors {step.errors + step.timeouts}  CPU µs/call: {per_call}",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rate", type=float, default=300.0)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--systems", default="floor,tollway")
    args = parser.parse_args()
    config = Config(systems=tuple(args.systems.split(",")), quiet=True)
    stack = start_stack(config)
    try:
        asyncio.run(_measure(stack, config, args.rate, args.seconds))
    finally:
        stack.stop()


if __name__ == "__main__":
    main()
