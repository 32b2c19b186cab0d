"""Semantic matching through the real Envoy and sidecar (the harness of test_cache_gateway.py): a
paraphrase of a cached prompt is a SEMANTIC_HIT with no upstream chat call, another key's partition
never hits, and the embeddings calls the sidecar makes are charged to the calling key in /spend.

The mock provider's embeddings are bags of word vectors, so the paraphrases here are the same words
in another order, case and punctuation (cosine 1 whatever the mock's dimensions), and so the exact
key differs while the embedding does not."""

from __future__ import annotations

import json
import time
import urllib.request
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import openai
import pytest
import redis
from quotagateway import QuotaGateway, config_folder, key_value, key_yaml, start_gateway
from redisserver import RedisServer

from tollway.dev import free_port
from tollway_sidecar.contract.usage_event import USAGE_FIELD, USAGE_STREAM, UsageEvent

RESOURCES = """\
---
apiVersion: tollway.dev/v1alpha1
kind: RouteRule
metadata: {name: semantic}
spec:
  model: semantic-mini
  backends:
    - {name: mock, provider: openai-compatible, model: gpt-4o-mini, baseURL: "http://127.0.0.1:9000/v1"}
  cache:
    mode: Semantic
    partition: Key
    semantic: {embeddingRoute: text-embedding-3-small, threshold: "0.99"}
""" + "".join([key_yaml("sem-a"), key_yaml("sem-b")])


class Gateway:
    def __init__(self, gateway: QuotaGateway, mock_url: str, redis_url: str | None = None) -> None:
        self.gateway = gateway
        self.mock_url = mock_url
        self.redis_url = redis_url

    def events(self, key_name: str) -> list[UsageEvent]:
        """The usage events of `key_name` in the Redis stream, oldest first."""
        assert self.redis_url is not None
        client = redis.Redis.from_url(self.redis_url, decode_responses=True)
        try:
            entries = client.xrange(USAGE_STREAM)
        finally:
            client.close()
        events = [UsageEvent.from_json(fields[USAGE_FIELD]) for _, fields in entries]
        return [e for e in events if e.data.key_name == key_name]

    def sdk(self, key: str) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.gateway.base_url, api_key=key_value(key), max_retries=0)

    def upstream(self, word: str) -> list[str]:
        """The paths of the mock's calls whose body holds `word`."""
        with urllib.request.urlopen(f"{self.mock_url}/_mock/requests", timeout=5) as response:
            recorded = json.loads(response.read())
        return [item["path"] for item in recorded if word in json.dumps(item.get("body"))]

    def settled(self, key: str, requests: int) -> dict[str, Any]:
        deadline = time.monotonic() + 10
        while True:
            entry = dict(self.gateway.spend()["keys"][key])
            if entry["requests"] == requests and entry["reserved_usd"] == "0":
                return entry
            assert time.monotonic() < deadline, entry
            time.sleep(0.05)


@pytest.fixture(scope="module", params=["redis", "memory"])
def gateway(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    base: Path = tmp_path_factory.mktemp(f"semantic-{request.param}")
    redis = RedisServer(base / "redis") if request.param == "redis" else None
    if redis is not None:
        redis.start()
    try:
        mock_port = free_port()
        folder = config_folder(base, mock_port, RESOURCES.replace("127.0.0.1:9000", f"127.0.0.1:{mock_port}"))
        started = start_gateway(base / "gw", folder, redis.url if redis else None, mock_port=mock_port)
        try:
            yield Gateway(started, f"http://127.0.0.1:{mock_port}", redis.url if redis else None)
        finally:
            started.dev.stop()
    finally:
        if redis is not None:
            redis.stop()


def ask(sdk: openai.OpenAI, text: str) -> Any:
    return sdk.chat.completions.with_raw_response.create(
        model="semantic-mini",
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": text}],
    )


def test_a_paraphrase_is_a_semantic_hit_and_another_key_misses(gateway: Gateway) -> None:
    word = uuid.uuid4().hex[:12]
    before = gateway.settled("default/sem-a", gateway.gateway.spend()["keys"]["default/sem-a"]["requests"])
    with gateway.sdk("sem-a") as sdk:
        first = ask(sdk, f"tell me about {word} please")
        again = ask(sdk, f"Please, tell me about {word}!")  # the same words: another exact key
    assert first.headers["x-tollway-cache"] == "MISS"
    assert again.headers["x-tollway-cache"] == "SEMANTIC_HIT"
    assert again.headers["x-tollway-cost-usd"] == "0"
    assert (
        Decimal(again.headers["x-tollway-cost-saved-usd"]) == Decimal(first.headers["x-tollway-cost-usd"]) > 0
    )
    assert again.parse().choices[0].message.content == first.parse().choices[0].message.content
    # One chat call upstream (the miss); each call embedded its last user message once.
    assert sorted(gateway.upstream(word)) == ["/v1/chat/completions", "/v1/embeddings", "/v1/embeddings"]

    with gateway.sdk("sem-b") as sdk:
        other = ask(sdk, f"Please, tell me about {word}!")
    assert other.headers["x-tollway-cache"] == "MISS"  # partition Key: another key's entries
    assert gateway.upstream(word).count("/v1/chat/completions") == 2

    # The embeddings calls are the key's: two more requests and their price in its spend.
    after = gateway.settled("default/sem-a", before["requests"] + 4)
    embedded = (
        Decimal(after["spent_usd"])
        - Decimal(before["spent_usd"])
        - Decimal(first.headers["x-tollway-cost-usd"])
    )
    assert embedded > 0


def test_a_prompt_with_other_words_misses(gateway: Gateway) -> None:
    word = uuid.uuid4().hex[:12]
    with gateway.sdk("sem-a") as sdk:
        assert ask(sdk, f"tell me about {word}").headers["x-tollway-cache"] == "MISS"
        assert ask(sdk, f"write a poem on {word} tonight").headers["x-tollway-cache"] == "MISS"
    assert gateway.upstream(word).count("/v1/chat/completions") == 2


# The Redis stream is where this test reads the events (the memory store's go through the dev
# meter's outbox, tests/integration/test_dev_meter.py).
@pytest.mark.parametrize("gateway", ["redis"], indirect=True)
def test_each_embedding_call_is_a_usage_event_and_the_events_sum_to_spend(gateway: Gateway) -> None:
    word = uuid.uuid4().hex[:12]
    key = "default/sem-b"
    before = gateway.settled(key, gateway.gateway.spend()["keys"][key]["requests"])
    known = {str(e.id) for e in gateway.events("sem-b")}
    with gateway.sdk("sem-b") as sdk:
        ask(sdk, f"what is {word} for")
        ask(sdk, f"For what is {word}?")
    after = gateway.settled(key, before["requests"] + 4)  # two chat calls (one a hit), two embeddings
    new = [e for e in gateway.events("sem-b") if str(e.id) not in known]
    embeds = [e for e in new if e.data.request_id.endswith("-embed")]
    assert len(new) == 4 and len(embeds) == 2, [e.data for e in new]
    assert {(e.data.model, e.data.outcome, e.data.status) for e in embeds} == {
        ("text-embedding-3-small", "ok", 200)
    }
    assert all(Decimal(e.data.cost) > 0 for e in embeds)
    spent = Decimal(after["spent_usd"]) - Decimal(before["spent_usd"])
    assert sum(Decimal(e.data.cost) for e in new) == spent
