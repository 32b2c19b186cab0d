"""The sidecar SIGKILLed under load: what clients get, how fast the gateway serves again, and what
the calls it held are charged (their reservations expire and stay charged at their estimate).

Two settings: `tollway dev` (the CLI, which should restart its sidecar) and two gateways on one
Redis (replicas: the survivor keeps serving and its scripts sweep the dead one's reservations).
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest
from reliability_env import (
    COST,
    RESERVED,
    QuotaGateway,
    RedisServer,
    budget_yaml,
    config_folder,
    env_overrides,
    get_json,
    key_yaml,
    provider_key,
    record,
    routes_yaml,
    start_gateway,
)
from reliability_load import Call, Load, now

from tollway.dev import free_port

TTL_S = 4.0  # TOLLWAY_QUOTA_RESERVATION_TTL_SECONDS for these gateways (600 s by default)
RECOVERY_MAX_S = 10.0
SLOW = {"x-mock-latency-ms": "150"}  # keeps several calls in flight, each holding a reservation
RESOURCES = budget_yaml("kill-budget", "100", "failurePolicy: FailClosed") + key_yaml(
    "kill", "budgetRefs: [kill-budget]"
)
INDEX = "tw:{default}:rz"  # the namespace's open reservations (a sorted set by expiry)


def redis_command(port: int, *args: str) -> bytes:
    """One RESP command on a fresh connection; the raw reply."""
    payload = f"*{len(args)}\r\n" + "".join(f"${len(a.encode())}\r\n{a}\r\n" for a in args)
    with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
        sock.sendall(payload.encode())
        return sock.recv(65536)


def open_reservations(redis: RedisServer) -> set[bytes]:
    """The ids of the namespace's open reservations."""
    reply = redis_command(redis.port, "ZRANGE", INDEX, "0", "-1")
    assert reply.startswith(b"*"), reply
    lines = reply.split(b"\r\n")
    return {line for line in lines[2::2] if line}


def statuses(calls: list[Call]) -> dict[str, int]:
    return dict(sorted(Counter(f"{c.status} {c.code or ''}".strip()[:60] for c in calls).items()))


def shaped_5xx_or_ok(calls: list[Call]) -> list[Call]:
    """The calls that got neither a 200 nor a 5xx in the OpenAI error shape (a hang, a reset, …)."""
    return [
        c for c in calls if c.status != 200 and not (c.status >= 500 and c.code is not None and c.status != 0)
    ]


async def wait_spend_settled(admin_url: str, key: str, seconds: float) -> dict[str, object]:
    """/spend (whose read sweeps expired reservations) once the key holds nothing reserved."""
    deadline = now() + seconds
    while True:
        entry = (await asyncio.to_thread(get_json, f"{admin_url}/spend"))["keys"][key]
        if entry["reserved_usd"] == "0" or now() > deadline:
            return dict(entry)
        await asyncio.sleep(0.25)


def assert_charged_as_documented(entry: dict[str, object], orphans: int) -> None:
    """Each admitted call is settled at its price (COST) or expired at its estimate (RESERVED)."""
    requests, expired = int(str(entry["requests"])), int(str(entry["expired_reservations"]))
    assert entry["reserved_usd"] == "0", entry
    assert expired == orphans, f"{expired} reservations expired, {orphans} were open when the sidecar died"
    assert Decimal(str(entry["spent_usd"])) == (requests - expired) * COST + expired * RESERVED, entry


# --- two replicas on one Redis ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def replicas(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[RedisServer, QuotaGateway, QuotaGateway]]:
    base = tmp_path_factory.mktemp("sidecar-kill")
    redis = RedisServer(base / "redis")
    redis.start()
    mock_port = free_port()
    folder = config_folder(base, mock_port, routes_yaml(mock_port, provider_key()) + RESOURCES)
    try:
        with env_overrides({"TOLLWAY_QUOTA_RESERVATION_TTL_SECONDS": str(TTL_S)}):
            first = start_gateway(base / "a", folder, redis.url, mock_port=mock_port)
            try:
                second = start_gateway(
                    base / "b", folder, redis.url, mock_port=mock_port, mock_provider=False
                )
            except BaseException:
                first.dev.stop()
                raise
        try:
            yield redis, first, second
        finally:
            second.dev.stop()
            first.dev.stop()
    finally:
        redis.stop()


@pytest.mark.timeout(60)
async def test_a_killed_replica_fails_fast_the_other_serves_and_its_reservations_expire_at_the_estimate(
    replicas: tuple[RedisServer, QuotaGateway, QuotaGateway],
) -> None:
    redis, first, second = replicas
    load = Load([first.origin, second.origin], ["kill"], workers=3, headers=SLOW, timeout_s=10)
    await load.start()
    await asyncio.sleep(1.0)
    sidecar = next(process for name, process in first.dev.processes if name == "sidecar")
    killed = now()
    os.kill(sidecar.pid, signal.SIGKILL)
    await asyncio.to_thread(sidecar.wait)
    at_kill = open_reservations(redis)
    await asyncio.sleep(1.5)
    await load.stop()
    # The survivor's /spend waits for its settles already started; the dead one's never come.
    await asyncio.to_thread(get_json, f"{second.admin_url}/spend")
    left = open_reservations(redis)
    assert left <= at_kill, "only the killed sidecar's reservations stay open"
    orphans = len(left)
    entry = await wait_spend_settled(second.admin_url, "default/kill", TTL_S + 5)

    after_first = [c for c in load.calls if c.origin == first.origin and c.started > killed]
    after_second = [c for c in load.calls if c.origin == second.origin and c.started > killed]
    record(
        "sidecar killed (two replicas)",
        calls=len(load.calls),
        killed_replica_after_kill=statuses(after_first),
        other_replica_after_kill=statuses(after_second),
        reservations_open_at_kill=orphans,
        expired_reservations=entry["expired_reservations"],
        requests_admitted=entry["requests"],
        spent_usd=entry["spent_usd"],
        killed_replica_worst_answer_s=round(max((c.ended - c.started for c in after_first), default=0), 2),
    )
    assert orphans > 0, "the killed sidecar held reservations (calls were in flight)"
    assert after_second and all(c.status == 200 for c in after_second), statuses(after_second)
    assert after_first and not shaped_5xx_or_ok(after_first), statuses(shaped_5xx_or_ok(after_first))
    assert max(c.ended - c.started for c in after_first) < 3, "a call to the dead replica hung"
    assert_charged_as_documented(entry, orphans)


# --- `tollway dev` ------------------------------------------------------------------------------


def children_of(pid: int) -> dict[int, str]:
    """Live child processes of `pid`, with their command lines (Linux /proc)."""
    found: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid and fields[0] != "Z":
                found[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, IndexError, ValueError):
            continue
    return found


def sidecar_pid(dev_pid: int) -> int | None:
    return next(
        (pid for pid, cmd in children_of(dev_pid).items() if cmd.rstrip().endswith("tollway sidecar")), None
    )


@pytest.fixture
def dev_cli(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], RedisServer, str, str]]:
    redis = RedisServer(tmp_path / "redis")
    redis.start()
    mock_port, port, admin_port = free_port(), free_port(), free_port()
    folder = config_folder(tmp_path, mock_port, routes_yaml(mock_port, provider_key()) + RESOURCES)
    argv = [sys.executable, "-m", "tollway", "dev", "--config", str(folder), "--port", str(port)]
    argv += ["--admin-port", str(admin_port), "--mock-port", str(mock_port), "--redis", redis.url]
    argv += ["--state-dir", str(tmp_path / "state"), "--console-port", str(free_port())]
    env = {**os.environ, "TOLLWAY_QUOTA_RESERVATION_TTL_SECONDS": str(TTL_S)}
    with open(tmp_path / "dev.log", "ab") as log:
        dev = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while b"Tollway gateway ready" not in (tmp_path / "dev.log").read_bytes():
            assert dev.poll() is None and time.monotonic() < deadline, (tmp_path / "dev.log").read_text()[
                -3000:
            ]
            time.sleep(0.1)
        yield dev, redis, f"http://127.0.0.1:{port}", f"http://127.0.0.1:{admin_port}"
    finally:
        if dev.poll() is None:
            os.killpg(dev.pid, signal.SIGTERM)
            try:
                dev.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(dev.pid, signal.SIGKILL)
                dev.wait()
        redis.stop()


@pytest.mark.timeout(90)
async def test_tollway_dev_restarts_a_killed_sidecar_and_its_reservations_expire_at_the_estimate(
    dev_cli: tuple[subprocess.Popen[bytes], RedisServer, str, str],
) -> None:
    dev, redis, origin, admin_url = dev_cli
    pid = sidecar_pid(dev.pid)
    assert pid is not None, children_of(dev.pid)
    load = Load([origin], ["kill"], workers=4, headers=SLOW, timeout_s=10)
    await load.start()
    await asyncio.sleep(1.0)
    killed = now()
    os.kill(pid, signal.SIGKILL)
    await asyncio.sleep(0.3)  # a settle already written to the socket may still land
    orphans = len(open_reservations(redis))
    recovered: float | None = None
    while now() - killed < RECOVERY_MAX_S + 2 and recovered is None:
        await asyncio.sleep(0.2)
        served = [c.ended for c in load.calls if c.started > killed and c.status == 200]
        recovered = min(served) - killed if served else None
    await asyncio.sleep(1.0)
    await load.stop()
    gap = [
        c for c in load.calls if c.started > killed and (recovered is None or c.ended < killed + recovered)
    ]
    record(
        "sidecar killed (tollway dev)",
        calls=len(load.calls),
        answers_while_down=statuses(gap),
        recovery_s=None if recovered is None else round(recovered, 2),
        reservations_open_at_kill=orphans,
        dev_still_running=dev.poll() is None,
    )
    assert orphans > 0, "the killed sidecar held reservations (calls were in flight)"
    assert dev.poll() is None, "tollway dev exited when its sidecar died"
    assert recovered is not None and recovered < RECOVERY_MAX_S, "the gateway did not serve again"
    assert not shaped_5xx_or_ok(gap), statuses(shaped_5xx_or_ok(gap))
    entry = await wait_spend_settled(admin_url, "default/kill", TTL_S + 5)
    record(
        "sidecar killed (tollway dev)",
        expired_reservations=entry["expired_reservations"],
        spent_usd=entry["spent_usd"],
    )
    assert_charged_as_documented(entry, orphans)
