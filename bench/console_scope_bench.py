"""The console's access scoping on a big ledger: the namespace list access is decided over, and the
request list and a session read with `namespace IN (…)` for a user who may see some namespaces.

    python -m bench.console_scope_bench --rows 1000000

Direct reader calls (no HTTP), p50/p95 in ms, on a private PostgreSQL filled like
bench/console_bench.py (5 namespaces). Never part of `make test`.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from bench.console_bench import fill
from tollway_meter.console import reads
from tollway_meter.console.filters import RequestFilter
from tollway_meter.ledger import Ledger


def timed(call: Callable[[], object], n: int) -> tuple[float, float]:
    took = []
    for _ in range(n):
        began = time.perf_counter()
        call()
        took.append((time.perf_counter() - began) * 1000)
    took.sort()
    return statistics.median(took), took[max(0, int(len(took) * 0.95) - 1)]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--requests", type=int, default=50)
    options = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "ledger"))
    from pgserver import PostgresServer

    server = PostgresServer()
    server.start()
    try:
        ledger = Ledger.open(server.new_database())
        ledger.migrate()
        print(f"generated {options.rows:,} rows in {fill(ledger, options.rows):.0f} s")
        with ledger.transaction() as cur:
            cur.execute("ANALYZE usage_hourly")
        month = {"since": "2026-11-01T00:00:00+00:00", "until": "2026-12-01T00:00:00+00:00"}
        chosen = RequestFilter.parse(month, datetime(2026, 11, 29, tzinfo=UTC))
        cases: list[tuple[str, Callable[[], object]]] = [
            ("namespace list (every 30 s)", lambda: reads.namespaces(ledger)),
            ("list, every namespace (--auth none)", lambda: reads.list_requests(ledger, chosen, None)),
            (
                "list, 2 of 5 namespaces",
                lambda: reads.list_requests(ledger, chosen, frozenset({"ns-1", "ns-3"})),
            ),
            ("list, 1 of 5 namespaces", lambda: reads.list_requests(ledger, chosen, frozenset({"ns-2"}))),
            (
                "list, a namespace with no rows",
                lambda: reads.list_requests(ledger, chosen, frozenset({"none"})),
            ),
            (
                "session s-25000, 2 of 5 namespaces",
                lambda: reads.session_calls(ledger, "s-25000", frozenset({"ns-1", "ns-3"})),
            ),
        ]
        print("| read | p50 ms | p95 ms |\n|---|---:|---:|")
        for name, call in cases:
            p50, p95 = timed(call, options.requests)
            print(f"| {name} | {p50:.1f} | {p95:.1f} |")
        ledger.close()
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
