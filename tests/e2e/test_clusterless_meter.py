"""The meter with the chart's bundled PostgreSQL, end to end without a kubelet.

`helm install` with `meter.enabled` and `meter.postgresql.bundled.enabled` into the real API server;
then, from what the server stored:

- **the bundled PostgreSQL's Pod** → a private PostgreSQL (tests/ledger/pgserver.py) made the way
  the `postgres` image's entrypoint makes its database from the StatefulSet's environment: `initdb`
  with `POSTGRES_USER` as the superuser and `POSTGRES_PASSWORD` (the chart's Secret, as the server
  stores it) as its password, then `CREATE DATABASE $POSTGRES_DB`. Loopback stands for the Pod
  network, so connections over TCP need that password (scram-sha-256), as from another Pod.
- **the meter's Pod** → its Deployment's container run by e2e_pods.LocalPod from the meter image's
  venv (meter/Dockerfile), with its `TOLLWAY_METER_DB` read from the generated Secret and the
  Services `<release>-postgresql:5432` and `<release>-redis:6379` mapped to the local servers.
- **the gateway** → a usage event appended to the stream as the settle script does (the contract's
  JSON under its field); the gateway's own path to the stream is tests/integration's.

Then the README's last steps: the meter is ready (its readiness probe), the event reaches the
ledger (`/metrics`), `/v1/usage?by=model` on the `api` port and `tollway usage --by model` run with the
meter container's environment (what `kubectl exec deploy/…-meter -- tollway usage` runs) show it
with its exact cost. Not covered: the `postgres` image itself (its entrypoint under the chart's
non-root, read-only-root settings), the kubelet and kube-proxy.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis
from e2e_env import Cluster, require_tools
from e2e_pods import LocalPod, ServiceTarget, tollway_image
from harness import wait_for
from ledger_events import make_event
from pgserver import PostgresServer
from redisserver import RedisServer

from tollway_sidecar.contract.usage_event import USAGE_FIELD, USAGE_STREAM

RELEASE, NAMESPACE = "tw-ledger", "e2e-ledger"
FULLNAME = f"{RELEASE}-tollway"
COST = "0.000123456"


class ImagePostgres(PostgresServer):
    """A private cluster initialised as the postgres image does from POSTGRES_USER/PASSWORD/DB."""

    def __init__(self, user: str, password: str, database: str) -> None:
        super().__init__()
        self.superuser, self.password, self.database = user, password, database

    def start(self) -> None:
        if not self.data.exists():
            pwfile = self.workdir / "pwfile"
            pwfile.write_text(self.password + "\n")
            if self.user:
                shutil.chown(pwfile, self.user)
            made = self._run(
                str(self.bin / "initdb"),
                "-D",
                str(self.data),
                f"--username={self.superuser}",
                f"--pwfile={pwfile}",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "-E",
                "UTF8",
                "--no-sync",
            )
            pwfile.unlink()
            if made.returncode != 0:
                raise RuntimeError(f"initdb failed:\n{made.stdout}\n{made.stderr}")
        super().start()  # the data folder exists: pg_ctl start only
        # The entrypoint creates the database over the local socket, where it needs no password.
        with psycopg.connect(
            host=str(self.workdir), port=self.port, user=self.superuser, dbname="postgres", autocommit=True
        ) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (self.database,)).fetchone()
            if not exists:
                conn.execute(f'CREATE DATABASE "{self.database}"')


def container_env(cluster: Cluster, container: dict[str, Any]) -> dict[str, str]:
    """A container's variables with each secretKeyRef read from the server's Secret."""
    env = {}
    for item in container["env"]:
        if "value" in item:
            env[item["name"]] = item["value"]
            continue
        ref = item["valueFrom"]["secretKeyRef"]
        secret = cluster.get("secret", ref["name"], NAMESPACE)
        assert secret is not None, f"no Secret {ref['name']}"
        env[item["name"]] = base64.b64decode(secret["data"][ref["key"]]).decode()
    return env


@dataclass
class MeterStack:
    meter: LocalPod
    redis: RedisServer


@pytest.fixture(scope="module")
def stack(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MeterStack]:
    require_tools("redis-server", "postgres")
    work = tmp_path_factory.mktemp("clusterless-meter")
    cluster.install(
        RELEASE,
        NAMESPACE,
        "--set",
        "meter.enabled=true",
        "--set",
        "meter.postgresql.bundled.enabled=true",
        "--set",
        "crds.install=false",
    )
    statefulset = cluster.get("statefulset", f"{FULLNAME}-postgresql", NAMESPACE)
    assert statefulset is not None
    (postgresql,) = statefulset["spec"]["template"]["spec"]["containers"]
    pg_env = container_env(cluster, postgresql)
    postgres = ImagePostgres(pg_env["POSTGRES_USER"], pg_env["POSTGRES_PASSWORD"], pg_env["POSTGRES_DB"])
    redis_server = RedisServer(work / "redis")
    meter: LocalPod | None = None
    try:
        postgres.start()
        redis_server.start()
        deployment = cluster.get("deployment", f"{FULLNAME}-meter", NAMESPACE)
        assert deployment is not None
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        services = [
            ServiceTarget(
                f"{FULLNAME}-redis", NAMESPACE, 6379, f"127.0.0.1:{redis_server.port}", "local redis-server"
            ),
            ServiceTarget(
                f"{FULLNAME}-postgresql",
                NAMESPACE,
                5432,
                f"127.0.0.1:{postgres.port}",
                "local PostgreSQL initialised from the StatefulSet's environment",
            ),
        ]
        for name, _ns, port, *_ in services:  # each is a Service the chart made, with that port
            svc = cluster.get("service", name, NAMESPACE)
            assert svc is not None and port in {p["port"] for p in svc["spec"]["ports"]}, (name, port)
        meter = LocalPod.from_deployment(
            cluster,
            deployment,
            work / "meter",
            images={container["image"]: tollway_image(container["image"])},
            services=services,
        )
        meter.start()
        try:
            meter.wait_ready(120)
        except Exception as exc:
            raise AssertionError(f"the meter never got ready:\n{meter.containers[0].tail()}") from exc
        yield MeterStack(meter, redis_server)
    finally:
        if meter is not None:
            meter.stop()
        redis_server.stop()
        postgres.stop()


def get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        return str(response.read().decode())


def test_a_call_shows_in_the_meters_ledger_on_the_bundled_database(stack: MeterStack) -> None:
    event = make_event(at=datetime.now(UTC), cost=COST, model="gpt-4o-mini")
    client = redis.Redis.from_url(stack.redis.url)
    try:
        client.xadd(USAGE_STREAM, {USAGE_FIELD: event.to_json()})
    finally:
        client.close()

    metrics_url = f"http://127.0.0.1:{stack.meter.ports['metrics']}/metrics"
    wait_for(
        lambda: 'tollway_meter_events_total{result="inserted"} 1.0' in get(metrics_url),
        30,
        "the event in the ledger",
    )
    usage = json.loads(get(f"http://127.0.0.1:{stack.meter.ports['api']}/v1/usage?by=model"))
    assert [(r["model"], r["requests"], r["cost_usd"]) for r in usage["rows"]] == [("gpt-4o-mini", 1, COST)]

    # `kubectl exec deploy/<release>-meter -- tollway usage --by model`: the container's own
    # executable and environment.
    (container,) = stack.meter.containers
    shown = subprocess.run(
        [container.argv[0], "usage", "--by", "model", "--since", "1d"],
        env=container.env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert shown.returncode == 0, shown.stderr
    (row,) = [line.split() for line in shown.stdout.splitlines() if line.startswith("gpt-4o-mini")]
    assert row[:3] == ["gpt-4o-mini", "1", COST], shown.stdout
    stack.meter.check_alive()


def test_the_mapped_pod_read_the_dsn_from_the_generated_secret(stack: MeterStack) -> None:
    """The DSN came from the Secret the chart generated, and no log line shows its password."""
    assert any("Secret tw-ledger-tollway-postgresql key dsn" in m for m in stack.meter.mappings)
    (container,) = stack.meter.containers
    password = container.env["TOLLWAY_METER_DB"].split("://", 1)[1].split("@", 1)[0].split(":", 1)[1]
    assert len(password) == 32
    assert all(password not in m for m in stack.meter.mappings)
    assert password not in Path(str(container.log)).read_text()
