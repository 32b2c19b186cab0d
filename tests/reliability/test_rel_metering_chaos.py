"""Metering under chaos: 2,000 calls through a real gateway while the meter is SIGKILLed mid-batch
and restarted, PostgreSQL is restarted, and Redis is SIGKILLed and restarted on its AOF. Afterwards
the ledger holds exactly one event per call the gateway answered 200 or 429 (matched call by call
through a property header), its totals per key and per budget equal /spend to the nano-dollar,
and nothing is dead-lettered.

Calls in flight while Redis is down follow their key's policy: FailOpen serves them and sends
their counts and events once Redis is back; FailClosed answers 503 `quota_store_unavailable`,
charges nothing and has no event.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

import aiohttp
import psycopg
import pytest
import redis
import redis.asyncio as aioredis
from reliability_env import (
    QuotaGateway,
    RedisServer,
    budget_yaml,
    chat_body,
    config_folder,
    key_value,
    key_yaml,
    provider_key,
    record,
    routes_yaml,
    start_gateway,
    wait_for,
)
from reliability_meter import (
    LedgerView,
    Meter,
    PostgresServer,
    aof_redis,
    envoy_counter,
    kill_redis,
    read_ledger,
    spread,
)

from tollway.dev import free_port
from tollway_meter.ledger import Ledger
from tollway_sidecar.contract.money import to_nano
from tollway_sidecar.contract.usage_event import USAGE_DEAD_LETTER_STREAM, USAGE_FIELD, USAGE_STREAM

CALLS = 2_000
WORKERS = 8
RATE = 150.0  # calls/s at most, so the run lasts about 13 s
GROUP = "tollway-meter"
# When each fault starts, by calls answered so far.
METER_KILL_AT, POSTGRES_AT, REDIS_AT = 300, 800, 1_300
DOWN_S = 1.5  # how long PostgreSQL and Redis stay down

FALLBACK_ROUTE = """\
---
apiVersion: tollway.dev/v1alpha1
kind: RouteRule
metadata: {{name: chaos-fallback}}
spec:
  model: chaos-fallback
  timeout: 2s
  backends:
    - name: chaos-broken
      provider: openai-compatible
      model: gpt-4o-mini
      baseURL: http://127.0.0.1:{broken}/v1
      pricing: {{inputPerMillion: "0.15", outputPerMillion: "0.60"}}
    - name: chaos-spare
      provider: openai-compatible
      model: gpt-4o-mini
      baseURL: http://127.0.0.1:{mock}/v1
      pricing: {{inputPerMillion: "0.15", outputPerMillion: "0.60"}}
      priority: 1
"""

RESOURCES = "".join(
    [
        budget_yaml("mo-budget", "100", "failurePolicy: FailOpen"),
        key_yaml("mo", "budgetRefs: [mo-budget]"),
        budget_yaml("mc-budget", "100", "failurePolicy: FailClosed"),
        key_yaml("mc", "budgetRefs: [mc-budget]"),
        # About 37 calls of `rel-chat` (each reserves $0.00001335 and costs $0.00001275), then 429s.
        budget_yaml("mcap-budget", "0.0005", "period: Total\nfailurePolicy: FailClosed"),
        key_yaml("mcap", "budgetRefs: [mcap-budget]"),
        key_yaml("mrate", "limits: {requestsPerMinute: 30}"),  # FailClosed: the default policy
    ]
)
FAIL_OPEN = {"mo"}
# Call i is MIX[i % 10]: (kind, key). 20% streamed, 20% cut by the client, 20% fallback, 20% on
# keys that end up refused (a spent budget, a rate limit).
MIX = (
    ("json", "mo"),
    ("json", "mc"),
    ("stream", "mo"),
    ("hangup", "mo"),
    ("stream", "mc"),
    ("hangup", "mc"),
    ("fallback", "mc"),
    ("json", "mcap"),
    ("json", "mrate"),
    ("fallback", "mo"),
)


@dataclass(frozen=True)
class Sent:
    """One call as the client saw it."""

    n: int
    kind: str
    key: str
    status: int  # 0: no HTTP answer
    code: str | None
    cost: Decimal | None
    started: float
    ended: float

    @property
    def tag(self) -> str:
        return f"c{self.n}"


@dataclass
class Stage:
    redis: RedisServer
    postgres: PostgresServer
    dsn: str
    gateway: QuotaGateway
    meter: Meter
    config: Path  # the gateway's resources (a `tollway dev` folder)


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresServer]:
    server = PostgresServer()
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def stage(tmp_path_factory: pytest.TempPathFactory, postgres: PostgresServer) -> Iterator[Stage]:
    base = tmp_path_factory.mktemp("metering-chaos")
    server = aof_redis(base / "redis")
    server.start()
    broken_port, mock_port = free_port(), free_port()
    broken = subprocess.Popen(  # every call answered 503: the fallback route's first backend
        [sys.executable, "-m", "tollway", "mock-provider", "--port", str(broken_port), "--status", "503"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    gateway: QuotaGateway | None = None
    meter: Meter | None = None
    try:
        dsn = postgres.new_database()
        resources = (
            routes_yaml(mock_port, provider_key())
            + FALLBACK_ROUTE.format(broken=broken_port, mock=mock_port)
            + RESOURCES
        )
        folder = config_folder(base, mock_port, resources)
        gateway = start_gateway(base / "gw", folder, server.url, mock_port=mock_port)
        meter = Meter(server.url, dsn, base / "meter.log")
        meter.start()
        yield Stage(server, postgres, dsn, gateway, meter, folder)
    finally:
        if meter is not None:
            meter.stop()
        if gateway is not None:
            gateway.dev.stop()
        broken.terminate()
        broken.wait(timeout=10)
        server.stop()


async def one_call(session: aiohttp.ClientSession, origin: str, n: int) -> Sent:
    kind, key = MIX[n % len(MIX)]
    streamed = kind in ("stream", "hangup")
    body = chat_body("chaos-fallback" if kind == "fallback" else "rel-chat", stream=streamed)
    headers = {
        "authorization": f"Bearer {key_value(key)}",
        "content-type": "application/json",
        "x-tollway-property-call": f"c{n}",
    }
    if kind == "hangup":  # 40 chunks 5 ms apart; the client leaves after 3
        headers |= {"x-mock-completion-tokens": "40", "x-mock-chunks": "40", "x-mock-chunk-delay-ms": "5"}
    started = time.monotonic()
    code: str | None = None
    cost: Decimal | None = None
    try:
        async with session.post(
            origin + "/v1/chat/completions",
            data=body,
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=20),
        ) as response:
            status = response.status
            if kind == "hangup" and status == 200:
                seen = 0
                async for line in response.content:
                    seen += line.startswith(b"data: {")
                    if seen == 3:
                        break
                response.close()  # drops the connection mid-stream
            else:
                payload = await response.read()
                if status >= 400:
                    code = json.loads(payload)["error"]["code"]
                raw = response.headers.get("x-tollway-cost-usd")
                cost = Decimal(raw) if raw is not None else None
    except (TimeoutError, aiohttp.ClientError, OSError, ValueError, KeyError) as exc:
        status, code = 0, f"{type(exc).__name__}: {exc}"
    return Sent(n, kind, key, status, code, cost, started, time.monotonic())


@dataclass
class Faults:
    """When each fault happened (monotonic seconds), for reading the client's statuses."""

    pending_at_kill: int = 0
    redis_killed: float = 0.0
    redis_back: float = 0.0


@dataclass
class Progress:
    """The calls answered so far; `reached(n)` wakes once there are n."""

    calls: list[Sent] = field(default_factory=list)
    _marks: dict[int, asyncio.Event] = field(default_factory=dict)

    def add(self, call: Sent) -> None:
        self.calls.append(call)
        mark = self._marks.get(len(self.calls))
        if mark is not None:
            mark.set()

    async def reached(self, count: int) -> None:
        if len(self.calls) < count:
            await self._marks.setdefault(count, asyncio.Event()).wait()


async def kill_meter(stage: Stage, progress: Progress, faults: Faults) -> None:
    """The meter SIGKILLed holding entries it read but has not acknowledged: stopped for a moment
    so a backlog builds, continued, killed as soon as the group shows the backlog's batch pending."""
    await progress.reached(METER_KILL_AT)
    client = aioredis.Redis.from_url(stage.redis.url)
    try:
        stage.meter.signal(signal.SIGSTOP)
        await asyncio.sleep(1.0)
        stage.meter.signal(signal.SIGCONT)
        deadline = time.monotonic() + 10
        # More than the one entry its blocked read may already hold: the backlog's batch.
        while (pending := int((await client.xpending(USAGE_STREAM, GROUP))["pending"])) < 10:
            assert time.monotonic() < deadline, "the meter read no batch of the backlog after SIGCONT"
            await asyncio.sleep(0.001)
        stage.meter.kill()
        faults.pending_at_kill = pending
    finally:
        await client.aclose()
    await asyncio.sleep(0.5)
    await asyncio.to_thread(stage.meter.start)


async def restart_postgres(stage: Stage, progress: Progress) -> None:
    """Stopped immediately (no checkpoint, like a crash) and started again."""
    await progress.reached(POSTGRES_AT)
    await asyncio.to_thread(stage.postgres.halt)
    await asyncio.sleep(DOWN_S)
    await asyncio.to_thread(stage.postgres.start)


async def restart_redis(stage: Stage, progress: Progress, faults: Faults) -> None:
    """SIGKILLed and started again on the same port and AOF."""
    await progress.reached(REDIS_AT)
    faults.redis_killed = time.monotonic()
    kill_redis(stage.redis)
    await asyncio.sleep(DOWN_S)
    await asyncio.to_thread(stage.redis.start)
    faults.redis_back = time.monotonic()


async def drive(stage: Stage) -> tuple[list[Sent], Faults]:
    progress = Progress()
    faults = Faults()
    numbers = iter(range(CALLS))
    connector = aiohttp.TCPConnector(limit=WORKERS)
    async with aiohttp.ClientSession(connector=connector, auto_decompress=False) as session:
        began = time.monotonic()

        async def worker() -> None:
            for n in numbers:
                # Paced: each fault then falls well inside the run, however fast the machine is.
                await asyncio.sleep(max(0.0, began + n / RATE - time.monotonic()))
                progress.add(await one_call(session, stage.gateway.origin, n))

        # Each fault on its own timer: one that takes long does not push the next one past the load.
        faults_done = asyncio.gather(
            kill_meter(stage, progress, faults),
            restart_postgres(stage, progress),
            restart_redis(stage, progress, faults),
        )
        await asyncio.gather(*(worker() for _ in range(WORKERS)))
        await faults_done
    return progress.calls, faults


def statuses(calls: list[Sent]) -> dict[str, int]:
    return dict(sorted(Counter(f"{c.key} {c.status} {c.code or ''}".strip() for c in calls).items()))


def caught_up(url: str) -> bool:
    """Every entry of the stream delivered to the meter's group and acknowledged."""
    client = redis.Redis.from_url(url)
    try:
        last = client.xinfo_stream(USAGE_STREAM)["last-generated-id"]
        group = next((g for g in client.xinfo_groups(USAGE_STREAM) if g["name"] == GROUP.encode()), None)
        return group is not None and group["pending"] == 0 and group["last-delivered-id"] == last
    finally:
        client.close()


def refused_events_lost(gateway: QuotaGateway) -> int:
    """Refused calls whose event append failed (Redis died between the refusal and the append;
    docs/metering.md, "Not built yet"), as the sidecar's log reports them."""
    log = gateway.dev.state_dir / "sidecar.log"
    return log.read_text(errors="replace").count("usage event of a refused call not recorded")


@pytest.mark.timeout(240)
async def test_chaos_during_2000_calls_loses_no_event_and_counts_none_twice(stage: Stage) -> None:
    began = time.monotonic()
    sent, faults = await drive(stage)
    load_s = time.monotonic() - began
    assert len(sent) == CALLS

    # What the client saw. FailOpen is always served; FailClosed keys get 503 only around the
    # Redis outage; the capped and rate-limited keys are refused once spent.
    slack = 2.5  # the store's 1 s timeout, its 0.5 s cool-down, reconnecting
    not_retried: list[Sent] = []
    for call in sent:
        outage = call.ended > faults.redis_killed - 0.5 and call.started < faults.redis_back + slack
        if call.status == 503 and call.kind == "fallback" and call.code != "quota_store_unavailable":
            not_retried.append(call)  # the first backend's own 503: no fallback (counted below)
        elif call.status == 503:
            assert call.key not in FAIL_OPEN and call.code == "quota_store_unavailable" and outage, call
        elif call.status == 429:
            assert (call.key, call.code) in {
                ("mcap", "insufficient_quota"),  # a spent budget
                ("mcap", "budget_exceeded"),  # a call whose reservation would pass the limit
                ("mrate", "rate_limit_exceeded"),
            }, call
        else:
            assert call.status == 200, (call, statuses(sent))
    # Envoy's default circuit breaker allows 3 retries in flight per cluster: a fallback over that
    # is not tried and the client gets the first backend's 503 (settled at 0, with its event).
    overflow = "cluster.tollway_route_default-chaos-fallback.upstream_rq_retry_overflow"
    assert len(not_retried) == envoy_counter(stage.gateway.dev.state_dir, overflow), not_retried
    served = [c for c in sent if c.status == 200]
    refused = [c for c in sent if c.status == 429]
    unavailable = [c for c in sent if c.status == 503 and c not in not_retried]
    assert {c.key for c in refused} == {"mcap", "mrate"}, statuses(sent)
    during = [c for c in sent if faults.redis_killed < c.started < faults.redis_back]
    assert any(c.key in FAIL_OPEN and c.status == 200 for c in during), [
        (c.key, c.status, round(c.started - faults.redis_killed, 3), round(c.ended - faults.redis_killed, 3))
        for c in sent
        if c.ended > faults.redis_killed - 1
    ][:60]

    # The gateway has settled everything (hung-up streams, settles retried, FailOpen counts sent).
    def settled() -> bool:
        spend = stage.gateway.spend()
        keys = spend.get("keys", {})
        return spend.get("pending_reconciliation") == 0 and all(
            keys[f"default/{k}"]["reserved_usd"] == "0" for k in ("mo", "mc", "mcap", "mrate")
        )

    wait_for(settled, "the gateway settled every call and reconciled FailOpen's counts", 30, 0.2)
    catch_up_s = wait_for(lambda: caught_up(stage.redis.url), "the meter caught up with the stream", 20, 0.2)
    assert stage.meter.alive(), f"the meter exited:\n{stage.meter.log_tail()}"
    metrics = stage.meter.metrics() or {}

    ledger: LedgerView = read_ledger(stage.dsn)
    lost_refused = refused_events_lost(stage.gateway)
    per_call = ledger.per_call()
    expected = {c.tag for c in (*served, *refused, *not_retried)}
    missing = expected - set(per_call)
    record(
        "metering chaos",
        calls=len(sent),
        load_seconds=round(load_s, 1),
        statuses=statuses(sent),
        served=len(served),
        refused=len(refused),
        unavailable_503=len(unavailable),
        ledger_events=ledger.rows,
        meter_pending_at_kill=faults.pending_at_kill,
        meter_duplicates_after_restart=metrics.get('tollway_meter_events_total{result="duplicate"}'),
        meter_ledger_errors=metrics.get("tollway_meter_ledger_errors_total"),
        meter_catch_up_s=round(catch_up_s, 1),
        refused_event_appends_failed=lost_refused,
        refused_events_missing=len(missing),
        fallback_not_retried=len(not_retried),
    )

    # Exactly one event per call that has one: no id twice, no call twice, none missing.
    assert faults.pending_at_kill > 0  # the kill left a read, unacknowledged batch behind
    assert ledger.rows == ledger.distinct_ids == ledger.gate_ids
    assert [tag for tag, count in per_call.items() if count > 1] == []
    assert set(per_call) <= expected, sorted(set(per_call) - expected)[:20]
    assert not missing & {c.tag for c in served}, sorted(missing)[:20]
    # A warning may also be logged when the append ran but its reply was lost: at most, not exactly.
    assert len(missing) <= lost_refused, sorted(missing)[:20]
    assert ledger.rows == len(served) + len(refused) + len(not_retried) - len(missing)

    # Each event says what the client saw.
    by_tag = {event.data.properties["call"]: event for event in ledger.events}
    for call in served:
        event = by_tag[call.tag]
        assert (event.data.status, event.data.outcome, event.subject) == (200, "ok", f"default/{call.key}")
        if call.cost is not None:  # the cost header of a JSON answer is the ledger's cost
            assert to_nano(Decimal(event.data.cost)) == to_nano(call.cost), (call, event.data.cost)
        if call.kind == "fallback":
            assert [a.backend for a in event.data.attempts] == ["chaos-broken", "chaos-spare"], event.data
    for call in refused:
        if call.tag in by_tag:
            event = by_tag[call.tag]
            assert (event.data.outcome, event.data.cost, event.data.billable) == ("denied", "0", False)
    for call in not_retried:
        event = by_tag[call.tag]
        assert (event.data.status, event.data.outcome, event.data.cost) == (503, "error", "0"), event.data
    hangups = [by_tag[c.tag] for c in served if c.kind == "hangup"]
    assert sum(e.data.tokens.output < 40 for e in hangups) > len(hangups) // 2  # really cut short

    # The ledger's money is /spend's, per key and per budget, to the nano-dollar.
    spend = stage.gateway.spend()
    per_key, per_budget = ledger.per_key(), ledger.per_budget()
    for key in ("mo", "mc", "mcap", "mrate"):
        name = f"default/{key}"
        assert per_key.get(name, 0) == to_nano(Decimal(spend["keys"][name]["spent_usd"])), (name, spend)
    for budget in ("mo-budget", "mc-budget", "mcap-budget"):
        name = f"default/{budget}"
        assert per_budget.get(name, 0) == to_nano(Decimal(spend["budgets"][name]["spent_usd"])), name
    assert per_key["default/mo"] > 0 and per_key["default/mcap"] > 0

    client = redis.Redis.from_url(stage.redis.url)
    try:
        assert client.xlen(USAGE_DEAD_LETTER_STREAM) == 0
    finally:
        client.close()

    # And the meter's own check says the same: no drift in any month the calls fell in.
    config = stage.config.parent / "compiled-config.json"
    compiled = run_tollway("compile", str(stage.config))
    assert compiled.returncode == 0, compiled.stderr
    config.write_text(compiled.stdout)
    for period in sorted({e.time.strftime("%Y-%m") for e in by_tag.values()}):
        reconcile = run_tollway(
            "meter",
            "reconcile",
            "--period",
            period,
            "--redis",
            stage.redis.url,
            "--db",
            stage.dsn,
            "--config",
            str(config),
        )
        assert reconcile.returncode == 0, f"drift in {period}:\n{reconcile.stdout}{reconcile.stderr}"
        compared = {row.split()[1] for row in reconcile.stdout.splitlines() if row.rstrip().endswith(" ok")}
        assert {f"default/{key}" for key in ("mo", "mc", "mcap", "mrate")} <= compared, reconcile.stdout


def run_tollway(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tollway", *args], capture_output=True, text=True, timeout=60, check=False
    )


@pytest.mark.timeout(120)
def test_a_batch_committed_while_redis_died_is_acknowledged_once_redis_is_back(
    tmp_path: Path, postgres: PostgresServer
) -> None:
    """The window the chaos run hits only sometimes, made certain: the meter has read a batch and
    its transaction is waiting; Redis is SIGKILLed; the commit goes through and the XACK fails.
    Once Redis is back (its AOF still lists the entries as pending to this meter) the meter must
    read them again at once, find them all in the ledger (duplicates) and acknowledge them, not
    leave them pending until another consumer's claim timeout (60 s)."""
    server = aof_redis(tmp_path / "redis")
    server.start()
    dsn = postgres.new_database()
    meter = Meter(server.url, dsn, tmp_path / "meter.log")
    events = spread(40)
    client = redis.Redis.from_url(server.url)
    try:
        for event in events:
            client.xadd(USAGE_STREAM, {USAGE_FIELD: event.to_json()})
        client.close()
        ledger = Ledger.open(dsn)
        ledger.migrate()
        ledger.close()
        with psycopg.connect(dsn) as blocker:
            # The batch's transaction reads `periods` first: an exclusive lock holds it there.
            blocker.execute("LOCK TABLE periods IN ACCESS EXCLUSIVE MODE")
            meter.start()
            wait_for(lambda: pending(server.url) == len(events), "the meter read the batch", 20, 0.02)
            kill_redis(server)
            blocker.rollback()  # the batch commits now; its XACK finds Redis gone
        wait_for(lambda: read_ledger(dsn).rows == len(events), "the batch committed", 20, 0.05)
        server.start()  # same port, same AOF: the entries are still pending to this meter
        seconds = wait_for(lambda: pending(server.url) == 0, "the meter acknowledged the batch", 15, 0.1)
        record("metering chaos", ack_after_redis_restart_s=round(seconds, 1))

        def counted() -> bool:  # the counters move just after the XACK
            metrics = meter.metrics() or {}
            return metrics.get('tollway_meter_events_total{result="duplicate"}') == len(events)

        wait_for(counted, "the second delivery counted as duplicates", 5, 0.05)
        view = read_ledger(dsn)
        assert view.rows == view.distinct_ids == len(events)
        assert meter.alive(), meter.log_tail()
    finally:
        meter.stop()
        server.stop()


def pending(url: str) -> int:
    client = redis.Redis.from_url(url)
    try:
        return int(client.xpending(USAGE_STREAM, GROUP)["pending"])
    except (redis.ConnectionError, redis.ResponseError):
        return -1
    finally:
        client.close()
