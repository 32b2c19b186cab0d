"""free_port: ports a child binds a moment later, never from the range outgoing connections use."""

from __future__ import annotations

import itertools
import random
import socket

import pytest

from tollway import ports


def test_ports_are_distinct_and_below_the_ephemeral_range() -> None:
    low = ports._ephemeral_low()
    picked = [ports.free_port() for _ in range(300)]
    assert len(set(picked)) == len(picked)
    assert all(1024 <= port < low for port in picked)


def test_a_port_someone_listens_on_is_never_handed_out(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        taken = held.getsockname()[1]
        held.listen()
        # The pick lands on the taken port twice, then anywhere (its own generator: the module's is patched).
        own = random.Random()
        tries = itertools.chain([taken, taken], iter(lambda: own.randrange(1024, 32768), None))
        monkeypatch.setattr(ports.random, "randrange", lambda low, high: next(tries))
        monkeypatch.setattr(ports, "_handed_out", set())
        assert ports.free_port() != taken
