"""Bad-input fuzzing: thousands of seeded mutations of valid requests, counted by status.

Every answer must be a 2xx, or a 4xx in the API's error shape (OpenAI's; Anthropic's on
/v1/messages). A 5xx is the gateway's own: the mock answers every valid request 200 and never
errs unless told to by an `x-mock-*` header, which no mutant sends. After each family (and after
all of them) a valid call must still succeed.
"""

from __future__ import annotations

import asyncio
import os
from collections import Counter

import pytest
from reliability_env import FIGURES, Client, Reply, Shared, chat_body, key_value, record
from reliability_fuzz import MESSAGES, Mutant, huge_bodies, mutants
from reliability_mutations import FAMILIES

SEED = int(os.environ.get("TOLLWAY_FUZZ_SEED", "20261202"))
PER_FAMILY = 480  # x 11 families + 8 huge bodies = 5,288 requests
CONCURRENCY = 16
TOTALS: Counter[str] = Counter()


def verdict(mutant: Mutant, reply: Reply) -> str | None:
    """None when the answer is acceptable; else what is wrong with it."""
    if reply.status == 0:
        return f"no HTTP answer ({reply.error})"
    if reply.status >= 500:
        return f"{reply.status} {reply.body[:160]!r}"
    if 400 <= reply.status < 500:
        shaped = reply.error_object() is not None
        if mutant.path.startswith(MESSAGES) and not shaped:
            shaped = reply.anthropic_error() is not None
        if not shaped:
            return f"{reply.status} not in the error shape: {reply.body[:160]!r}"
    return None


async def run_all(shared: Shared, batch: list[Mutant], seconds: float) -> list[tuple[Mutant, Reply]]:
    limit = asyncio.Semaphore(CONCURRENCY)
    async with Client(shared.gateway.origin, limit=CONCURRENCY) as client:

        async def one(mutant: Mutant) -> tuple[Mutant, Reply]:
            async with limit:
                return mutant, await client.send(
                    mutant.method, mutant.path, mutant.body, mutant.headers, timeout_s=seconds
                )

        return await asyncio.gather(*(one(m) for m in batch))


async def alive(shared: Shared) -> Reply:
    async with Client(shared.gateway.origin) as client:
        headers = {"authorization": f"Bearer {key_value('fuzz')}", "content-type": "application/json"}
        return await client.send("POST", "/v1/chat/completions", chat_body(), headers)


def judge(family: str, results: list[tuple[Mutant, Reply]]) -> list[str]:
    statuses = Counter(str(reply.status) for _, reply in results)
    TOTALS.update(statuses)
    bad = [(m, reply, why) for m, reply in results if (why := verdict(m, reply)) is not None]
    record(
        f"fuzz {family}",
        requests=len(results),
        by_status=dict(sorted(statuses.items())),
        violations=len(bad),
        examples=[f"{m.describe()} -> {why}" for m, _, why in bad[:4]],
    )
    record("fuzz total", requests=sum(TOTALS.values()), by_status=dict(sorted(TOTALS.items())), seed=SEED)
    return [f"{m.describe()} -> {why}" for m, _, why in bad]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("family", sorted(FAMILIES))
async def test_mutated_requests_get_a_shaped_4xx_or_a_2xx_never_a_5xx(shared: Shared, family: str) -> None:
    results = await run_all(shared, mutants(family, PER_FAMILY, SEED, key_value("fuzz")), seconds=30)
    bad = judge(family, results)
    after = await alive(shared)
    assert after.status == 200, f"the gateway stopped serving after the {family} family: {after}"
    assert not bad, f"{len(bad)} of {len(results)} {family} requests:\n" + "\n".join(bad[:15])


@pytest.mark.timeout(180)
async def test_bodies_up_to_the_limit_are_served_and_over_it_413(shared: Shared) -> None:
    results = await run_all(shared, huge_bodies(key_value("fuzz")), seconds=60)
    bad = judge("huge-body", results)
    wrong = [
        f"{m.label}: {r.status}"
        for m, r in results
        if r.status != (200 if m.body is not None and len(m.body) <= 10 << 20 else 413)
    ]
    after = await alive(shared)
    assert after.status == 200, f"the gateway stopped serving after the huge bodies: {after}"
    assert not bad and not wrong, "\n".join(bad + wrong)


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    "text",
    [
        pytest.param("x" * 3_900_000, id="one-word"),
        pytest.param("Zm9vYmFy" * 487_000, id="base64"),
    ],
)
async def test_a_request_slow_to_tokenize_is_answered_and_others_keep_flowing(
    shared: Shared, text: str
) -> None:
    """Text with no word breaks is the tokenizer's worst case; the call must still get an answer
    (served, or a shaped 4xx), not Envoy's empty 504, and small calls beside it must stay fast."""
    headers = {"authorization": f"Bearer {key_value('fuzz')}", "content-type": "application/json"}
    small: list[Reply] = []
    async with Client(shared.gateway.origin) as client:

        async def beside() -> None:
            for _ in range(20):
                small.append(await client.send("POST", "/v1/chat/completions", chat_body(), headers))
                await asyncio.sleep(0.05)

        big, _ = await asyncio.gather(
            client.send(
                "POST", "/v1/chat/completions", chat_body(text=text, max_tokens=4), headers, timeout_s=60
            ),
            beside(),
        )
    worst = max(r.ended - r.started for r in small)
    record(
        f"slow tokenization ({len(text) // 1000} kB)",
        status=big.status,
        seconds=round(big.ended - big.started, 2),
        small_calls_worst_s=round(worst, 3),
    )
    assert big.status == 200 or (400 <= big.status < 500 and big.error_object() is not None), (
        big.status,
        big.body[:200],
    )
    assert all(r.status == 200 for r in small) and worst < 1.0, [
        (r.status, r.ended - r.started) for r in small
    ]


async def test_the_fuzzer_sent_enough_requests_and_the_gateway_still_serves(shared: Shared) -> None:
    """Runs after the families (file order); when only some ran, the count is not checked."""
    if len(TOTALS) and all(f"fuzz {family}" in FIGURES for family in FAMILIES):
        assert sum(TOTALS.values()) >= 5000, TOTALS
    after = await alive(shared)
    assert after.status == 200, after
