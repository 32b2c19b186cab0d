"""The response cache through the real Envoy and sidecar, with the official SDKs: hits answered at
request-body time (no upstream call), stream and JSON replays of one entry, the per-request headers,
partitions, coalescing, money (/spend), and Redis going away and coming back.

Each test sends prompts of its own (a fresh word), so entries never leak between tests; upstream
calls are counted in the mock provider's request log."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest
from httpcall import call
from quotagateway import QuotaGateway, budget_yaml, config_folder, key_value, key_yaml, start_gateway
from redisserver import RedisServer

from tollway.dev import free_port
from tollway_sidecar.contract.usage_event import USAGE_FIELD, USAGE_STREAM, UsageEvent

ROUTES = """\
---
apiVersion: tollway.dev/v1alpha1
kind: RouteRule
metadata: {name: cached}
spec:
  model: cached-mini
  backends:
    - {name: mock, provider: openai-compatible, model: gpt-4o-mini, baseURL: "http://127.0.0.1:9000/v1"}
  cache: {mode: Exact, ttl: 5m, partition: Key}
---
apiVersion: tollway.dev/v1alpha1
kind: RouteRule
metadata: {name: cached-team}
spec:
  model: cached-team
  backends:
    - {name: mock, provider: openai-compatible, model: gpt-4o-mini, baseURL: "http://127.0.0.1:9000/v1"}
  cache: {mode: Exact, partition: Team}
---
apiVersion: tollway.dev/v1alpha1
kind: RouteRule
metadata: {name: cached-claude}
spec:
  model: cached-claude
  backends:
    - name: anthropic
      provider: anthropic
      model: claude-haiku-4-5
      baseURL: http://127.0.0.1:9000
      credentialsSecretRef: {name: anthropic-credentials, key: apiKey}
  cache: {mode: Exact}
"""

RESOURCES = ROUTES + "".join(
    [
        key_yaml("cache-a"),  # both of team qa
        key_yaml("cache-b"),
        budget_yaml("cache-budget", "10"),
        key_yaml(
            "cache-money",
            "budgetRefs: [cache-budget]\nlimits: {requestsPerMinute: 1000, tokensPerMinute: 1000000}",
        ),
        budget_yaml("cache-saver-cap", "10"),
        budget_yaml("cache-saver-each", "10", "perUser: true"),
        key_yaml("cache-saver", "budgetRefs: [cache-saver-cap, cache-saver-each]"),
        key_yaml("cache-rpm", "limits: {requestsPerMinute: 3}"),
        key_yaml("cache-outage"),
        key_yaml("cache-events"),  # nothing to enforce: served while Redis is down
    ]
)
CHAT = "/v1/chat/completions"


@dataclass
class Cached:
    gateway: QuotaGateway
    mock_url: str
    redis: RedisServer | None
    replica: QuotaGateway | None = None  # a second gateway on the same Redis (no mock of its own)

    def sdk(self, key: str = "cache-a") -> openai.OpenAI:
        return openai.OpenAI(base_url=self.gateway.base_url, api_key=key_value(key), max_retries=0)

    def upstream_calls(self, word: str) -> int:
        """Calls the mock provider received whose body holds `word`."""
        with urllib.request.urlopen(f"{self.mock_url}/_mock/requests", timeout=5) as response:
            recorded = json.loads(response.read())
        return sum(word in json.dumps(item.get("body")) for item in recorded)


def _start(base: Path, redis: RedisServer | None) -> Cached:
    mock_port = free_port()
    folder = config_folder(base, mock_port, RESOURCES.replace("127.0.0.1:9000", f"127.0.0.1:{mock_port}"))
    gateway = start_gateway(base / "gw", folder, redis.url if redis else None, mock_port=mock_port)
    cached = Cached(gateway, f"http://127.0.0.1:{mock_port}", redis)
    if redis is not None:
        try:
            cached.replica = start_gateway(
                base / "replica", folder, redis.url, mock_port=mock_port, mock_provider=False
            )
        except BaseException:
            gateway.dev.stop()
            raise
    return cached


def _stop(cached: Cached) -> None:
    try:
        if cached.replica is not None:
            cached.replica.dev.stop()
    finally:
        cached.gateway.dev.stop()


@pytest.fixture(scope="module")
def redis_cached(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cached]:
    base = tmp_path_factory.mktemp("cache-redis")
    redis = RedisServer(base / "redis")
    redis.start()
    try:
        cached = _start(base, redis)
        try:
            yield cached
        finally:
            _stop(cached)
    finally:
        redis.stop()


@pytest.fixture(scope="module")
def memory_cached(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cached]:
    cached = _start(tmp_path_factory.mktemp("cache-memory"), None)
    try:
        yield cached
    finally:
        _stop(cached)


@pytest.fixture(params=["redis", "memory"])
def cached(request: pytest.FixtureRequest) -> Cached:
    return request.getfixturevalue(f"{request.param}_cached")  # type: ignore[no-any-return]


def fresh() -> str:
    return uuid.uuid4().hex[:12]


def messages(word: str) -> Any:
    return [{"role": "user", "content": f"tell me about {word}"}]


def chat(sdk: openai.OpenAI, word: str, model: str = "cached-mini", **extra: Any) -> Any:
    return sdk.chat.completions.with_raw_response.create(model=model, messages=messages(word), **extra)


def streamed(sdk: openai.OpenAI, word: str, **extra: Any) -> tuple[dict[str, str], str, Any]:
    """(headers, joined text, the usage chunk's usage or None) of a streamed call."""
    with sdk.chat.completions.with_streaming_response.create(
        model="cached-mini", messages=messages(word), stream=True, **extra
    ) as response:
        headers = dict(response.headers)
        text, usage = "", None
        for chunk in response.parse():
            for choice in chunk.choices:
                text += choice.delta.content or ""
            usage = chunk.usage or usage
    return headers, text, usage


def test_miss_then_hit_answers_without_an_upstream_call(cached: Cached) -> None:
    word = fresh()
    with cached.sdk() as sdk:
        first = chat(sdk, word)
        second = chat(sdk, word)
    assert first.headers["x-tollway-cache"] == "MISS"
    assert second.headers["x-tollway-cache"] == "HIT"
    assert cached.upstream_calls(word) == 1
    assert second.headers["x-tollway-cost-usd"] == "0"
    assert (
        Decimal(second.headers["x-tollway-cost-saved-usd"])
        == Decimal(first.headers["x-tollway-cost-usd"])
        > 0
    )
    assert int(second.headers["age"]) >= 0
    one, two = first.parse(), second.parse()
    assert two.choices[0].message.content == one.choices[0].message.content
    assert two.choices[0].finish_reason == "stop"
    assert two.usage is not None and one.usage is not None
    assert two.usage.total_tokens == one.usage.total_tokens  # replayed, as the first call reported


def test_json_filled_entry_streams_and_stream_filled_entry_answers_json(cached: Cached) -> None:
    word, other = fresh(), fresh()
    with cached.sdk() as sdk:
        filled = chat(sdk, word).parse()
        headers, text, usage = streamed(sdk, word)
        assert headers["x-tollway-cache"] == "HIT" and headers["content-type"].startswith("text/event-stream")
        assert text == filled.choices[0].message.content
        assert usage is None  # the client did not ask for the usage chunk
        _, with_usage_text, with_usage = streamed(sdk, word, stream_options={"include_usage": True})
        assert with_usage_text == text and with_usage is not None
        assert with_usage.completion_tokens == filled.usage.completion_tokens

        miss_headers, streamed_text, _ = streamed(sdk, other)
        assert miss_headers["x-tollway-cache"] == "MISS"
        hit = chat(sdk, other)
    assert hit.headers["x-tollway-cache"] == "HIT"
    assert hit.parse().choices[0].message.content == streamed_text
    assert cached.upstream_calls(word) == 1 and cached.upstream_calls(other) == 1


def test_refresh_read_only_no_store_and_max_age(cached: Cached) -> None:
    word = fresh()
    with cached.sdk() as sdk:
        assert (
            chat(sdk, word, extra_headers={"x-tollway-cache": "read-only"}).headers["x-tollway-cache"]
            == "MISS"
        )
        assert (
            chat(sdk, word, extra_headers={"cache-control": "no-store"}).headers["x-tollway-cache"]
            == "BYPASS"
        )
        assert cached.upstream_calls(word) == 2  # neither stored anything
        assert chat(sdk, word).headers["x-tollway-cache"] == "MISS"  # stores
        assert (
            chat(sdk, word, extra_headers={"x-tollway-cache": "read-only"}).headers["x-tollway-cache"]
            == "HIT"
        )
        assert (
            chat(sdk, word, extra_headers={"x-tollway-cache": "refresh"}).headers["x-tollway-cache"]
            == "REFRESH"
        )
        assert cached.upstream_calls(word) == 4
        time.sleep(1.1)
        assert (
            chat(sdk, word, extra_headers={"cache-control": "max-age=1"}).headers["x-tollway-cache"] == "MISS"
        )
        assert (
            chat(sdk, word, extra_headers={"cache-control": "max-age=60"}).headers["x-tollway-cache"] == "HIT"
        )
    assert cached.upstream_calls(word) == 5


def test_a_malformed_cache_header_is_a_400_naming_it(cached: Cached) -> None:
    answer = call(
        cached.gateway.origin,
        "POST",
        CHAT,
        json.dumps({"model": "cached-mini", "messages": messages(fresh())}).encode(),
        {"authorization": f"Bearer {key_value('cache-a')}", "x-tollway-cache": "sometimes"},
    )
    assert answer.status == 400
    assert answer.error["param"] == "x-tollway-cache"
    assert "on, off, refresh, read-only" in answer.error["message"]
    claude = call(
        cached.gateway.origin,
        "POST",
        "/v1/messages",
        json.dumps({"model": "cached-claude", "max_tokens": 10, "messages": messages(fresh())}).encode(),
        {"x-api-key": key_value("cache-a"), "cache-control": "max-age=soon"},
    )
    assert claude.status == 400
    assert claude.json()["type"] == "error" and "max-age" in claude.json()["error"]["message"]


def test_an_openai_client_on_an_anthropic_backend_is_cached_in_its_own_api(cached: Cached) -> None:
    word = fresh()
    with cached.sdk() as sdk:
        with sdk.chat.completions.with_streaming_response.create(
            model="cached-claude", messages=messages(word), stream=True, max_tokens=100
        ) as response:
            assert response.headers["x-tollway-cache"] == "MISS"
            text = "".join(c.choices[0].delta.content or "" for c in response.parse() if c.choices)
        hit = sdk.chat.completions.with_raw_response.create(
            model="cached-claude", messages=messages(word), max_tokens=100
        )
    assert hit.headers["x-tollway-cache"] == "HIT"
    completion = hit.parse()
    assert completion.object == "chat.completion" and completion.choices[0].message.content == text
    assert cached.upstream_calls(word) == 1


def test_partitions_key_apart_and_team_together(cached: Cached) -> None:
    word = fresh()
    with cached.sdk("cache-a") as a, cached.sdk("cache-b") as b:
        assert chat(a, word).headers["x-tollway-cache"] == "MISS"
        assert chat(b, word).headers["x-tollway-cache"] == "MISS"  # partition Key: b has its own
        assert cached.upstream_calls(word) == 2
        team_word = fresh()
        assert chat(a, team_word, model="cached-team").headers["x-tollway-cache"] == "MISS"
        assert chat(b, team_word, model="cached-team").headers["x-tollway-cache"] == "HIT"  # both team qa
    assert cached.upstream_calls(team_word) == 1


def concurrently(base_urls: list[str], word: str, calls: int) -> list[Any]:
    """`calls` identical calls at once, spread over the gateways at `base_urls`."""

    async def many() -> list[Any]:
        sdks = [
            openai.AsyncOpenAI(base_url=url, api_key=key_value("cache-a"), max_retries=0) for url in base_urls
        ]
        try:
            return await asyncio.gather(
                *(
                    sdks[n % len(sdks)].chat.completions.with_raw_response.create(
                        model="cached-mini",
                        messages=messages(word),
                        extra_headers={"x-mock-latency-ms": "400"},
                    )
                    for n in range(calls)
                )
            )
        finally:
            for sdk in sdks:
                await sdk.close()

    return asyncio.run(many())


def test_concurrent_identical_calls_make_one_upstream_call(cached: Cached) -> None:
    word = fresh()
    answers = concurrently([cached.gateway.base_url], word, 50)
    assert cached.upstream_calls(word) == 1
    assert sorted(answer.headers["x-tollway-cache"] for answer in answers) == ["HIT"] * 49 + ["MISS"]
    assert len({answer.parse().choices[0].message.content for answer in answers}) == 1


def test_two_replicas_on_one_redis_make_one_upstream_call(redis_cached: Cached) -> None:
    assert redis_cached.replica is not None
    word = fresh()
    answers = concurrently([redis_cached.gateway.base_url, redis_cached.replica.base_url], word, 50)
    assert redis_cached.upstream_calls(word) == 1
    assert sorted(answer.headers["x-tollway-cache"] for answer in answers) == ["HIT"] * 49 + ["MISS"]
    assert len({answer.parse().choices[0].message.content for answer in answers}) == 1


def _settled(gateway: QuotaGateway, key: str, requests: int) -> dict[str, Any]:
    deadline = time.monotonic() + 10
    while True:
        entry = dict(gateway.spend()["keys"][key])
        if entry["requests"] == requests and entry["reserved_usd"] == "0":
            return entry
        assert time.monotonic() < deadline, entry
        time.sleep(0.05)


def test_hits_charge_nothing_and_count_as_requests(cached: Cached) -> None:
    key = "default/cache-money"
    before = _settled(cached.gateway, key, cached.gateway.spend()["keys"][key]["requests"])
    budget_before = cached.gateway.spend()["budgets"]["default/cache-budget"]
    word = fresh()
    with cached.sdk("cache-money") as sdk:
        first = chat(sdk, word)
        hits = [chat(sdk, word) for _ in range(3)]
    cost = Decimal(first.headers["x-tollway-cost-usd"])
    assert [hit.headers["x-tollway-cache"] for hit in hits] == ["HIT"] * 3
    assert all(Decimal(hit.headers["x-tollway-cost-saved-usd"]) == cost for hit in hits)
    after = _settled(cached.gateway, key, before["requests"] + 4)  # every hit is a request
    assert Decimal(after["spent_usd"]) - Decimal(before["spent_usd"]) == cost  # the miss only
    assert after["output_tokens"] - before["output_tokens"] == first.parse().usage.completion_tokens
    minute = after["limits"]["requests_per_minute"]["used"] - before["limits"]["requests_per_minute"]["used"]
    assert minute in (4, 4 - before["limits"]["requests_per_minute"]["used"])  # a new minute may begin
    budget = cached.gateway.spend()["budgets"]["default/cache-budget"]
    assert Decimal(budget["spent_usd"]) - Decimal(budget_before["spent_usd"]) == cost
    metrics = _metrics(cached)
    assert 'tollway_cache_requests_total{result="HIT"}' in metrics
    assert "tollway_cost_saved_usd_total" in metrics
    assert "tollway_open_reservations 0.0" in metrics  # each hit's request was settled


def _money(entry: dict[str, Any]) -> tuple[Decimal, Decimal]:
    return Decimal(entry["spent_usd"]), Decimal(entry["saved_usd"])


def test_hits_show_what_they_saved_in_spend_per_key_and_budget(cached: Cached) -> None:
    key, cap, each = "default/cache-saver", "default/cache-saver-cap", "default/cache-saver-each"
    gateway = cached.gateway
    before = _settled(gateway, key, gateway.spend()["keys"][key]["requests"])
    start = gateway.spend(user="ana")
    word = fresh()
    users = ["ana", "ana", "bo", "bo", "bo"]
    with cached.sdk("cache-saver") as sdk:
        first = chat(sdk, word, user="ana")  # the miss that fills the entry
        hits = [chat(sdk, word, user=user) for user in users]  # `user` is not part of the cache key
    cost = Decimal(first.headers["x-tollway-cost-usd"])
    assert cost > 0 and [hit.headers["x-tollway-cache"] for hit in hits] == ["HIT"] * len(users)
    _settled(gateway, key, before["requests"] + 1 + len(users))
    end = gateway.spend(user="ana")

    def grew(pick: Callable[[dict[str, Any]], dict[str, Any]]) -> tuple[Decimal, Decimal]:
        (spent0, saved0), (spent1, saved1) = _money(pick(start)), _money(pick(end))
        return spent1 - spent0, saved1 - saved0

    # Exactly N x the fill's cost saved, and nothing spent but the miss: per key, per budget, and
    # per user on the perUser budget (ana made the miss and two of the hits).
    assert grew(lambda snap: snap["keys"][key]) == (cost, 5 * cost)
    assert grew(lambda snap: snap["budgets"][cap]) == (cost, 5 * cost)
    assert grew(lambda snap: snap["budgets"][each]) == (cost, 5 * cost)
    assert grew(lambda snap: snap["budgets"][each]["user"]) == (cost, 2 * cost)


def test_a_hit_over_requests_per_minute_is_refused(cached: Cached) -> None:
    word = fresh()
    with cached.sdk("cache-rpm") as sdk:
        assert [chat(sdk, word).headers["x-tollway-cache"] for _ in range(3)] == ["MISS", "HIT", "HIT"]
        with pytest.raises(openai.RateLimitError):
            chat(sdk, word)
    assert cached.upstream_calls(word) == 1


def _metrics(cached: Cached) -> str:
    with urllib.request.urlopen(f"{cached.gateway.admin_url}/metrics", timeout=5) as response:
        return str(response.read().decode())


def test_anthropic_messages_hit_as_json_and_as_a_stream(cached: Cached) -> None:
    word = fresh()
    with anthropic.Anthropic(
        base_url=cached.gateway.origin, api_key=key_value("cache-a"), max_retries=0
    ) as claude:
        first = claude.messages.with_raw_response.create(
            model="cached-claude", max_tokens=100, messages=messages(word)
        )
        second = claude.messages.with_raw_response.create(
            model="cached-claude", max_tokens=100, messages=messages(word)
        )
        assert first.headers["x-tollway-cache"] == "MISS" and second.headers["x-tollway-cache"] == "HIT"
        text = first.parse().content[0].text  # type: ignore[union-attr]
        assert second.parse().content[0].text == text  # type: ignore[union-attr]
        with claude.messages.stream(model="cached-claude", max_tokens=100, messages=messages(word)) as stream:
            assert stream.response.headers["x-tollway-cache"] == "HIT"
            assert stream.get_final_text() == text
    assert cached.upstream_calls(word) == 1


def test_a_hits_usage_event_costs_nothing_buys_no_tokens_and_says_what_it_saved(redis_cached: Cached) -> None:
    import redis

    assert redis_cached.redis is not None
    word = fresh()
    with redis_cached.sdk("cache-events") as sdk:
        miss, hit = chat(sdk, word), chat(sdk, word)
    assert hit.headers["x-tollway-cache"] == "HIT"
    client = redis.Redis.from_url(redis_cached.redis.url)
    deadline = time.monotonic() + 10
    while True:
        events = [
            UsageEvent.from_json(fields[USAGE_FIELD.encode()]) for _id, fields in client.xrange(USAGE_STREAM)
        ]
        mine = [event.data for event in events if event.subject == "default/cache-events"]
        if len(mine) >= 2 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    client.close()
    by_outcome = {data.cache: data for data in mine}
    assert sorted(by_outcome) == ["HIT", "MISS"], mine
    filled, served = by_outcome["MISS"], by_outcome["HIT"]
    assert Decimal(filled.cost) == Decimal(miss.headers["x-tollway-cost-usd"]) and filled.saved == ""
    assert served.cost == "0" and Decimal(served.saved) == Decimal(filled.cost)
    assert (served.tokens.input, served.tokens.output) == (0, 0)  # the replayed usage was not bought
    assert served.billable and served.outcome == "ok" and served.attempts == ()


def test_redis_down_calls_are_served_and_caching_resumes(redis_cached: Cached) -> None:
    assert redis_cached.redis is not None
    word = fresh()
    with redis_cached.sdk("cache-outage") as sdk:
        assert chat(sdk, word).headers["x-tollway-cache"] == "MISS"
        redis_cached.redis.stop()
        try:
            down = [chat(sdk, word) for _ in range(2)]
            assert [answer.headers["x-tollway-cache"] for answer in down] == ["BYPASS"] * 2
            assert all(answer.parse().choices[0].message.content for answer in down)
            assert redis_cached.upstream_calls(word) == 3
            assert "tollway_cache_unavailable_total 2.0" in _metrics(redis_cached)
        finally:
            redis_cached.redis.start()
        _eventually(lambda: chat(sdk, word).headers["x-tollway-cache"] == "HIT", "a hit after Redis is back")


def _eventually(check: Callable[[], bool], what: str, seconds: float = 15) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, f"{what} within {seconds:.0f} s"
        time.sleep(0.2)
