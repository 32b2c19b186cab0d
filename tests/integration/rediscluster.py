"""A real Redis Cluster for the tests: 3 primaries and 3 replicas (`redis-server --cluster-enabled
yes` x 6 on free loopback ports, joined by `redis-cli --cluster create --cluster-replicas 1`)."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from redisserver import RedisServer, redis_binary

from tollway.ports import free_port

NODE_TIMEOUT_MS = 1000  # how soon a replica takes over a failed primary


def redis_cli() -> str:
    """redis-cli, which the redis-server package provides beside redis-server."""
    server = Path(redis_binary())
    found = server.with_name("redis-cli") if server.with_name("redis-cli").exists() else None
    path = str(found) if found else shutil.which("redis-cli")
    if path is None:
        raise RuntimeError("redis-cli is not available (it comes with redis-server: run `make tools`)")
    return path


class RedisCluster:
    def __init__(self, workdir: Path, nodes: int = 6) -> None:
        config = {
            "cluster-enabled": "yes",
            "cluster-node-timeout": str(NODE_TIMEOUT_MS),
            "cluster-config-file": "nodes.conf",
        }
        # The bus port picked like the client port: port + 10000 (the default) may be taken or past 65535.
        self.servers = [
            RedisServer(workdir / f"node{i}", config={**config, "cluster-port": str(free_port())})
            for i in range(nodes)
        ]

    @property
    def url(self) -> str:
        seeds = ",".join(f"127.0.0.1:{s.port}" for s in self.servers[:3])
        return f"redis+cluster://{seeds}"

    def cli(self, port: int, *args: str) -> str:
        done = subprocess.run(
            [redis_cli(), "-h", "127.0.0.1", "-p", str(port), *args],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        return done.stdout

    def start(self) -> None:
        for server in self.servers:
            server.start()
        hosts = [f"127.0.0.1:{s.port}" for s in self.servers]
        self.cli(
            self.servers[0].port, "--cluster", "create", *hosts, "--cluster-replicas", "1", "--cluster-yes"
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            # Slots served, and each replica's link to its primary up (its first sync done).
            if all("cluster_state:ok" in self.cli(s.port, "cluster", "info") for s in self.servers) and all(
                "connected_slaves:1" in info or "master_link_status:up" in info
                for info in (self.cli(s.port, "info", "replication") for s in self.servers)
            ):
                return
            time.sleep(0.1)
        raise RuntimeError("the Redis Cluster did not reach cluster_state:ok within 30 s")

    def stop(self) -> None:
        for server in self.servers:
            server.stop()


@pytest.fixture(scope="session", name="redis_cluster")
def redis_cluster_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    cluster = RedisCluster(tmp_path_factory.mktemp("rcluster"))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
