"""The console on a big ledger: generate synthetic usage rows (real v1 events through
`Ledger.ingest`) on PostgreSQL, then time the request list (with each kind of filter and a deep
page) and a session tree over HTTP, p50/p95 over N requests.

    python -m bench.console_bench --rows 1000000 --requests 100            # a private PostgreSQL
    python -m bench.console_bench --db postgresql://... --rows 0           # time an existing ledger

Never part of `make test`. Needs PostgreSQL (scripts/tools/postgres.sh) unless --db is given.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from aiohttp import ClientSession, web
from aiohttp.test_utils import TestServer

from tollway_meter.console import mount
from tollway_meter.ledger import Ledger
from tollway_sidecar.contract.usage_event import Attempt, Tokens, UsageData, UsageEvent, uuid7

START = datetime(2026, 11, 1, tzinfo=UTC)
DAYS = 28
WINDOW = "since=2026-11-01T00:00:00Z&until=2026-12-01T00:00:00Z"
TEAMS = [f"team-{i}" for i in range(20)]
MODELS = ["gpt-4o-mini", "gpt-4o", "claude-sonnet", "claude-haiku", "gemini-flash", "llama-70b"]
PROVIDERS = ["openai", "anthropic", "google"]
PATHS = ["/", "/plan", "/plan/search", "/answer", "/answer/check"]


def synthetic(i: int, total: int) -> UsageEvent:
    """Row i of `total`: spread evenly over DAYS, 50k-ish sessions of ~20 calls, two properties."""
    at = START + timedelta(seconds=i * DAYS * 86400 // max(total, 1))
    model = MODELS[i % len(MODELS)]
    failed = i % 97 == 0
    return UsageEvent(
        id=uuid7(),
        source="bench",
        time=at,
        subject=f"ns-{i % 5}/key-{i % 200}",
        data=UsageData(
            namespace=f"ns-{i % 5}",
            key_name=f"key-{i % 200}",
            route="chat",
            model=model,
            status=502 if failed else 200,
            outcome="error" if failed else "ok",
            cost=f"0.{(i * 7919) % 10**6:06d}",
            billable=not failed,
            team=TEAMS[i % len(TEAMS)],
            user=f"user-{i % 300}@example.com",
            end_user=f"end-{i % 5000}",
            session_id=f"s-{i // 20}",
            session_path=PATHS[i % len(PATHS)],
            properties={"feature": f"f{i % 8}", "tier": ("free", "pro", "team")[i % 3]},
            attempts=(Attempt("b", PROVIDERS[i % 3], model, 502 if failed else 200),),
            tokens=Tokens(input=100 + i % 900, output=20 + i % 300),
            budgets=(f"ns-{i % 5}/monthly",),
            latency_ms=100 + i % 2000,
            ttft_ms=40 + i % 400,
            trace_id=f"{i:032x}",
        ),
    )


def fill(ledger: Ledger, rows: int, batch: int = 5000) -> float:
    began = time.perf_counter()
    for start in range(0, rows, batch):
        ledger.ingest([synthetic(i, rows) for i in range(start, min(start + batch, rows))])
        if (start // batch) % 20 == 0:
            print(f"  {start + batch:>9,} rows, {time.perf_counter() - began:6.1f} s", file=sys.stderr)
    with ledger.transaction() as cur:
        cur.execute("ANALYZE usage_events")
    return time.perf_counter() - began


async def timings(ledger: Ledger, requests: int, session: str) -> list[tuple[str, float, float, int, int]]:
    app = web.Application()
    mount(app, ledger)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    base = f"http://127.0.0.1:{server.port}/console"
    results = []
    async with ClientSession() as client:
        first = await (await client.get(f"{base}/requests?{WINDOW}&limit=500")).text()
        marker = 'href="/console/requests?'
        deep = first[first.index(marker) + len('href="') : first.index('"', first.index(marker) + 6)]
        cases = [
            ("list, first page", f"{base}/requests?{WINDOW}"),
            (
                "list, after 500 rows (cursor)",
                f"http://127.0.0.1:{server.port}"
                + deep.replace("&amp;", "&").replace("limit=500", "limit=50"),
            ),
            ("list, team=team-7", f"{base}/requests?{WINDOW}&team=team-7"),
            ("list, model=claude-haiku", f"{base}/requests?{WINDOW}&model=claude-haiku"),
            ("list, status=502 (1%)", f"{base}/requests?{WINDOW}&status=502"),
            ("list, key=key-42", f"{base}/requests?{WINDOW}&key=key-42"),
            ("list, property=feature=f3", f"{base}/requests?{WINDOW}&property=feature%3Df3"),
            (f"list, session={session}", f"{base}/requests?{WINDOW}&session={session}"),
            (f"session tree {session} (20 calls)", f"{base}/sessions/{session}"),
        ]
        cases.append(("overview (scans the range)", f"{base}/?{WINDOW}"))
        for name, url in cases:
            spent = []
            for _ in range(requests if not name.startswith("overview") else 3):
                began = time.perf_counter()
                answer = await client.get(url)
                body = await answer.text()
                spent.append((time.perf_counter() - began) * 1000)
                assert answer.status == 200, (name, answer.status)
            # Rows on the page (request rows or tree calls): a fast empty page would prove nothing.
            shown = body.count('class="row"') + body.count('href="/console/requests/') * name.startswith(
                "session"
            )
            cuts = statistics.quantiles(spent, n=20, method="inclusive")
            results.append((name, statistics.median(spent), cuts[18], len(spent), shown))
    await server.close()
    return results


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--db", default=None, help="an existing PostgreSQL ledger (default: a private one)")
    options = parser.parse_args()
    server = None
    dsn = options.db
    if dsn is None:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "ledger"))
        from pgserver import PostgresServer

        server = PostgresServer()
        server.start()
        dsn = server.new_database()
    ledger = Ledger.open(dsn)
    ledger.migrate()
    try:
        if options.rows:
            seconds = fill(ledger, options.rows)
            print(f"generated {options.rows:,} rows in {seconds:.0f} s")
        with ledger.transaction(readonly=True) as cur:
            cur.execute("SELECT count(*) FROM usage_events")
            count = cur.fetchone()[0]
        results = asyncio.run(timings(ledger, options.requests, f"s-{count // 40}"))
        print(f"\nconsole on PostgreSQL, {count:,} rows in usage_events\n")
        print("| page | p50 ms | p95 ms | requests | rows shown |\n|---|---:|---:|---:|---:|")
        for name, p50, p95, n, shown in results:
            rows = shown if name.startswith(("list", "session")) else "-"
            print(f"| {name} | {p50:.1f} | {p95:.1f} | {n} | {rows} |")
    finally:
        ledger.close()
        if server is not None:
            server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
