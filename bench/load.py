"""The measurements: interleaved concurrency-1 latency, open-loop rate steps, concurrent streams.

All of it runs on one asyncio (uvloop) event loop in the benchmark process.

- `interleaved`: one keep-alive connection per system; each round sends one request to every system
  in turn (the order rotates every round), so drift and noise from the shared machine hit all systems
  alike.
- `open_loop`: requests are *scheduled* at a fixed rate, independent of the answers (a new
  connection is opened whenever none is idle); latency runs from the scheduled time, so a system
  that falls behind is charged for the queue it builds (no coordinated omission).
- `streams`: C clients each run streams back to back; time to first token and the gaps between
  content chunks are recorded.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from bench.http import Connection, Endpoint, Response, fetch

MS = 1000.0


# -- statistics ---------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of values (inf counts as a failure that never finished)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def summary(values: Sequence[float]) -> dict[str, float]:
    finite = [v for v in values if math.isfinite(v)]
    return {
        "n": len(values),
        "p50": percentile(values, 50),
        "p90": percentile(values, 90),
        "p95": percentile(values, 95),
        "p99": percentile(values, 99),
        "max": max(values) if values else math.nan,
        "mean": sum(finite) / len(finite) if finite else math.nan,
    }


def is_content_event(event: bytes) -> bool:
    """An SSE chunk that carries text (not the role chunk, the finish chunk, usage or [DONE])."""
    at = event.find(b'"content":"')
    return at >= 0 and event[at + 11 : at + 12] != b'"'


@dataclass
class StreamTiming:
    ttft_ms: float
    gaps_ms: list[float]
    content_events: int


def stream_timing(resp: Response) -> StreamTiming | None:
    times = [t for t, event in resp.events if is_content_event(event)]
    if not resp.ok or not times:
        return None
    gaps = [(b - a) * MS for a, b in itertools.pairwise(times)]
    return StreamTiming((times[0] - resp.sent_at) * MS, gaps, len(times))


# -- concurrency 1, interleaved -----------------------------------------------------------------


@dataclass
class Interleaved:
    latency_ms: dict[str, list[float]] = field(default_factory=dict)
    ttft_ms: dict[str, list[float]] = field(default_factory=dict)
    gaps_ms: dict[str, list[float]] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    samples: dict[str, str] = field(default_factory=dict)


async def interleaved(
    endpoints: dict[str, Endpoint], rounds: int, warmup: int, limit_s: float = 30.0
) -> Interleaved:
    names = list(endpoints)
    conns: dict[str, Connection] = {}
    out = Interleaved(
        latency_ms={n: [] for n in names},
        ttft_ms={n: [] for n in names},
        gaps_ms={n: [] for n in names},
        errors=dict.fromkeys(names, 0),
    )
    try:
        for r in range(warmup + rounds):
            for i in range(len(names)):
                name = names[(r + i) % len(names)]
                endpoint = endpoints[name]
                conn = conns.get(name)
                if conn is None or conn.closed:
                    conn = conns[name] = await Connection.open(endpoint.host, endpoint.port)
                resp = await fetch(conn, endpoint, limit_s)
                # The first measured answer (a cache hit system's first call, in the warm-up, misses).
                if resp.ok and (name not in out.samples or r == warmup):
                    raw = resp.body if not endpoint.stream else b"\n\n".join(e for _t, e in resp.events)
                    out.samples[name] = (resp.head + b"\r\n\r\n" + raw[:600]).decode(errors="replace")
                if r < warmup:
                    continue
                if not resp.ok:
                    out.errors[name] += 1
                    continue
                out.latency_ms[name].append((resp.done_at - resp.sent_at) * MS)
                if endpoint.stream:
                    timing = stream_timing(resp)
                    if timing is None:
                        out.errors[name] += 1
                        continue
                    out.ttft_ms[name].append(timing.ttft_ms)
                    out.gaps_ms[name].extend(timing.gaps_ms)
    finally:
        for conn in conns.values():
            conn.close()
    return out


# -- open loop at a fixed rate ------------------------------------------------------------------


@dataclass
class Step:
    rate: float
    duration: float
    scheduled: int = 0
    ok: int = 0
    errors: int = 0
    timeouts: int = 0
    completed_in_window: int = 0
    latency: dict[str, float] = field(default_factory=dict)
    launch_lag_p99_ms: float = 0.0
    connections: int = 0
    cpu: dict[str, dict[str, float]] = field(default_factory=dict)
    first_error: str | None = None
    latencies_ms: list[float] = field(default_factory=list)

    @property
    def achieved(self) -> float:
        return self.completed_in_window / self.duration if self.duration else 0.0

    def passes(self, p99_limit_ms: float, offset_ms: float = 0.0) -> bool:
        """p99 (from the scheduled time, minus the upstream's own delay) within the limit, <1% failed,
        and >= 95% of the requests scheduled in the window answered by its end (plus the upstream's
        own delay): a system that only queues what it cannot serve does not pass."""
        measured = self.ok + self.errors + self.timeouts
        if measured == 0:
            return False
        failed = (self.errors + self.timeouts) / measured
        return (
            failed <= 0.01
            and self.latency.get("p99", math.inf) - offset_ms <= p99_limit_ms
            and self.completed_in_window >= 0.95 * self.scheduled - 1
        )

    def to_json(self, keep_latencies: bool = False) -> dict[str, Any]:
        out = {
            "rate": round(self.rate, 2),
            "duration_s": self.duration,
            "scheduled": self.scheduled,
            "ok": self.ok,
            "errors": self.errors,
            "timeouts": self.timeouts,
            "achieved_rps": round(self.achieved, 1),
            "latency_ms": {k: round(v, 3) for k, v in self.latency.items()},
            "launch_lag_p99_ms": round(self.launch_lag_p99_ms, 3),
            "connections": self.connections,
            "cpu": self.cpu,
            "first_error": self.first_error,
        }
        if keep_latencies:
            out["latencies_ms"] = [round(v, 3) for v in self.latencies_ms]
        return out


class Pool:
    """Idle keep-alive connections to one endpoint; opens more on demand up to `limit`."""

    def __init__(self, endpoint: Endpoint, limit: int) -> None:
        self.endpoint = endpoint
        self.limit = limit
        self.idle: deque[Connection] = deque()
        self.opened = 0
        self.live = 0
        self.waiters: deque[asyncio.Future[Connection | None]] = deque()
        self.all: list[Connection] = []
        self.opening: set[asyncio.Task[None]] = set()

    async def acquire(self) -> Connection | None:
        while self.idle:
            conn = self.idle.pop()
            if not conn.closed:
                return conn
            self.live -= 1
        if self.live < self.limit:
            self.live += 1
            self.opened += 1
            try:
                conn = await Connection.open(self.endpoint.host, self.endpoint.port)
            except OSError:
                self.live -= 1
                return None
            self.all.append(conn)
            return conn
        waiter: asyncio.Future[Connection | None] = asyncio.get_running_loop().create_future()
        self.waiters.append(waiter)
        return await waiter

    def release(self, conn: Connection) -> None:
        if conn.closed:
            self.live -= 1
            if self.waiters and self.live < self.limit:
                waiter = self.waiters.popleft()
                if not waiter.done():
                    task = asyncio.ensure_future(self._open_for(waiter))
                    self.opening.add(task)
                    task.add_done_callback(self.opening.discard)
            return
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(conn)
                return
        self.idle.append(conn)

    async def _open_for(self, waiter: asyncio.Future[Connection | None]) -> None:
        self.live += 1
        try:
            conn: Connection | None = await Connection.open(self.endpoint.host, self.endpoint.port)
        except OSError:
            self.live -= 1
            conn = None
        if conn is not None:
            self.all.append(conn)
        if not waiter.done():
            waiter.set_result(conn)
        elif conn is not None:
            self.release(conn)

    def close(self) -> None:
        for conn in self.all:
            conn.close()
        for waiter in self.waiters:
            if not waiter.done():
                waiter.set_result(None)
        self.all.clear()
        self.idle.clear()


async def open_loop(
    endpoint: Endpoint,
    rate: float,
    duration: float,
    warmup: float,
    *,
    max_connections: int = 2048,
    limit_s: float = 10.0,
    drain: float = 5.0,
    grace_s: float = 0.0,
    on_measure_start: Callable[[], None] | None = None,
    on_measure_end: Callable[[], None] | None = None,
) -> Step:
    """Offer `rate` requests/s for warmup + duration seconds; measure those scheduled after warmup."""
    pool = Pool(endpoint, max_connections)
    total = int(rate * (warmup + duration))
    first_measured = int(rate * warmup)
    step = Step(rate=rate, duration=duration)
    latencies: list[float] = []
    lags: list[float] = []
    done_times: list[float] = []
    tasks: set[asyncio.Task[None]] = set()
    loop = asyncio.get_running_loop()
    t0 = time.perf_counter() + 0.02
    window = (t0 + warmup, t0 + warmup + duration)

    async def one(index: int, scheduled: float) -> None:
        measured = index >= first_measured
        if measured:
            lags.append(time.perf_counter() - scheduled)
        conn = await pool.acquire()
        if conn is None:
            if measured:
                step.errors += 1
                latencies.append(math.inf)
            return
        resp = await fetch(conn, endpoint, limit_s)
        pool.release(conn)
        if not measured:
            return
        if resp.ok:
            step.ok += 1
            latencies.append((resp.done_at - scheduled) * MS)
            done_times.append(resp.done_at)
        else:
            step.errors += 1
            latencies.append(math.inf)
            step.first_error = step.first_error or (resp.error or f"HTTP {resp.status}")

    measuring = False
    index = 0
    while index < total:
        now = time.perf_counter()
        if not measuring and now >= window[0]:
            measuring = True
            if on_measure_start:
                on_measure_start()
        due = t0 + index / rate
        if due > now:
            await asyncio.sleep(min(due - now, 0.01))
            continue
        while index < total and t0 + index / rate <= now:
            task = loop.create_task(one(index, t0 + index / rate))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            index += 1
    step.scheduled = total - first_measured
    if tasks:
        _done, pending = await asyncio.wait(set(tasks), timeout=max(drain, window[1] - time.perf_counter()))
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending)
    if on_measure_end:
        on_measure_end()
    step.timeouts = step.scheduled - step.ok - step.errors
    latencies.extend([math.inf] * step.timeouts)
    pool.close()
    # Answers to requests scheduled in the window that arrived by its end (+ the upstream's delay).
    step.completed_in_window = sum(1 for t in done_times if t <= window[1] + grace_s + 0.05)
    step.latency = summary(latencies)
    step.latencies_ms = latencies
    step.launch_lag_p99_ms = percentile(lags, 99) * MS if lags else 0.0
    step.connections = pool.opened
    return step


@dataclass
class Search:
    """The highest offered rate meeting each p99 limit, found by doubling then bisecting."""

    steps: dict[float, Step] = field(default_factory=dict)
    max_rate: dict[str, float] = field(default_factory=dict)
    capped: dict[str, bool] = field(default_factory=dict)
    retried: list[float] = field(default_factory=list)


async def search_rate(
    measure: Callable[[float], Awaitable[Step]],
    *,
    start: float,
    limits_ms: Sequence[float],
    offset_ms: float,
    ceiling: float,
    floor: float = 5.0,
    bisections: int = 3,
    max_steps: int = 16,
    retries: int = 3,
) -> Search:
    """Noise on a shared machine only ever adds latency: a step that passes is evidence, a step that
    fails may be a hiccup. So a failure that is not plain saturation is measured once more (up to
    `retries` times per search), and each limit's answer is the highest rate that passed anywhere."""
    found = Search()

    def passes(step: Step, limit: float) -> bool:
        return step.passes(limit, offset_ms)

    async def at(rate: float, limit: float) -> Step:
        rate = round(rate, 1)
        if rate in found.steps:
            return found.steps[rate]
        step = await measure(rate)
        saturated = step.completed_in_window < 0.85 * step.scheduled
        if not passes(step, limit) and not saturated and len(found.retried) < retries:
            found.retried.append(rate)
            again = await measure(rate)
            if passes(again, limit) or again.latency.get("p99", math.inf) < step.latency.get("p99", math.inf):
                step = again
        found.steps[rate] = step
        return step

    def best(limit: float) -> float:
        passing = [r for r, s in found.steps.items() if passes(s, limit)]
        return max(passing) if passing else 0.0

    highest, strictest = max(limits_ms), min(limits_ms)
    rate = min(max(start, floor), ceiling)
    # Up by doubling while the loosest limit holds.
    while len(found.steps) < max_steps:
        step = await at(rate, highest)
        if not passes(step, highest) or rate >= ceiling:
            break
        rate = min(rate * 2, ceiling)
    # Down by halving until the strictest limit holds somewhere (or the floor).
    lowest = min(found.steps)
    while not best(strictest) and lowest > floor and len(found.steps) < max_steps:
        lowest = round(max(lowest / 2, floor), 1)
        await at(lowest, strictest)
    for limit in sorted(limits_ms):
        key = f"p99<={limit:g}ms"
        good = best(limit)
        failing = [r for r, s in found.steps.items() if r > good and not passes(s, limit)]
        bad = min(failing) if failing else None
        if good and bad is not None:
            for _ in range(bisections):
                if len(found.steps) >= max_steps or bad / good < 1.08:
                    break
                mid = math.sqrt(good * bad)
                if passes(await at(mid, limit), limit):
                    good = round(mid, 1)
                else:
                    bad = round(mid, 1)
    for limit in limits_ms:
        key = f"p99<={limit:g}ms"
        found.max_rate[key] = best(limit)
        failing = [r for r, s in found.steps.items() if r > found.max_rate[key] and not passes(s, limit)]
        found.capped[key] = not failing and found.max_rate[key] >= ceiling
    return found


# -- concurrent streams ---------------------------------------------------------------------------


@dataclass
class StreamStep:
    concurrency: int
    duration: float
    streams: int = 0
    errors: int = 0
    ttft: dict[str, float] = field(default_factory=dict)
    gaps: dict[str, float] = field(default_factory=dict)
    cpu: dict[str, dict[str, float]] = field(default_factory=dict)
    first_error: str | None = None

    def passes(self, interval_ms: float, gap_limit_ms: float, ttft_limit_ms: float) -> bool:
        """Chunks still flow on time: the median gap within 5 ms of the upstream's interval (no
        systematic slow-down), p95 gap within interval + gap_limit, p99 TTFT within ttft_limit,
        < 1% failed streams. (p95, not p99, for the gaps: on a shared machine single scheduler
        hiccups of a few tens of ms would otherwise decide the result.)"""
        total = self.streams + self.errors
        return (
            total > 0
            and self.errors / total <= 0.01
            and self.gaps.get("p50", math.inf) - interval_ms <= 5.0
            and self.gaps.get("p95", math.inf) - interval_ms <= gap_limit_ms
            and self.ttft.get("p99", math.inf) <= ttft_limit_ms
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "concurrency": self.concurrency,
            "duration_s": self.duration,
            "streams": self.streams,
            "errors": self.errors,
            "ttft_ms": {k: round(v, 3) for k, v in self.ttft.items()},
            "gap_ms": {k: round(v, 3) for k, v in self.gaps.items()},
            "cpu": self.cpu,
            "first_error": self.first_error,
        }


async def concurrent_streams(
    endpoint: Endpoint,
    concurrency: int,
    duration: float,
    warmup: float,
    *,
    stream_seconds: float,
    limit_s: float = 30.0,
    on_measure_start: Callable[[], None] | None = None,
    on_measure_end: Callable[[], None] | None = None,
) -> StreamStep:
    """`concurrency` clients, each running streams back to back; streams started in the window count."""
    step = StreamStep(concurrency=concurrency, duration=duration)
    ttfts: list[float] = []
    gaps: list[float] = []
    start = time.perf_counter()
    window = (start + warmup, start + warmup + duration)

    async def client(i: int) -> None:
        # Stagger the clients over one stream's length so they do not tick in lockstep.
        await asyncio.sleep(stream_seconds * i / concurrency)
        conn: Connection | None = None
        while time.perf_counter() < window[1]:
            try:
                if conn is None or conn.closed:
                    conn = await Connection.open(endpoint.host, endpoint.port)
            except OSError as exc:
                if time.perf_counter() >= window[0]:
                    step.errors += 1
                    step.first_error = step.first_error or f"connect: {exc}"
                await asyncio.sleep(0.05)
                continue
            began = time.perf_counter()
            resp = await fetch(conn, endpoint, limit_s)
            if began < window[0]:
                continue
            timing = stream_timing(resp)
            if timing is None:
                step.errors += 1
                step.first_error = step.first_error or (resp.error or f"HTTP {resp.status}")
                continue
            step.streams += 1
            ttfts.append(timing.ttft_ms)
            gaps.extend(timing.gaps_ms)
        if conn is not None:
            conn.close()

    async def marks() -> None:
        await asyncio.sleep(max(0.0, window[0] - time.perf_counter()))
        if on_measure_start:
            on_measure_start()

    marker = asyncio.ensure_future(marks())
    await asyncio.gather(*(client(i) for i in range(concurrency)))
    await marker
    if on_measure_end:
        on_measure_end()
    step.ttft = summary(ttfts)
    step.gaps = summary(gaps)
    return step


async def search_streams(
    measure: Callable[[int], Awaitable[StreamStep]],
    *,
    start: int,
    passes: Callable[[StreamStep], bool],
    ceiling: int,
    bisections: int = 2,
    max_steps: int = 10,
) -> tuple[int, dict[int, StreamStep], bool]:
    steps: dict[int, StreamStep] = {}

    async def at(c: int) -> StreamStep:
        if c not in steps:
            steps[c] = await measure(c)
        return steps[c]

    c = min(start, ceiling)
    while len(steps) < max_steps:
        if not passes(await at(c)) or c >= ceiling:
            break
        c = min(c * 2, ceiling)
    lowest = min(steps)
    while not passes(steps[lowest]) and lowest > 1 and len(steps) < max_steps:
        lowest = max(1, lowest // 2)
        await at(lowest)
    passing = [k for k, s in steps.items() if passes(s)]
    good = max(passing) if passing else 0
    failing = [k for k, s in steps.items() if k > good and not passes(s)]
    bad = min(failing) if failing else None
    if good and bad is not None:
        for _ in range(bisections):
            mid = int(math.sqrt(good * bad))
            if mid <= good or mid >= bad or len(steps) >= max_steps:
                break
            if passes(await at(mid)):
                good = mid
            else:
                bad = mid
    return good, steps, bad is None and good >= ceiling
