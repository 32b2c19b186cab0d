"""Two gateways (each its own Envoy and sidecar) on a real Redis Cluster (3 primaries, 3 replicas):
budgets of namespaces on different primaries admit exactly what they are worth; a primary SIGKILLed
mid-run is answered by the default failure policy (FailClosed: 503) until its replica is promoted,
and what the failover loses is bounded by what the dead primary had not yet replicated (made certain
by cutting the replica off first in one test); under FailOpen the calls go on, each gateway holding
the budget by its last read, and everything served blind reaches the promoted replica."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import time
import urllib.error
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal

import pytest
from redis.crc import key_slot
from rediscluster import RedisCluster
from reliability_env import (
    RESERVED,
    Client,
    QuotaGateway,
    RedisServer,
    Reply,
    budget_yaml,
    chat_body,
    config_folder,
    get_json,
    key_value,
    key_yaml,
    provider_key,
    record,
    start_gateway,
)

from tollway.ports import free_port

# Namespaces whose hash tags ({<namespace>}) fall in three different thirds of the slot space, so
# `redis-cli --cluster create` gives each its own primary (checked against the cluster below).
RACE_A, RACE_B, FAILOVER = "team-a", "team-b", "team-c"
N_A, N_B, N_FAILOVER = 60, 25, 60
# On team-a's primary (slot 4978 beside 983), with a replica of its own whatever ran before.
STALLED, STALLED_CALLS = "team-d", 8
# On team-b's primary (slot 13104 beside 13236), the one no other failover kills: FailOpen.
OPEN, N_OPEN = "team-f", 60
CALLS_A, CALLS_B = 200, 100
# The mock reports the gateway's own prompt estimate (9 tokens), so each call costs exactly what it
# reserves: a budget then admits exactly its worth in calls, whatever their order.
EXACT = {"x-mock-prompt-tokens": "9"}

ROUTE = """\
---
apiVersion: v1
kind: Secret
metadata: {{name: cl-provider}}
stringData: {{apiKey: {provider_key}}}
---
apiVersion: tollway.dev/v1alpha1
kind: RouteRule
metadata: {{name: cl-chat}}
spec:
  model: cl-chat
  timeout: 5s
  allowedNamespaces: ["*"]
  backends:
    - name: cl-mock
      provider: openai-compatible
      model: gpt-4o-mini
      baseURL: http://127.0.0.1:{mock_port}/v1
      credentialsSecretRef: {{name: cl-provider, key: apiKey}}
      pricing: {{inputPerMillion: "0.15", outputPerMillion: "0.60"}}
"""


def in_namespace(resources: str, namespace: str) -> str:
    """The helpers' resources (no namespace: `default`) placed in `namespace`."""
    return resources.replace("metadata: {name: ", f"metadata: {{namespace: {namespace}, name: ")


def tenant(namespace: str, calls: int, policy: str = "FailClosed") -> str:
    """A VirtualKey named after its namespace with a Total budget worth exactly `calls` calls."""
    budget = budget_yaml(f"{namespace}-budget", calls * RESERVED, f"period: Total\nfailurePolicy: {policy}")
    key = key_yaml(namespace, f"budgetRefs: [{namespace}-budget]")
    return in_namespace(budget + key, namespace)


@dataclass
class Stage:
    cluster: RedisCluster
    gateways: tuple[QuotaGateway, QuotaGateway]


@pytest.fixture(scope="module")
def stage(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stage]:
    base = tmp_path_factory.mktemp("cluster-gateways")
    cluster = RedisCluster(base / "cluster")
    try:
        cluster.start()
        mock_port = free_port()
        resources = (
            ROUTE.format(mock_port=mock_port, provider_key=provider_key())
            + "".join(
                tenant(ns, n)
                for ns, n in ((RACE_A, N_A), (RACE_B, N_B), (FAILOVER, N_FAILOVER), (STALLED, N_FAILOVER))
            )
            + tenant(OPEN, N_OPEN, "FailOpen")
        )
        folder = config_folder(base, mock_port, resources)
        first = start_gateway(base / "a", folder, cluster.url, mock_port=mock_port)
        try:
            second = start_gateway(base / "b", folder, cluster.url, mock_port=mock_port, mock_provider=False)
            try:
                yield Stage(cluster, (first, second))
            finally:
                second.dev.stop()
        finally:
            first.dev.stop()
    finally:
        cluster.stop()


# --- the cluster's topology, read from CLUSTER NODES ---------------------------------------------


@dataclass(frozen=True)
class Node:
    id: str
    port: int
    primary: bool
    primary_id: str  # "-" for a primary
    slots: tuple[tuple[int, int], ...]


def nodes(cluster: RedisCluster) -> list[Node]:
    alive = next(s for s in cluster.servers if s.process is not None)
    found = []
    for line in cluster.cli(alive.port, "cluster", "nodes").splitlines():
        fields = line.split()
        if len(fields) < 8 or "fail" in fields[2]:
            continue
        ranges = []
        for spec in fields[8:]:
            if match := re.fullmatch(r"(\d+)(?:-(\d+))?", spec):
                ranges.append((int(match[1]), int(match[2] or match[1])))
        port = int(fields[1].split("@")[0].rsplit(":", 1)[1])
        found.append(Node(fields[0], port, "master" in fields[2], fields[3], tuple(ranges)))
    return found


def primary_of(cluster: RedisCluster, namespace: str) -> Node:
    slot = key_slot(namespace.encode())
    return next(n for n in nodes(cluster) if n.primary and any(a <= slot <= b for a, b in n.slots))


def holds_slot(cluster: RedisCluster, namespace: str, port: int) -> bool:
    """Whether the primary at `port` now serves `namespace`'s slot (False while none does)."""
    try:
        return primary_of(cluster, namespace).port == port
    except StopIteration:
        return False


def server(cluster: RedisCluster, port: int) -> RedisServer:
    return next(s for s in cluster.servers if s.port == port)


def info_field(cluster: RedisCluster, port: int, name: str) -> int:
    text = cluster.cli(port, "info", "replication")
    match = re.search(rf"^{name}:(\d+)", text, re.MULTILINE)
    assert match, f"{name} in INFO replication of :{port}"
    return int(match[1])


# --- calls ---------------------------------------------------------------------------------------


def headers_for(namespace: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key_value(namespace)}", "content-type": "application/json", **EXACT}


def code(reply: Reply) -> str:
    return f"{reply.status} {(reply.error_object() or {}).get('code', '')}".strip()


def pending_reconciliation(gateway: QuotaGateway) -> int:
    """Counts and settles the gateway still keeps for the store (-1 while /spend cannot answer)."""
    try:
        return int(get_json(f"{gateway.admin_url}/spend")["pending_reconciliation"])
    except urllib.error.HTTPError:
        return -1


def budget_of(gateway: QuotaGateway, namespace: str, *, tries: int = 1) -> dict[str, str]:
    """The budget's figures from `/spend`. After a failover a client that last spoke to the dead
    primary fails its first read (503) and learns the new slots for the next: `tries` allows that."""
    url = f"{gateway.admin_url}/spend"
    for _ in range(tries - 1):
        try:
            return dict(get_json(url)["budgets"][f"{namespace}/{namespace}-budget"])
        except urllib.error.HTTPError as exc:
            if exc.code != 503:
                raise
            time.sleep(0.2)
    return dict(get_json(url)["budgets"][f"{namespace}/{namespace}-budget"])


@pytest.mark.timeout(120)
async def test_two_gateways_on_a_redis_cluster_admit_exactly_each_budgets_worth(stage: Stage) -> None:
    owners = {ns: primary_of(stage.cluster, ns).port for ns in (RACE_A, RACE_B, FAILOVER)}
    assert len(set(owners.values())) == 3, f"each namespace on its own primary: {owners}"
    one, two = stage.gateways
    async with Client(one.origin, limit=12) as first, Client(two.origin, limit=12) as second:
        clients = [first, second]
        calls = [(RACE_A, i) for i in range(CALLS_A)] + [(RACE_B, i) for i in range(CALLS_B)]
        replies: list[Reply] = await asyncio.gather(
            *(
                clients[i % 2].send("POST", "/v1/chat/completions", chat_body("cl-chat"), headers_for(ns))
                for ns, i in calls
            )
        )
    for namespace, worth, count in ((RACE_A, N_A, CALLS_A), (RACE_B, N_B, CALLS_B)):
        mine = [r for (ns, _), r in zip(calls, replies, strict=True) if ns == namespace]
        admitted = [r for r in mine if r.status == 200]
        refused = [r for r in mine if r.status != 200]
        codes = Counter(code(r) for r in mine)
        budget = await asyncio.to_thread(budget_of, one, namespace)
        other = await asyncio.to_thread(budget_of, two, namespace)
        headers_sum = sum((r.cost or Decimal(0) for r in admitted), Decimal(0))
        record(
            f"two gateways on a Redis Cluster ({namespace})",
            calls=count,
            budget_for_calls=worth,
            primary_port=owners[namespace],
            by_status=dict(sorted(codes.items())),
            limit_usd=budget["limit_usd"],
            spent_usd=budget["spent_usd"],
            sum_of_cost_headers_usd=str(headers_sum),
        )
        assert len(admitted) == worth, codes
        assert len(refused) == count - worth and all(
            r.status == 429 and (r.error_object() or {}).get("code") == "budget_exceeded" for r in refused
        ), codes
        assert all(r.cost == RESERVED for r in admitted), {r.cost for r in admitted}
        assert headers_sum == Decimal(budget["spent_usd"]) == Decimal(budget["limit_usd"]) == worth * RESERVED
        assert budget["reserved_usd"] == "0"
        assert other == budget, "both gateways read the same spend from the cluster"


@dataclass
class Run:
    """Calls from both gateways, `workers` at a time each, until `stop` is set."""

    replies: list[Reply]
    stop: asyncio.Event


async def keep_calling(clients: list[Client], namespace: str, workers: int, run: Run) -> None:
    async def worker(client: Client) -> None:
        while not run.stop.is_set():
            reply = await client.send(
                "POST", "/v1/chat/completions", chat_body("cl-chat"), headers_for(namespace), timeout_s=20
            )
            run.replies.append(reply)

    await asyncio.gather(*(worker(c) for c in clients for _ in range(workers)))


async def until(check: Callable[[], bool], what: str, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, f"{what} within {seconds:.0f} s"
        await asyncio.sleep(0.02)


@dataclass
class Failover:
    """What one failover run saw; `stalled_at` when the replica was cut off before the kill."""

    namespace: str
    replies: list[Reply]
    killed_port: int
    replica_port: int
    promoted_port: int
    unreplicated_bytes: int
    stalled_at: float | None
    killed_at: float
    recovered_at: float
    budgets: tuple[dict[str, str], dict[str, str]]


async def fail_over(stage: Stage, namespace: str, *, stalled_calls: int = 0) -> Failover:
    """Calls on `namespace` from both gateways; once half its budget is admitted, SIGKILL the
    primary of its slot and go on until the promoted replica has refused 20 calls (budget spent).
    `stalled_calls`: first cut the replica off (SIGSTOP, then the primary drops its link, so it
    cannot reconnect) and let that many calls be admitted on the primary alone: writes that are
    certainly unreplicated when it dies (on loopback the replica is otherwise never behind)."""
    victim_node = primary_of(stage.cluster, namespace)
    replica_node = next(n for n in nodes(stage.cluster) if n.primary_id == victim_node.id)
    victim, replica = server(stage.cluster, victim_node.port), server(stage.cluster, replica_node.port)
    assert victim.process is not None and replica.process is not None
    one, two = stage.gateways
    run = Run([], asyncio.Event())
    stalled_at = None
    async with Client(one.origin, limit=8) as first, Client(two.origin, limit=8) as second:
        load = asyncio.create_task(keep_calling([first, second], namespace, 4, run))
        try:
            await until(lambda: sum(r.status == 200 for r in run.replies) >= N_FAILOVER // 2, "half", 60)
            # What the replica had not received when the primary died: the bytes of the replication
            # stream between the two offsets (each read just before, under load).
            replica_offset = info_field(stage.cluster, replica.port, "slave_repl_offset")
            if stalled_calls:
                os.kill(replica.process.pid, signal.SIGSTOP)
                stalled_at = since = time.monotonic()
                stage.cluster.cli(victim.port, "client", "kill", "type", "replica")
                await until(
                    lambda: sum(r.status == 200 and r.started > since for r in run.replies) >= stalled_calls,
                    "calls admitted on the primary alone",
                    30,
                )
            primary_offset = info_field(stage.cluster, victim.port, "master_repl_offset")
            killed_at = time.monotonic()
            os.kill(victim.process.pid, signal.SIGKILL)
            await asyncio.to_thread(victim.process.wait)
            victim.process = None
            if stalled_calls:
                os.kill(replica.process.pid, signal.SIGCONT)
            # Served again once a call started after the kill is admitted or refused by the budget.
            await until(
                lambda: any(r.started > killed_at and r.status in (200, 429) for r in run.replies),
                "the replica promoted and serving",
                60,
            )
            recovered_at = min(
                r.started for r in run.replies if r.started > killed_at and r.status in (200, 429)
            )
            await until(
                lambda: sum(r.started > recovered_at and r.status == 429 for r in run.replies) >= 20,
                "the budget spent after the failover",
                60,
            )
            # FailOpen answers (and refuses) before the promotion: keep calling until it is done.
            await until(lambda: holds_slot(stage.cluster, namespace, replica.port), "the promotion", 60)
        finally:
            run.stop.set()
            await load
    await until(lambda: not any(pending_reconciliation(g) for g in (one, two)), "local counts sent", 20)
    budgets = (
        await asyncio.to_thread(budget_of, one, namespace, tries=3),
        await asyncio.to_thread(budget_of, two, namespace, tries=3),
    )
    return Failover(
        namespace,
        run.replies,
        victim.port,
        replica.port,
        primary_of(stage.cluster, namespace).port,
        primary_offset - replica_offset,
        stalled_at,
        killed_at,
        recovered_at,
        budgets,
    )


def check_failover(run: Failover, section: str) -> Decimal:
    """The assertions both failovers share; records the figures; returns the calls lost."""
    replies = run.replies
    codes = Counter(code(r) for r in replies)
    admitted = [r for r in replies if r.status == 200]
    unavailable = [r for r in replies if r.status == 503]
    budget = run.budgets[0]
    headers_sum = sum((r.cost or Decimal(0) for r in admitted), Decimal(0))
    spent, limit = Decimal(budget["spent_usd"]), Decimal(budget["limit_usd"])
    # Calls charged in their answers that the surviving counters have not used: their reservation
    # or their settle reached the dead primary and not its replica.
    lost = (headers_sum - spent) / RESERVED
    overspend = max(headers_sum - limit, Decimal(0))
    # The only calls whose writes can be lost: admitted ones that overlap the window in which the
    # replica was behind (from the stall, or without one from any time before the kill).
    window_start = run.stalled_at if run.stalled_at is not None else float("-inf")
    in_window = sum(1 for r in admitted if r.ended >= window_start and r.started <= run.killed_at)
    record(
        section,
        calls=len(replies),
        budget_for_calls=N_FAILOVER,
        by_status=dict(sorted(codes.items())),
        killed_primary_port=run.killed_port,
        promoted_primary_port=run.promoted_port,
        unreplicated_bytes_at_kill=run.unreplicated_bytes,
        kill_to_first_answer_after_s=round(run.recovered_at - run.killed_at, 2),
        admitted=len(admitted),
        admitted_in_unreplicated_window=in_window,
        admitted_in_flight_at_kill=sum(1 for r in admitted if r.started <= run.killed_at <= r.ended),
        calls_lost_by_failover=str(lost),
        limit_usd=str(limit),
        spent_usd=str(spent),
        reserved_usd=budget["reserved_usd"],
        sum_of_cost_headers_usd=str(headers_sum),
        overspend_usd=f"{overspend:f}",
    )
    print(f"{section}: {dict(codes)} lost={lost} overspend={overspend:f} window={in_window}")

    assert run.promoted_port == run.replica_port, "the killed primary's replica took its slots"
    # Every answer is the budget's, or FailClosed's (the default failurePolicy) while the slot had no
    # primary; all in OpenAI's error shape.
    assert set(codes) <= {"200", "429 budget_exceeded", "503 quota_store_unavailable"}, codes
    assert unavailable, "the dead primary was met (no 503), so the failover was not exercised"
    assert all(r.ended > run.killed_at for r in unavailable), "503s only once the primary was killed"
    assert any(r.status == 200 and r.started > run.recovered_at for r in replies), "served after"
    # The counters never let more through than they know of: the overspend is at most the lost
    # calls, and those are calls admitted while the replica was behind.
    assert lost == lost.to_integral_value() and 0 <= lost <= in_window, (lost, in_window)
    assert overspend <= lost * RESERVED, (overspend, lost)
    assert spent <= limit
    assert all(r.cost == RESERVED for r in admitted), {r.cost for r in admitted}
    assert run.budgets[1] == budget, "both gateways read the same spend from the promoted replica"
    return lost


@pytest.mark.timeout(180)
async def test_a_primary_killed_mid_run_fails_closed_until_its_replica_serves_losing_only_unreplicated(
    stage: Stage,
) -> None:
    check_failover(await fail_over(stage, FAILOVER), "a Redis Cluster primary killed mid-run (FailClosed)")


@pytest.mark.timeout(180)
async def test_calls_the_replica_never_received_are_all_a_failover_can_overspend(stage: Stage) -> None:
    assert primary_of(stage.cluster, STALLED).port != primary_of(stage.cluster, FAILOVER).port
    run = await fail_over(stage, STALLED, stalled_calls=STALLED_CALLS)
    lost = check_failover(run, "a primary killed with its replica cut off (FailClosed)")
    assert run.unreplicated_bytes > 0
    assert lost >= STALLED_CALLS, "the calls admitted on the primary alone are lost with it"


@pytest.mark.timeout(180)
async def test_a_primary_killed_under_fail_open_serves_throughout_and_reconciles_what_it_served(
    stage: Stage,
) -> None:
    assert primary_of(stage.cluster, OPEN).port == primary_of(stage.cluster, RACE_B).port
    run = await fail_over(stage, OPEN)
    budgets = run.budgets
    replies = run.replies
    codes = Counter(code(r) for r in replies)
    admitted = [r for r in replies if r.status == 200]
    headers_sum = sum((r.cost or Decimal(0) for r in admitted), Decimal(0))
    spent, limit = Decimal(budgets[0]["spent_usd"]), Decimal(budgets[0]["limit_usd"])
    after_kill = [r for r in admitted if r.started > run.killed_at]
    in_flight = sum(1 for r in admitted if r.started <= run.killed_at <= r.ended)
    before = sum(1 for r in admitted if r.started <= run.killed_at)
    record(
        "a Redis Cluster primary killed mid-run (FailOpen)",
        calls=len(replies),
        budget_for_calls=N_OPEN,
        by_status=dict(sorted(codes.items())),
        admitted=len(admitted),
        admitted_before_kill=before,
        admitted_in_flight_at_kill=in_flight,
        admitted_after_kill=len(after_kill),
        limit_usd=str(limit),
        spent_usd=str(spent),
        reserved_usd=budgets[0]["reserved_usd"],
        sum_of_cost_headers_usd=str(headers_sum),
        overspend_usd=f"{max(headers_sum - limit, Decimal(0)):f}",
    )
    print(
        f"FailOpen: {dict(codes)} spent={spent} headers={headers_sum} before={before} in_flight={in_flight}"
    )
    assert run.promoted_port == run.replica_port, "the killed primary's replica took its slots"
    assert set(codes) <= {"200", "429 budget_exceeded"}, codes  # served through the failover
    assert all(r.cost == RESERVED for r in admitted), {r.cost for r in admitted}
    # What was left at the kill, at most: each gateway admits blind no more than that by its own
    # last read, and the promoted replica, until the blind counts reach it, no more than that again.
    remaining = N_OPEN - before + in_flight
    overspent_calls = max(headers_sum - limit, Decimal(0)) / RESERVED
    assert overspent_calls <= len(stage.gateways) * remaining, (overspent_calls, remaining)
    # Every blind call reached the promoted replica; only unreplicated writes of before the kill are lost.
    lost = (headers_sum - spent) / RESERVED
    assert lost == lost.to_integral_value() and 0 <= lost <= before, lost
    assert budgets[1] == budgets[0], "both gateways read the same spend from the promoted replica"
    assert budgets[0]["reserved_usd"] == "0"
