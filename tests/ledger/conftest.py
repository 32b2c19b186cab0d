"""The ledger tier: the shared ledger suite on SQLite and on a real PostgreSQL (a private cluster
made with initdb on a free port), and the stream consumer against a real redis-server."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from pgserver import PostgresServer

from tollway_meter.ledger import Ledger

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT / "tests" / "integration") not in sys.path:
    sys.path.insert(0, str(ROOT / "tests" / "integration"))

from rediscluster import redis_cluster_fixture  # noqa: E402, F401  (the shared fixture)
from redisserver import RedisServer, redis_server_fixture  # noqa: E402, F401  (the shared fixture)


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    server = PostgresServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def ledger_dsn(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'ledger.db'}"
    server: PostgresServer = request.getfixturevalue("postgres")
    return server.new_database()


@pytest.fixture
def ledger(ledger_dsn: str) -> Iterator[Ledger]:
    opened = Ledger.open(ledger_dsn)
    opened.migrate()
    try:
        yield opened
    finally:
        opened.close()


@pytest.fixture
async def redis_client(redis_server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_server.url)
    await client.flushdb()
    try:
        yield client
    finally:
        await client.aclose()
