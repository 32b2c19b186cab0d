"""A local Redis Cluster for the `tollway-cluster` system: 3 primaries and 3 replicas
(`redis-server --cluster-enabled yes` x 6 on free ports, joined by `redis-cli --cluster create
--cluster-replicas 1`), the layout tests/integration/rediscluster.py gives the tests."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from bench.procs import Proc
from bench.systems import BenchError, Children, wait_for
from tollway.ports import free_port

NODES = 6


def redis_cli(server: str) -> str:
    """redis-cli, which comes beside redis-server (the Debian package, the tools script)."""
    beside = Path(server).with_name("redis-cli")
    found = str(beside) if beside.exists() else shutil.which("redis-cli")
    if found is None:
        raise BenchError("redis-cli not found beside redis-server nor on PATH")
    return found


def start_redis_cluster(children: Children, server: str, state_dir: Path) -> tuple[str, list[Proc]]:
    """The cluster's `redis+cluster://` URL (three of its nodes as seeds) and its
    six processes (for the CPU and memory figures)."""
    cli = redis_cli(server)
    ports = [free_port() for _ in range(NODES)]
    procs = []
    for i, port in enumerate(ports):
        folder = state_dir / f"redis-cluster-{i}"
        folder.mkdir(parents=True, exist_ok=True)
        argv = [
            server,
            *("--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"),
            *("--dir", str(folder), "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"),
            # The bus port picked like the client port (port + 10000 may be taken or past 65535).
            *("--cluster-port", str(free_port()), "--cluster-node-timeout", "5000"),
        ]
        procs.append(children.spawn(f"redis-cluster-{i}", argv))

    def answers(port: int, *args: str) -> str:
        done = subprocess.run(
            [cli, "-h", "127.0.0.1", "-p", str(port), *args],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        return done.stdout

    def alive() -> None:
        for i in range(NODES):
            children.check(f"redis-cluster-{i}")

    wait_for(
        lambda: all(answers(p, "ping").strip() == "PONG" for p in ports), "Redis Cluster nodes", 20, alive
    )
    hosts = [f"127.0.0.1:{p}" for p in ports]
    created = subprocess.run(
        [cli, "--cluster", "create", *hosts, "--cluster-replicas", "1", "--cluster-yes"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if created.returncode != 0:
        raise BenchError(f"redis-cli --cluster create failed: {created.stdout[-500:]}{created.stderr[-500:]}")
    wait_for(
        lambda: all("cluster_state:ok" in answers(p, "cluster", "info") for p in ports),
        "Redis Cluster (cluster_state:ok on every node)",
        30,
        alive,
    )
    return "redis+cluster://" + ",".join(hosts[:3]), procs
