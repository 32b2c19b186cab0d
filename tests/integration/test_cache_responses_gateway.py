"""The response cache on Responses API calls, through the real Envoy and sidecar with the openai SDK:
a `store: false` call is served from the cache (no upstream call, priced 0, what it saved), as JSON
or as typed events whichever way it was filled, on a backend that serves the Responses API and on
one it is translated for; a call the provider stores is never served from the cache.

Each test sends inputs of its own (a fresh word); upstream calls are counted in the mock provider's
request log. The cache's store is Redis, where the usage events are read too."""

from __future__ import annotations

import json
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import openai
import pytest
from quotagateway import QuotaGateway, config_folder, key_value, key_yaml, start_gateway
from redisserver import RedisServer

from tollway.dev import free_port
from tollway_sidecar.contract.usage_event import USAGE_FIELD, USAGE_STREAM, UsageEvent

ROUTES = """\
---
apiVersion: tollway.dev/v1alpha1
kind: RouteRule
metadata: {name: cached-responses}
spec:
  model: cached-responses
  backends:
    - name: openai
      provider: openai
      model: gpt-4o-mini
      baseURL: http://127.0.0.1:9000/v1
      credentialsSecretRef: {name: anthropic-credentials, key: apiKey}  # the mock takes any key
  cache: {mode: Exact, ttl: 5m, partition: Key}
---
apiVersion: tollway.dev/v1alpha1
kind: RouteRule
metadata: {name: cached-translated}
spec:
  model: cached-translated
  backends:
    - {name: mock, provider: openai-compatible, model: gpt-4o-mini, baseURL: "http://127.0.0.1:9000/v1"}
  cache: {mode: Exact, ttl: 5m, partition: Key}
"""
RESOURCES = ROUTES + key_yaml("resp-a") + key_yaml("resp-b") + key_yaml("resp-money")
MODELS = ["cached-responses", "cached-translated"]  # passed through; translated to chat completions


@dataclass
class Cached:
    gateway: QuotaGateway
    mock_url: str
    redis: RedisServer

    def sdk(self, key: str = "resp-a") -> openai.OpenAI:
        return openai.OpenAI(base_url=self.gateway.base_url, api_key=key_value(key), max_retries=0)

    def upstream_calls(self, word: str) -> int:
        """Calls the mock provider received whose body holds `word`."""
        with urllib.request.urlopen(f"{self.mock_url}/_mock/requests", timeout=5) as response:
            recorded = json.loads(response.read())
        return sum(word in json.dumps(item.get("body")) for item in recorded)


@pytest.fixture(scope="module")
def cached(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cached]:
    base = tmp_path_factory.mktemp("cache-responses")
    redis = RedisServer(base / "redis")
    redis.start()
    try:
        mock_port = free_port()
        folder = config_folder(base, mock_port, RESOURCES.replace("127.0.0.1:9000", f"127.0.0.1:{mock_port}"))
        gateway = start_gateway(base / "gw", folder, redis.url, mock_port=mock_port)
        try:
            yield Cached(gateway, f"http://127.0.0.1:{mock_port}", redis)
        finally:
            gateway.dev.stop()
    finally:
        redis.stop()


def fresh() -> str:
    return uuid.uuid4().hex[:12]


def create(sdk: openai.OpenAI, model: str, word: str, **extra: Any) -> Any:
    return sdk.responses.with_raw_response.create(
        model=model, input=f"tell me about {word}", max_output_tokens=64, **extra
    )


def streamed(sdk: openai.OpenAI, model: str, word: str) -> tuple[dict[str, str], str, Any]:
    """(headers, joined text deltas, the final response) of a `store: false` streamed call."""
    with sdk.responses.with_streaming_response.create(
        model=model, input=f"tell me about {word}", max_output_tokens=64, store=False, stream=True
    ) as response:
        headers = dict(response.headers)
        events = list(response.parse())
    text = "".join(event.delta for event in events if event.type == "response.output_text.delta")
    assert [event.sequence_number for event in events] == list(range(len(events)))
    assert events[-1].type == "response.completed"
    return headers, text, events[-1].response


@pytest.mark.parametrize("model", MODELS)
def test_a_call_that_asks_not_to_be_stored_is_answered_from_the_cache(cached: Cached, model: str) -> None:
    word = fresh()
    with cached.sdk() as sdk:
        first = create(sdk, model, word, store=False)
        second = create(sdk, model, word, store=False)
    assert first.headers["x-tollway-cache"] == "MISS"
    assert second.headers["x-tollway-cache"] == "HIT"
    assert cached.upstream_calls(word) == 1
    assert second.headers["x-tollway-cost-usd"] == "0"
    cost = Decimal(first.headers["x-tollway-cost-usd"])
    assert Decimal(second.headers["x-tollway-cost-saved-usd"]) == cost > 0
    one, two = first.parse(), second.parse()
    assert two.model_dump() == one.model_dump()  # the same response, its id and usage included
    assert two.status == "completed" and word in two.output_text


@pytest.mark.parametrize("model", MODELS)
def test_a_json_filled_entry_streams_and_a_stream_filled_one_answers_json(cached: Cached, model: str) -> None:
    word, other = fresh(), fresh()
    with cached.sdk() as sdk:
        filled = create(sdk, model, word, store=False).parse()
        headers, text, final = streamed(sdk, model, word)
        assert headers["x-tollway-cache"] == "HIT" and headers["content-type"].startswith("text/event-stream")
        assert text == filled.output_text and final.model_dump() == filled.model_dump()
        with sdk.responses.stream(
            model=model, input=f"tell me about {word}", max_output_tokens=64, store=False
        ) as stream:
            helper_text = "".join(e.delta for e in stream if e.type == "response.output_text.delta")
            helper_final = stream.get_final_response()
        assert helper_text == filled.output_text == helper_final.output_text
        assert helper_final.usage == filled.usage

        miss_headers, streamed_text, streamed_final = streamed(sdk, model, other)
        assert miss_headers["x-tollway-cache"] == "MISS"
        hit = create(sdk, model, other, store=False)
    assert hit.headers["x-tollway-cache"] == "HIT"
    assert hit.parse().output_text == streamed_text
    assert hit.parse().model_dump() == streamed_final.model_dump()
    assert cached.upstream_calls(word) == 1 and cached.upstream_calls(other) == 1


def test_a_call_the_provider_stores_is_never_served_from_the_cache(cached: Cached) -> None:
    word = fresh()
    model = "cached-responses"  # a backend that stores responses (a translated route refuses store: true)
    with cached.sdk() as sdk:
        stored = [create(sdk, model, word, store=True), create(sdk, model, word), create(sdk, model, word)]
        assert [raw.headers["x-tollway-cache"] for raw in stored] == ["BYPASS"] * 3
        assert all(Decimal(raw.headers["x-tollway-cost-usd"]) > 0 for raw in stored)
        assert "x-tollway-cost-saved-usd" not in stored[-1].headers
        # The stored calls filled nothing: the first store: false call of the same input is a miss.
        assert create(sdk, model, word, store=False).headers["x-tollway-cache"] == "MISS"
        assert create(sdk, model, word, store=False).headers["x-tollway-cache"] == "HIT"
        # And the entry it filled does not answer a call the provider would store.
        again = create(sdk, model, word, store=True)
        assert again.headers["x-tollway-cache"] == "BYPASS"
        assert sdk.responses.retrieve(again.parse().id).id == again.parse().id  # stored, as asked
    assert cached.upstream_calls(word) == 5


def test_entries_are_not_shared_between_keys(cached: Cached) -> None:
    word = fresh()
    with cached.sdk("resp-a") as a, cached.sdk("resp-b") as b:
        assert create(a, "cached-responses", word, store=False).headers["x-tollway-cache"] == "MISS"
        assert create(b, "cached-responses", word, store=False).headers["x-tollway-cache"] == "MISS"
        assert create(b, "cached-responses", word, store=False).headers["x-tollway-cache"] == "HIT"
    assert cached.upstream_calls(word) == 2


def _settled(gateway: QuotaGateway, key: str, requests: int) -> dict[str, Any]:
    deadline = time.monotonic() + 10
    while True:
        entry = dict(gateway.spend()["keys"][key])
        if entry["requests"] == requests and entry["reserved_usd"] == "0":
            return entry
        assert time.monotonic() < deadline, entry
        time.sleep(0.05)


def test_hits_charge_nothing_and_their_usage_events_say_what_they_saved(cached: Cached) -> None:
    import redis

    key = "default/resp-money"
    before = _settled(cached.gateway, key, cached.gateway.spend()["keys"][key]["requests"])
    word = fresh()
    with cached.sdk("resp-money") as sdk:
        miss = create(sdk, "cached-responses", word, store=False)
        hits = [create(sdk, "cached-responses", word, store=False) for _ in range(2)]
    cost = Decimal(miss.headers["x-tollway-cost-usd"])
    assert [hit.headers["x-tollway-cache"] for hit in hits] == ["HIT", "HIT"]
    after = _settled(cached.gateway, key, before["requests"] + 3)  # every hit is a request
    assert Decimal(after["spent_usd"]) - Decimal(before["spent_usd"]) == cost  # the miss only
    assert Decimal(after["saved_usd"]) - Decimal(before["saved_usd"]) == 2 * cost
    usage = miss.parse().usage
    assert after["output_tokens"] - before["output_tokens"] == usage.output_tokens

    client = redis.Redis.from_url(cached.redis.url)
    deadline = time.monotonic() + 10
    while True:
        events = [
            UsageEvent.from_json(fields[USAGE_FIELD.encode()]) for _id, fields in client.xrange(USAGE_STREAM)
        ]
        mine = [event.data for event in events if event.subject == key]
        if len(mine) >= 3 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    client.close()
    assert sorted(data.cache for data in mine) == ["HIT", "HIT", "MISS"], mine
    (filled,) = [data for data in mine if data.cache == "MISS"]
    served = [data for data in mine if data.cache == "HIT"]
    assert Decimal(filled.cost) == cost and filled.saved == ""
    for data in served:
        assert data.cost == "0" and Decimal(data.saved) == cost
        assert (data.tokens.input, data.tokens.output) == (0, 0)  # the replayed usage was not bought
