"""PNG charts (matplotlib, from the `bench` extra): latency distributions and throughput curves."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from bench.report import LABELS, systems_of

COLORS = {
    "direct": "#7f7f7f",
    "envoy": "#1f77b4",
    "floor": "#9467bd",
    "tollway": "#2ca02c",
    "tollway-cluster": "#98df8a",
    "tollway-cache-hit": "#17becf",
    "tollway-cache-hit-memory": "#bcbd22",
    "tollway-cache-miss": "#8c564b",
    "litellm": "#d62728",
}


def draw(results: dict[str, Any], out_dir: Path) -> list[Path]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    systems = systems_of(results)

    def cdf(ax: Any, values: list[float], system: str) -> None:
        finite = sorted(v for v in values if math.isfinite(v))
        if not finite:
            return
        ys = [(i + 1) / len(finite) for i in range(len(finite))]
        ax.plot(finite, ys, label=LABELS[system], color=COLORS[system], linewidth=1.4)

    # 1. Latency distributions at concurrency 1.
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, scenario, title in ((axes[0], "fast", "0 ms upstream"), (axes[1], "slow", "50 ms upstream")):
        for s in systems:
            cdf(ax, results["c1"][scenario][s].get("latencies_ms", []), s)
        ax.set_xscale("log")
        ax.set_xlabel("latency (ms, log)")
        ax.set_ylabel("fraction of requests")
        ax.set_title(f"Concurrency 1, {title}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    written.append(_save(fig, out_dir / "latency-c1.png"))

    # 2. Throughput curves.
    scenarios = [sc for sc in ("fast", "slow") if sc in results.get("rates", {})]
    if scenarios:
        fig, axes = plt.subplots(1, len(scenarios), figsize=(5.5 * len(scenarios), 4), squeeze=False)
        for ax, scenario in zip(axes[0], scenarios, strict=True):
            offset = results["config"]["scenarios"][scenario]["latency_ms"]
            for s in systems:
                steps = results["rates"][scenario].get(s, {}).get("steps", [])
                rates = [st["rate"] for st in steps]
                p99 = [max(0.01, st["latency_ms"]["p99"] - offset) for st in steps]
                p50 = [max(0.01, st["latency_ms"]["p50"] - offset) for st in steps]
                ax.plot(rates, p99, "o-", color=COLORS[s], label=f"{LABELS[s]} p99", markersize=3)
                ax.plot(rates, p50, "x--", color=COLORS[s], alpha=0.6, label=f"{LABELS[s]} p50", markersize=3)
            for limit in (50, 1000):
                ax.axhline(limit, color="black", linewidth=0.8, linestyle=":")
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_ylim(top=5000)
            ax.set_xlabel("offered rate (requests/s, log)")
            ax.set_ylabel("latency over the upstream's delay (ms, log)")
            ax.set_title(f"Open loop, {offset:g} ms upstream")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=7, ncol=2)
        written.append(_save(fig, out_dir / "throughput.png"))

    # 3. Streaming: time to first token and gaps between chunks.
    if "stream" in results.get("c1", {}):
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        for s in systems:
            cdf(axes[0], results["c1"]["stream"][s].get("ttfts_ms", []), s)
            cdf(axes[1], results["c1"]["stream"][s].get("gaps_ms", []), s)
        axes[0].set_xscale("log")
        for ax, title in (
            (axes[0], "time to first token (ms, log)"),
            (axes[1], "gap between content chunks (ms)"),
        ):
            ax.set_xlabel(title)
            ax.set_ylabel("fraction")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend()
        axes[0].set_title("Streaming, concurrency 1: TTFT")
        axes[1].set_title("Streaming, concurrency 1: inter-chunk gaps")
        written.append(_save(fig, out_dir / "streaming.png"))

    # 4. CPU per request, stacked by process.
    if results.get("reference"):
        fig, ax = plt.subplots(figsize=(7, 4))
        names = [s for s in systems if s in results["reference"]]
        bottoms = [0.0] * len(names)
        procs: list[str] = []
        for s in names:
            for p in results["reference"][s]["cpu_us_per_request"]:
                if p not in procs:
                    procs.append(p)
        cmap = plt.get_cmap("tab10")
        for i, p in enumerate(procs):
            values = [
                results["reference"][s]["cpu_us_per_request"].get(p, {}).get("stat", 0.0) for s in names
            ]
            ax.bar([LABELS[s] for s in names], values, bottom=bottoms, label=p, color=cmap(i % 10))
            bottoms = [b + v for b, v in zip(bottoms, values, strict=True)]
        ax.set_ylabel("CPU µs per request")
        ax.set_title("CPU per request (0 ms upstream, at half of each system's capacity)")
        ax.legend(fontsize=8)
        ax.grid(True, axis="y", alpha=0.3)
        written.append(_save(fig, out_dir / "cpu.png"))
    return written


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path
