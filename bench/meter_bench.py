"""Metering: ledger ingest rate, ledger lag while the gateway runs at its maximum rate, what the
outbox costs a settle, and the meter's memory.

    .venv/bin/python -m bench.meter_bench [--events 20000] [--batch 500] [--runs 3] [--rate 0]
                                          [--seconds 20] [--ops 3000]
                                          [--report bench/REPORT.md | --no-report]

1. **Ingest**: `--events` usage events built by the sidecar's own code (`usage_record.event_json`,
   ~0.9 KB each) are put on a Redis stream, then the real `MeterConsumer` drains it into the
   ledger in batches of `--batch`: PostgreSQL (a private cluster made with initdb, fsync and
   synchronous_commit on, so every batch's COMMIT reaches the disk) and SQLite (WAL, a file in a
   temp folder). Rate = events / wall time from the first read to the last XACK (and trim); each
   database `--runs` times into a fresh ledger, the best reported with the median (the machine's
   2 cores are shared: one run can be halved by someone else's job).
2. **Gateway rate and ledger lag**: Tollway as `make bench` starts it (Envoy + sidecar, Redis,
   spans to an OTLP receiver; its own dev meter off), its maximum rate at p99 <= 50 ms searched
   here (`--rate 0`) or given (`--rate N`); then `tollway meter run` (a process) on PostgreSQL
   while the gateway is driven at that rate for `--seconds`. Lag of each event = its COMMIT time
   (`track_commit_timestamp`, `pg_xact_commit_timestamp(xmin)`) minus its `time` (the call's
   finish), for every event of the run. The meter's RSS is sampled during the run; peak is VmHWM.
3. **Settle**: `bench.quota_bench`'s in-process part (settle with and without the event).

Prints a table; unless `--no-report`, writes it as the "Metering" section of bench/REPORT.md
(between markers that `make bench`'s report keeps).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import pwd
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis
import redis.asyncio as aioredis

from bench import load, quota_bench
from bench.http import Endpoint
from bench.procs import cpu_seconds, status_kb
from bench.systems import (
    BENCH_KEY,
    CHAT_PATH,
    BenchError,
    Children,
    default_scenarios,
    request_body,
    start_mocks,
    start_otlp,
    start_redis,
    start_tollway,
    wait_for,
)
from tollway.dev import free_port
from tollway_meter.consumer import ConsumerOptions, MeterConsumer
from tollway_meter.ledger import Ledger
from tollway_sidecar.contract.usage_event import USAGE_STREAM, UsageEvent, uuid7
from tollway_sidecar.extproc.usage_record import event_json
from tollway_sidecar.quota.plan import Charge

ROOT = Path(__file__).resolve().parents[1]
REPORT = ROOT / "bench" / "REPORT.md"
START, END = "<!-- meter_bench:start -->", "<!-- meter_bench:end -->"
REPORTED_MAX_RATE = 445.0  # bench/REPORT.md, Tollway at p99 <= 50 ms


# -- a private PostgreSQL, durable ---------------------------------------------------------------


class Postgres:
    """initdb in a temp folder on a free loopback port; fsync on (unlike the tests' cluster)."""

    def __init__(self) -> None:
        found = subprocess.run(
            ["bash", str(ROOT / "scripts" / "tools" / "postgres.sh")], capture_output=True, text=True
        )
        if found.returncode != 0:
            raise SystemExit(f"PostgreSQL is not available (scripts/tools/postgres.sh):\n{found.stderr}")
        self.bin = Path(found.stdout.strip().splitlines()[-1])
        self.port = free_port()
        self.user = "postgres" if os.geteuid() == 0 else None
        if self.user:
            pwd.getpwnam(self.user)  # PostgreSQL refuses to run as root; Debian's package makes this user
        self.workdir = Path(tempfile.mkdtemp(prefix="tollway-meter-bench-pg-"))
        if self.user:
            shutil.chown(self.workdir, self.user)
        self.data = self.workdir / "data"

    def _run(self, *argv: str) -> None:
        command = ["runuser", "-u", self.user, "--", *argv] if self.user else list(argv)
        done = subprocess.run(command, capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise SystemExit(f"{argv[0]} failed:\n{done.stdout}\n{done.stderr}")

    def start(self) -> None:
        self._run(
            str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8"
        )
        options = (
            f"-p {self.port} -k {self.workdir} -c listen_addresses=127.0.0.1 "
            "-c fsync=on -c synchronous_commit=on -c track_commit_timestamp=on"
        )
        log = str(self.workdir / "postgres.log")
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", log, "-o", options, "-w", "start")

    def database(self, name: str) -> str:
        import psycopg

        with psycopg.connect(self.dsn("postgres"), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.dsn(name)

    def dsn(self, name: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        with_user = ["runuser", "-u", self.user, "--"] if self.user else []
        subprocess.run(
            [*with_user, str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop"],
            capture_output=True,
            check=False,
        )
        shutil.rmtree(self.workdir, ignore_errors=True)


# -- 1. ingest ------------------------------------------------------------------------------------


def prebuilt_events(count: int) -> list[str]:
    """Valid v1 events as the sidecar writes them: a session, two properties, a fallback, budgets."""
    key, _budgets, _route, _prices = quota_bench.bench_objects()
    facts = quota_bench.sample_facts(key)
    now = datetime.now(UTC)
    return [
        event_json(dataclasses.replace(facts, id=uuid7(), at=now), Charge(10, 10, 9_000 + i))
        for i in range(count)
    ]


@dataclass
class Ingest:
    db: str
    events: int
    seconds: float
    batch_ms: list[float]
    inserted: int
    rates: list[float] = field(default_factory=list)  # every run's, when this is the best of several

    @property
    def rate(self) -> float:
        return self.events / self.seconds


def best_of(runs: list[Ingest]) -> Ingest:
    best = max(runs, key=lambda run: run.rate)
    return dataclasses.replace(best, rates=[run.rate for run in runs])


async def ingest(redis_url: str, dsn: str, label: str, events: list[str], batch: int) -> Ingest:
    sync = redis.Redis.from_url(redis_url)
    sync.delete(USAGE_STREAM)
    for start in range(0, len(events), 1000):
        with sync.pipeline(transaction=False) as pipe:
            for text in events[start : start + 1000]:
                pipe.xadd(USAGE_STREAM, {"event": text})
            pipe.execute()
    sync.close()
    ledger = Ledger.open(dsn)
    ledger.migrate()
    client = aioredis.Redis.from_url(redis_url)
    consumer = MeterConsumer(client, ledger, ConsumerOptions(consumer="bench", batch=batch, block_ms=50))
    await consumer.ensure_group()
    batch_ms: list[float] = []
    started = time.perf_counter()
    while True:
        step_started = time.perf_counter()
        result = await consumer.step()
        if result.read == 0:
            break
        batch_ms.append((time.perf_counter() - step_started) * 1e3)
    seconds = time.perf_counter() - started - 0.05  # the last, empty read blocked for block_ms
    await client.aclose()
    ledger.close()
    return Ingest(label, len(events), seconds, batch_ms, consumer.stats.ingested)


def breakdown(dsn: str, texts: list[str], batch: int) -> dict[str, float]:
    """µs per event of the consumer's two CPU-heavy parts on their own, no Redis: parsing and
    validating the JSON (`UsageEvent.from_json`) and the ledger transaction (`Ledger.ingest`)."""
    started = time.perf_counter()
    events = [UsageEvent.from_json(text) for text in texts]
    parse = time.perf_counter() - started
    ledger = Ledger.open(dsn)
    ledger.migrate()
    started = time.perf_counter()
    for first in range(0, len(events), batch):
        ledger.ingest(events[first : first + batch])
    write = time.perf_counter() - started
    ledger.close()
    return {"parse": parse / len(texts) * 1e6, "ledger": write / len(texts) * 1e6}


# -- 2. the gateway at its maximum rate, and the ledger's lag ------------------------------------------


@dataclass
class Lag:
    rate: float
    searched: bool
    seconds: float
    calls_ok: int
    errors: int
    p99_ms: float
    events: int
    lag_s: dict[str, float]
    rss_mb: dict[str, float]
    meter_cpu_us_per_event: float
    search_steps: list[tuple[float, float, float]] = field(default_factory=list)  # rate, p99, done/s


def start_meter(redis_url: str, dsn: str, log_path: Path) -> subprocess.Popen[bytes]:
    """`tollway meter run` on PostgreSQL; returns once it has migrated and made its consumer group."""
    argv = [sys.executable, "-m", "tollway.cli", "meter", "run", "--redis", redis_url, "--db", dsn]
    argv += ["--consumer", "bench", "--metrics-port", "0", "--api-port", "0"]
    with log_path.open("ab") as log:
        meter = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    client = redis.Redis.from_url(redis_url)

    def ready() -> bool:
        return client.exists(USAGE_STREAM) == 1 and bool(client.xinfo_groups(USAGE_STREAM))

    def alive() -> None:
        if meter.poll() is not None:
            raise BenchError(f"the meter exited: {log_path.read_text()[-2000:]}")

    try:
        wait_for(ready, "the meter's consumer group", 30, alive)
    finally:
        client.close()
    return meter


def meter_rss_mb(pid: int) -> tuple[float, float]:
    return status_kb(pid, "VmRSS") / 1024, status_kb(pid, "VmHWM") / 1024


async def gateway_lag(pg: Postgres, work: Path, rate: float, seconds: float) -> Lag:
    children = Children(work / "logs")
    saved_env = dict(os.environ)
    meter: subprocess.Popen[bytes] | None = None
    try:
        scenarios = default_scenarios(10, 10.0, 40, 25.0)
        mocks = start_mocks(children, {"fast": scenarios["fast"]})
        redis_port, _proc = start_redis(children, shutil.which("redis-server") or "redis-server")
        redis_url = f"redis://127.0.0.1:{redis_port}/0"
        otlp_port, _otlp, _stats = start_otlp(children, work)
        dev, system = start_tollway(
            work, mocks, {"fast": scenarios["fast"]}, redis_url=redis_url, otlp_port=otlp_port, meter=False
        )
        os.environ.clear()
        os.environ.update(saved_env)
        children_stop = [dev.stop]
        try:
            port, _model = system.ports["fast"]
            body = request_body(scenarios["fast"], 1000)
            endpoint = Endpoint.build(
                "127.0.0.1", port, CHAT_PATH, body, {"Authorization": f"Bearer {BENCH_KEY}"}
            )
            await load.interleaved({"warm": endpoint}, rounds=200, warmup=50)
            steps: list[tuple[float, float, float]] = []
            searched = rate <= 0
            if searched:

                async def step(at: float) -> load.Step:
                    result = await load.open_loop(endpoint, at, 3.0, 0.5)
                    steps.append((at, result.latency.get("p99", float("inf")), result.achieved))
                    print(f"  search {at:7.1f}/s  p99 {steps[-1][1]:8.2f} ms  done {result.achieved:7.1f}/s")
                    await asyncio.sleep(0.3)
                    return result

                found = await load.search_rate(
                    step,
                    start=200.0,
                    limits_ms=(50.0,),
                    offset_ms=0.0,
                    ceiling=2000.0,
                    bisections=2,
                    max_steps=9,
                )
                rate = found.max_rate["p99<=50ms"]
                if rate <= 0:
                    raise SystemExit("the gateway met p99 <= 50 ms at no rate tried")
            # The lag run starts from an empty stream: the search's events are not the meter's to catch up.
            sync = redis.Redis.from_url(redis_url)
            sync.delete(USAGE_STREAM)
            dsn = pg.database("lag")
            meter = start_meter(redis_url, dsn, work / "meter.log")
            samples: list[float] = []

            async def sample_rss() -> None:
                assert meter is not None
                while True:
                    samples.append(meter_rss_mb(meter.pid)[0])
                    await asyncio.sleep(0.5)

            sampler = asyncio.create_task(sample_rss())
            cpu_before = cpu_seconds(meter.pid)
            result = await load.open_loop(endpoint, rate, seconds, 1.0)
            last = sync.xinfo_stream(USAGE_STREAM)["last-generated-id"]

            def caught_up() -> bool:
                groups = sync.xinfo_groups(USAGE_STREAM)
                return bool(groups and groups[0]["pending"] == 0 and groups[0]["last-delivered-id"] >= last)

            wait_for(caught_up, "the meter caught up", 60)
            sampler.cancel()
            rss_now, hwm = meter_rss_mb(meter.pid)
            meter_cpu = cpu_seconds(meter.pid) - cpu_before
            sync.close()
            import psycopg

            with psycopg.connect(dsn) as conn:
                rows = conn.execute(
                    "SELECT extract(epoch FROM pg_xact_commit_timestamp(xmin) - event_time)::float8 "
                    "FROM usage_events"
                ).fetchall()
            lags = sorted(float(r[0]) for r in rows)
            return Lag(
                rate=rate,
                searched=searched,
                seconds=seconds,
                calls_ok=result.ok,
                errors=result.errors + result.timeouts,
                p99_ms=result.latency.get("p99", float("nan")),
                events=len(lags),
                lag_s={
                    "p50": load.percentile(lags, 50),
                    "p95": load.percentile(lags, 95),
                    "p99": load.percentile(lags, 99),
                    "max": lags[-1] if lags else float("nan"),
                },
                rss_mb={
                    "median": statistics.median(samples) if samples else rss_now,
                    "peak": hwm,
                },
                meter_cpu_us_per_event=meter_cpu / max(1, len(lags)) * 1e6,
                search_steps=steps,
            )
        finally:
            for stop in children_stop:
                stop()
    finally:
        if meter is not None:
            meter.terminate()
            meter.wait(timeout=20)
        os.environ.clear()
        os.environ.update(saved_env)
        children.stop()


# -- the table and the report ------------------------------------------------------------------------


def render(
    ingests: list[Ingest],
    parts: dict[str, float],
    lag: Lag,
    settle: list[tuple[str, float, float]],
    args: Any,
) -> str:
    pg = next(i for i in ingests if i.db == "PostgreSQL")
    lines = [
        "## Metering (`python -m bench.meter_bench`)",
        "",
        f"Generated {datetime.now(UTC).isoformat(timespec='seconds')} by "
        f"`.venv/bin/python -m bench.meter_bench --events {args.events} --batch {args.batch} "
        f"--runs {args.runs} --rate {args.rate:g} --seconds {args.seconds:g} --ops {args.ops}`; "
        f"load average {os.getloadavg()[0]:.2f} at the end (2 cores shared with other "
        "jobs: compare rows, not machines).",
        "",
        "| measure | value |",
        "|---|---|",
    ]
    for run in ingests:
        rates = run.rates or [run.rate]
        lines.append(
            f"| ingest into {run.db}, batches of {args.batch} (real `MeterConsumer`, from a Redis stream), "
            f"best of {len(rates)} runs | **{run.rate:,.0f} events/s** ({run.events:,} events in "
            f"{run.seconds:.2f} s, {len(run.batch_ms)} batches, "
            f"p50 {load.percentile(run.batch_ms, 50):.0f} ms / "
            f"p99 {load.percentile(run.batch_ms, 99):.0f} ms per batch); median of the runs "
            f"{statistics.median(rates):,.0f}/s ({', '.join(f'{r:,.0f}' for r in rates)}) |"
        )
    per_event = 1e6 / pg.rate
    rest = per_event - parts["parse"] - parts["ledger"]
    lines.append(
        f"| of which, per event into PostgreSQL ({per_event:.0f} µs) | parse and validate "
        f"(`UsageEvent.from_json`) {parts['parse']:.0f} µs, the ledger transaction (`Ledger.ingest`) "
        f"{parts['ledger']:.0f} µs, the rest (Redis read, XACK, trim, the thread hop) {rest:.0f} µs |"
    )
    searched = "its maximum at p99 ≤ 50 ms, searched in this run before the meter ran"
    how = searched if lag.searched else "--rate"
    lines += [
        f"| the lag run: the gateway driven at {how} | {lag.rate:,.0f} calls/s for {lag.seconds:g} s, "
        f"the meter beside it: {lag.calls_ok:,} answered, {lag.errors} errors, p99 {lag.p99_ms:.1f} ms |",
        f"| ledger lag, call finished → COMMIT in PostgreSQL ({lag.events:,} events) | p50 "
        f"**{lag.lag_s['p50'] * 1e3:.0f} ms**, p95 **{lag.lag_s['p95'] * 1e3:.0f} ms**, "
        f"p99 {lag.lag_s['p99'] * 1e3:.0f} ms, max {lag.lag_s['max'] * 1e3:.0f} ms |",
        f"| meter RSS during that run (`tollway meter run`) | median {lag.rss_mb['median']:.0f} MB, "
        f"peak (VmHWM) {lag.rss_mb['peak']:.0f} MB; CPU {lag.meter_cpu_us_per_event:.0f} µs per event |",
        f"| ratio: PostgreSQL ingest / gateway max rate | **{pg.rate / lag.rate:.1f}x** this run's "
        f"{lag.rate:,.0f}/s; {pg.rate / REPORTED_MAX_RATE:.1f}x REPORT.md's {REPORTED_MAX_RATE:.0f}/s |",
    ]
    lines += ["", "Settle as the sidecar sees it (`bench.quota_bench`'s in-process part, µs):", ""]
    lines += ["| settle | p50 µs | p99 µs |", "|---|---|---|"]
    lines += [f"| {name} | {p50:.0f} | {p99:.0f} |" for name, p50, p99 in settle if name.startswith("settle")]
    by_name = {name: p50 for name, p50, _p99 in settle}
    plain = by_name.get("settle (sequential)", float("nan"))
    append = by_name.get("settle + a prebuilt event appended (sequential)", float("nan")) - plain
    built = by_name.get("settle + usage event built and appended (sequential)", float("nan")) - plain
    ratio = pg.rate / lag.rate
    lines += [
        "",
        "Against the issue's aims: ingest ≥ 20x the gateway's own maximum rate: "
        f"{'met' if ratio >= 20 else 'missed'} ({ratio:.1f}x); ledger lag p95 ≤ 2 s at that rate: "
        f"{'met' if lag.lag_s['p95'] <= 2 else 'missed'} ({lag.lag_s['p95'] * 1e3:.0f} ms); the outbox "
        f"≤ +50 µs on the settle's p50: the append in the script +{append:.0f} µs "
        f"({'met' if append <= 50 else 'missed'}), with the event built from the call in the same task "
        f"+{built:.0f} µs ({'met' if built <= 50 else 'missed'}).",
    ]
    if lag.search_steps:
        steps = ", ".join(f"{r:.0f}/s → p99 {p:.1f} ms" for r, p, _d in sorted(lag.search_steps))
        lines += ["", f"Rate search steps (3 s each): {steps}."]
    return "\n".join(lines) + "\n"


def write_section(report: Path, section: str) -> None:
    """Replace the marked section (or add it before "## Configuration", else at the end)."""
    text = report.read_text() if report.exists() else ""
    block = f"{START}\n{section}{END}\n"
    if START in text and END in text:
        head, rest = text.split(START, 1)
        text = head + block + "\n" + rest.split(END, 1)[1].lstrip("\n")
    elif "\n## Configuration" in text:
        head, rest = text.split("\n## Configuration", 1)
        text = head.rstrip("\n") + "\n\n" + block + "\n## Configuration" + rest
    else:
        text = text.rstrip("\n") + "\n\n" + block
    report.write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=20_000, help="events per ingest run")
    parser.add_argument("--batch", type=int, default=500, help="entries per ledger transaction")
    parser.add_argument("--runs", type=int, default=3, help="ingest runs per database (the best is reported)")
    parser.add_argument("--rate", type=float, default=0.0, help="gateway calls/s in the lag run (0: search)")
    parser.add_argument("--seconds", type=float, default=20.0, help="length of the lag run")
    parser.add_argument("--ops", type=int, default=3000, help="reserve+settle pairs per settle row")
    parser.add_argument("--report", type=Path, default=REPORT)
    parser.add_argument("--no-report", action="store_true")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="tollway-meter-bench-"))
    pg = Postgres()
    children = Children(work / "redis-logs")
    try:
        pg.start()
        port, _proc = start_redis(children, shutil.which("redis-server") or "redis-server")
        url = f"redis://127.0.0.1:{port}/0"
        events = prebuilt_events(args.events)
        runs: dict[str, list[Ingest]] = {"PostgreSQL": [], "SQLite": []}
        for i in range(max(1, args.runs)):  # interleaved: a burst of load elsewhere hits both alike
            dsn = pg.database(f"ingest{i}")
            runs["PostgreSQL"].append(asyncio.run(ingest(url, dsn, "PostgreSQL", events, args.batch)))
            sqlite = f"sqlite:///{work / f'ledger{i}.db'}"
            runs["SQLite"].append(asyncio.run(ingest(url, sqlite, "SQLite", events, args.batch)))
        ingests = [best_of(done) for done in runs.values()]
        for run in ingests:
            print(f"ingest {run.db}: {run.rate:,.0f} events/s ({run.inserted} inserted)")
        parts = breakdown(pg.database("breakdown"), events, args.batch)
        quota_bench.warm()
        settle = asyncio.run(quota_bench.in_process(url, args.ops))
        children.stop()
        lag = asyncio.run(gateway_lag(pg, work / "gateway", args.rate, args.seconds))
    finally:
        children.stop()
        pg.stop()
        shutil.rmtree(work, ignore_errors=True)
    section = render(ingests, parts, lag, settle, args)
    print("\n" + section)
    if not args.no_report:
        write_section(args.report, section)
        print(f"report: {args.report}")


if __name__ == "__main__":
    main()
