"""Refreshed credentials: fetched in a thread, renewed before expiry, kept through a failed refresh."""

from __future__ import annotations

import asyncio
import logging
import threading

import pytest

from tollway_sidecar.config.models import Backend
from tollway_sidecar.providers.refresh import BACKOFF_BASE_S, Fetch, Refreshers

SECRET = '{"private_key": "-----BEGIN PRIVATE KEY-----\\nMIIsecret"}'


def backend(name: str = "vx", credential: str = SECRET, source: bool = True) -> Backend:
    return Backend(
        name=name,
        provider="openai",
        model="m",
        base_url="https://example.test",
        credential=credential,
        credential_source="google-service-account" if source else None,
    )


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


class Source:
    """The far side: hands out numbered tokens with a fixed lifetime, or fails when told to."""

    def __init__(self, clock: Clock, lifetime: float = 3600.0) -> None:
        self.clock, self.lifetime = clock, lifetime
        self.calls = 0
        self.fail: Exception | None = None
        self.threads: list[str] = []

    def factory(self, b: Backend) -> Fetch:
        assert b.credential == SECRET  # the factory gets the Secret's value to turn into tokens
        return self.fetch

    def fetch(self) -> tuple[str, float]:
        self.threads.append(threading.current_thread().name)
        self.calls += 1
        if self.fail is not None:
            raise self.fail
        return f"token-{self.calls}", self.clock.now + self.lifetime


def refreshers(clock: Clock, source: Source, margin_s: float = 300.0) -> Refreshers:
    return Refreshers({"google-service-account": source.factory}, clock=clock, margin_s=margin_s)


async def test_fetches_in_a_thread_and_refreshes_margin_before_expiry() -> None:
    clock, source = Clock(), Source(Clock())
    source.clock = clock
    creds = refreshers(clock, source)
    creds.update([backend()])
    assert creds.credential(backend()) is None  # nothing fetched yet: never blocks to fetch
    await creds.refresh_due()
    assert creds.credential(backend()) == "token-1"
    assert source.threads == [source.threads[0]]
    assert source.threads[0] != threading.current_thread().name  # not on the event loop's thread
    assert creds.next_due() == clock.now + 3600 - 300

    clock.now += 3600 - 301
    await creds.refresh_due()
    assert source.calls == 1  # not due yet
    clock.now += 1
    await creds.refresh_due()
    assert (source.calls, creds.credential(backend())) == (2, "token-2")


async def test_short_lifetime_refreshes_halfway() -> None:
    clock = Clock()
    source = Source(clock, lifetime=120.0)
    creds = refreshers(clock, source)
    creds.update([backend()])
    await creds.refresh_due()
    assert creds.next_due() == clock.now + 60


async def test_failed_refresh_keeps_the_old_token_until_expiry_and_logs_no_secret(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    source = Source(clock, lifetime=600.0)
    creds = refreshers(clock, source)
    creds.update([backend()])
    await creds.refresh_due()
    clock.now += 300  # due (halfway)
    source.fail = RuntimeError("token endpoint said no to token-1")
    with caplog.at_level(logging.WARNING, logger="tollway.credentials"):
        await creds.refresh_due()
    assert creds.credential(backend()) == "token-1"  # still valid: kept
    logged = caplog.text
    assert "credential refresh failed" in logged and "vx" in logged
    assert "token-1" not in logged and "MIIsecret" not in logged
    # Retried with a growing backoff, not on every tick.
    assert creds.next_due() == clock.now + BACKOFF_BASE_S
    clock.now += BACKOFF_BASE_S
    await creds.refresh_due()
    assert creds.next_due() == clock.now + 2 * BACKOFF_BASE_S
    calls = source.calls
    await creds.refresh_due()
    assert source.calls == calls

    clock.now += 300  # past the old token's expiry
    assert creds.credential(backend()) is None
    source.fail = None
    await creds.refresh_due()
    assert creds.credential(backend()) == f"token-{source.calls}"


async def test_static_credentials_and_config_changes() -> None:
    clock = Clock()
    source = Source(clock)
    creds = refreshers(clock, source)
    static = backend("plain", credential="sk-static", source=False)
    creds.update([static, backend("a"), backend("b")])  # two backends, one Secret: one source
    assert creds.credential(static) == "sk-static"
    await creds.refresh_due()
    assert source.calls == 1
    assert creds.credential(backend("a")) == creds.credential(backend("b")) == "token-1"

    creds.update([static])  # the config dropped them
    assert creds.credential(backend("a")) is None
    assert creds.next_due() is None


async def test_unknown_source_is_logged_and_sends_nothing(caplog: pytest.LogCaptureFixture) -> None:
    creds = Refreshers({}, clock=Clock())
    with caplog.at_level(logging.ERROR, logger="tollway.credentials"):
        creds.update([backend()])
    assert "no credential source 'google-service-account'" in caplog.text
    assert creds.credential(backend()) is None


async def test_run_loop_refreshes_on_its_own() -> None:
    clock = Clock()
    source = Source(clock, lifetime=3600.0)
    creds = Refreshers({"google-service-account": source.factory}, clock=clock)
    task = asyncio.create_task(creds.run())
    try:
        creds.update([backend()])  # wakes the loop
        for _ in range(200):
            if creds.credential(backend()) is not None:
                break
            await asyncio.sleep(0.01)
        assert creds.credential(backend()) == "token-1"
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
