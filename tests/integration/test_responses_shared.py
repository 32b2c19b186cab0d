"""Stored-response records in Redis are shared by every gateway replica: a response created
through one gateway is retrieved, listed and deleted through another (its own sidecar and Envoy,
the same redis-server), for the key that created it only; each record has its 30-day TTL."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

import openai
import pytest
import redis
from quotagateway import QuotaGateway, config_folder, key_value, key_yaml, start_gateway
from redisserver import RedisServer

from tollway.dev import free_port

ROUTE = """\
---
apiVersion: v1
kind: Secret
metadata: {{name: stored-upstream}}
stringData: {{api-key: sk-stored-upstream}}
---
apiVersion: tollway.dev/v1alpha1
kind: RouteRule
metadata: {{name: stored-mini}}
spec:
  model: stored-mini
  backends:
    - name: openai
      provider: openai
      model: gpt-4o-mini
      baseURL: "http://127.0.0.1:{port}/v1"
      credentialsSecretRef: {{name: stored-upstream, key: api-key}}
"""


@dataclass
class Replicas:
    a: QuotaGateway
    b: QuotaGateway
    redis_url: str


@pytest.fixture(scope="module")
def replicas(tmp_path_factory: pytest.TempPathFactory, redis_server: RedisServer) -> Iterator[Replicas]:
    base = tmp_path_factory.mktemp("stored")
    mock_port = free_port()
    resources = ROUTE.format(port=mock_port) + key_yaml("owner") + key_yaml("stranger")
    folder = config_folder(base, mock_port, resources)
    a = start_gateway(base / "a", folder, redis_server.url, mock_port=mock_port)
    try:
        b = start_gateway(base / "b", folder, redis_server.url, mock_port=mock_port, mock_provider=False)
        try:
            yield Replicas(a, b, redis_server.url)
        finally:
            b.dev.stop()
    finally:
        a.dev.stop()


def _sdk(gateway: QuotaGateway, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.base_url, api_key=key_value(key), max_retries=0)


def _records(client: redis.Redis, response_id: str, *, present: bool) -> list[bytes]:
    """The Redis keys of a record, once it is (or is no longer) there: it is written and removed
    after the answer, in the background."""
    deadline = time.monotonic() + 10
    while True:
        keys = list(client.scan_iter(match=f"tw:resp:*:{response_id}"))
        if bool(keys) == present or time.monotonic() > deadline:
            return keys
        time.sleep(0.05)


def test_a_response_created_through_one_replica_is_served_through_another(replicas: Replicas) -> None:
    on_a, on_b = _sdk(replicas.a, "owner"), _sdk(replicas.b, "owner")
    stranger = _sdk(replicas.b, "stranger")
    client = redis.Redis.from_url(replicas.redis_url)
    try:
        created = on_a.responses.create(model="stored-mini", input="Shared record")
        (key,) = _records(client, created.id, present=True)
        assert key.decode() == f"tw:resp:{{default}}:{created.id}"
        assert 29 * 24 * 3600 < int(client.ttl(key)) <= 30 * 24 * 3600

        assert on_b.responses.retrieve(created.id).output_text == created.output_text
        (item,) = on_b.responses.input_items.list(created.id).data
        assert item.type == "message"
        with pytest.raises(openai.NotFoundError):
            stranger.responses.retrieve(created.id)
        with pytest.raises(openai.NotFoundError):
            stranger.responses.delete(created.id)
        on_b.responses.delete(created.id)
        assert _records(client, created.id, present=False) == []
        with pytest.raises(openai.NotFoundError) as gone:
            on_a.responses.retrieve(created.id)
        assert isinstance(gone.value.body, dict) and gone.value.body["code"] == "response_not_found"
    finally:
        client.close()
        for sdk in (on_a, on_b, stranger):
            sdk.close()
