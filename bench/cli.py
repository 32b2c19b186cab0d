"""`python -m bench`: run the side-by-side benchmark (what `make bench` calls)."""

from __future__ import annotations

import argparse
import json
import math
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.run import SYSTEMS, Config, run
from bench.systems import ROOT

DEFAULT_REPORT = ROOT / "bench" / "REPORT.md"
DEFAULT_CHARTS = ROOT / "bench" / "charts"
ANALYSIS = ROOT / "bench" / "ANALYSIS.md"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="a few seconds: bare Envoy, floor, Tollway; tiny steps, no LiteLLM, no profile (make test)",
    )
    parser.add_argument(
        "--systems",
        default=None,
        help=f"comma-separated subset of {','.join(SYSTEMS)} (default: all; --smoke: envoy, floor, "
        "tollway and its cache hit and miss)",
    )
    parser.add_argument(
        "--redis",
        default=None,
        help="auto (start a local redis-server, and a local Redis Cluster for tollway-cluster, when the "
        "sidecar supports Redis), off, a redis:// URL, or a redis+cluster:// URL (for tollway-cluster only)",
    )
    parser.add_argument(
        "--otlp",
        default=None,
        choices=("auto", "off"),
        help="export Tollway's spans to a local OTLP receiver",
    )
    parser.add_argument("--litellm-workers", type=int, default=1, help="LiteLLM uvicorn workers (default 1)")
    parser.add_argument("--profile-seconds", type=float, default=None, help="py-spy the sidecar (0: off)")
    parser.add_argument("--results-dir", type=Path, default=None, help="raw JSON (default bench/results)")
    parser.add_argument("--report", type=Path, default=None, help="Markdown report (default bench/REPORT.md)")
    parser.add_argument("--charts-dir", type=Path, default=None, help="PNG charts (default bench/charts)")
    parser.add_argument("--no-charts", action="store_true")
    parser.add_argument(
        "--cache-section-only",
        action="store_true",
        help="write only the report's Cache section (for a run of a subset of the systems; the rest "
        "of the report stays the last full run's)",
    )
    parser.add_argument("--keep-state", action="store_true", help="keep the temp folder with every log")
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument("--check-targets", action="store_true", help="exit 3 when a target is missed")
    parser.add_argument(
        "--from-results",
        type=Path,
        default=None,
        help="measure nothing: re-render the table, charts and report from a results JSON",
    )
    return parser.parse_args(argv)


def build_config(args: argparse.Namespace) -> Config:
    config = Config.smoke() if args.smoke else Config()
    if args.systems:
        wanted = tuple(s.strip() for s in args.systems.split(",") if s.strip())
        unknown = set(wanted) - set(SYSTEMS)
        if unknown:
            raise SystemExit(f"unknown system(s): {', '.join(sorted(unknown))}")
        config.systems = tuple(s for s in SYSTEMS if s in wanted)
    if args.redis is not None:
        config.redis = args.redis
    if args.otlp is not None:
        config.otlp = args.otlp
    if args.profile_seconds is not None:
        config.profile_seconds = args.profile_seconds
    config.litellm_workers = args.litellm_workers
    if args.results_dir is not None:
        config.results_dir = args.results_dir
    config.keep_state = args.keep_state
    config.quiet = args.quiet
    return config


def main(argv: list[str] | None = None) -> int:
    from bench.report import print_tables, splice_cache_section, targets, write_report

    args = parse_args(argv)
    config = build_config(args)
    if args.from_results is not None:
        raw = args.from_results
        results = _from_json(json.loads(raw.read_text()))
        profile = results.get("profile") or {}
        raw_profile = ROOT / str(profile.get("raw_file", ""))
        if profile.get("raw_file") and raw_profile.is_file():
            from bench.profiling import summarize_raw

            profile.update(summarize_raw(raw_profile.read_text()))
    else:
        results = run(config)
        config.results_dir.mkdir(parents=True, exist_ok=True)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        raw = config.results_dir / f"{'smoke' if args.smoke else 'bench'}-{stamp}.json"
        raw.write_text(json.dumps(_jsonable(results), indent=1))
        latest = config.results_dir / ("smoke-latest.json" if args.smoke else "latest.json")
        latest.write_text(raw.read_text())
    charts: list[Path] = []
    if not args.no_charts:
        from bench.charts import draw

        charts = draw(results, args.charts_dir or DEFAULT_CHARTS)
    report = args.report or (None if args.smoke else DEFAULT_REPORT)
    if report is not None and args.cache_section_only:
        splice_cache_section(results, report)
    elif report is not None:
        write_report(results, report, charts, ANALYSIS)
    print(print_tables(results))
    print(f"raw results: {raw}")
    if report is not None:
        print(f"report: {report}")
    for chart in charts:
        print(f"chart: {chart}")
    missed = [t for t in targets(results) if t["met"] is False]
    if args.check_targets and missed:
        return 3
    return 0


def _from_json(value: Any) -> Any:
    """The inverse of `_jsonable`."""
    if value in ("inf", "-inf", "nan"):
        return float(value)
    if isinstance(value, dict):
        return {k: _from_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_from_json(v) for v in value]
    return value


def _jsonable(value: Any) -> Any:
    """JSON has no inf/nan: write them as strings."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


if __name__ == "__main__":
    sys.exit(main())
