"""The per-request cache policy: headers (ours, Cache-Control, Helicone's) combined with the route's mode."""

from __future__ import annotations

import pytest

from tollway_sidecar.cache import BadCacheHeader, CacheDecision, decide
from tollway_sidecar.config.models import CacheSettings

ON = CacheSettings(mode="Exact", ttl_s=300, max_ttl_s=3600)
OFF = CacheSettings()


def rw(headers: dict[str, str], settings: CacheSettings = ON) -> tuple[bool, bool]:
    decision = decide(settings, headers)
    return decision.read, decision.write


def test_a_route_with_the_cache_on_reads_and_writes_with_its_ttl_by_default() -> None:
    decision = decide(ON, {})
    assert (decision.read, decision.write, decision.ttl_s, decision.max_age_s) == (True, True, 300, None)
    assert decision.outcome(None) == "MISS" and decision.outcome("exact") == "HIT"
    assert decision.outcome("semantic") == "SEMANTIC_HIT"
    assert decision.answer_headers("MISS") == [("x-tollway-cache", "MISS")]


@pytest.mark.parametrize(
    ("value", "expected", "outcome"),
    [
        ("on", (True, True), "MISS"),
        ("ON ", (True, True), "MISS"),
        ("off", (False, False), "BYPASS"),
        ("refresh", (False, True), "REFRESH"),
        ("read-only", (True, False), "MISS"),
    ],
)
def test_x_tollway_cache(value: str, expected: tuple[bool, bool], outcome: str) -> None:
    decision = decide(ON, {"x-tollway-cache": value})
    assert (decision.read, decision.write) == expected
    assert decision.outcome(None) == outcome


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("no-store", (False, False)),
        ("no-cache", (False, True)),
        ("max-age=0", (False, True)),
        ("max-age=60", (True, True)),
        ("private, no-transform, max-stale=5", (True, True)),  # unknown directives are ignored
        ("No-Store", (False, False)),
    ],
)
def test_cache_control(value: str, expected: tuple[bool, bool]) -> None:
    assert rw({"cache-control": value}) == expected


def test_max_age_sets_the_ttl_capped_at_max_ttl_and_bounds_the_age_served() -> None:
    decision = decide(ON, {"cache-control": "max-age=60"})
    assert (decision.ttl_s, decision.max_age_s) == (60, 60)
    capped = decide(ON, {"cache-control": "max-age=999999"})
    assert (capped.ttl_s, capped.max_age_s) == (3600, 999999)


def test_directives_only_take_away_so_the_most_restrictive_wins() -> None:
    assert rw({"x-tollway-cache": "on", "cache-control": "no-store"}) == (False, False)
    assert rw({"x-tollway-cache": "read-only", "cache-control": "no-cache"}) == (False, False)
    assert rw({"x-tollway-cache": "refresh", "helicone-cache-enabled": "true"}) == (False, True)
    assert decide(ON, {"x-tollway-cache": "read-only", "cache-control": "no-cache"}).outcome(None) == "BYPASS"


def test_helicone_headers_work_unchanged_and_get_helicone_answer_header() -> None:
    decision = decide(ON, {"helicone-cache-enabled": "true", "helicone-cache-seed": "user-7"})
    assert (decision.read, decision.write) == (True, True)
    assert decision.partition_parts == (("helicone-seed", "user-7"),)
    assert decision.answer_headers("HIT") == [("x-tollway-cache", "HIT"), ("helicone-cache", "HIT")]
    assert decision.answer_headers("REFRESH")[1] == ("helicone-cache", "MISS")
    assert rw({"helicone-cache-enabled": "false"}) == (False, False)


def test_namespace_and_seed_headers_are_partition_parts() -> None:
    decision = decide(ON, {"x-tollway-cache-namespace": "tenant-a", "x-tollway-cache-seed": "42"})
    assert decision.partition_parts == (("namespace", "tenant-a"), ("seed", "42"))


def test_a_route_with_the_cache_off_is_never_turned_on_by_a_header() -> None:
    for headers in (
        {"x-tollway-cache": "on"},
        {"helicone-cache-enabled": "true"},
        {"cache-control": "max-age=60"},
    ):
        decision = decide(OFF, headers)
        assert not decision.active and not decision.enabled
    assert decide(OFF, {}).answer_headers("BYPASS") == []  # nothing asked, nothing said
    asked = decide(OFF, {"helicone-cache-enabled": "true"})
    assert asked.answer_headers(asked.outcome(None)) == [
        ("x-tollway-cache", "BYPASS"),
        ("helicone-cache", "MISS"),
    ]
    assert decide(OFF, {"cache-control": "no-cache"}).answer_headers("BYPASS") == []


def test_on_an_off_route_malformed_cache_headers_are_not_an_error() -> None:
    decision = decide(OFF, {"x-tollway-cache": "sometimes", "cache-control": "max-age=soon"})
    assert decision == CacheDecision(False, False, False, OFF.ttl_s, asked=True)


@pytest.mark.parametrize(
    ("headers", "header", "text"),
    [
        ({"x-tollway-cache": "sometimes"}, "x-tollway-cache", "on, off, refresh, read-only"),
        ({"helicone-cache-enabled": "yes"}, "helicone-cache-enabled", "true or false"),
        ({"cache-control": "max-age=soon"}, "cache-control", "whole number"),
        ({"cache-control": "max-age=-5"}, "cache-control", "whole number"),
        ({"cache-control": "max-age=١٢"}, "cache-control", "whole number"),  # Unicode digits
        ({"x-tollway-cache-seed": "x" * 257}, "x-tollway-cache-seed", "1 to 256"),
        ({"x-tollway-cache-namespace": ""}, "x-tollway-cache-namespace", "printable"),
        ({"helicone-cache-seed": " padded"}, "helicone-cache-seed", "printable"),
        ({"x-tollway-cache-seed": "tab\there"}, "x-tollway-cache-seed", "printable"),
    ],
)
def test_a_malformed_cache_header_is_a_clear_error_naming_it(
    headers: dict[str, str], header: str, text: str
) -> None:
    with pytest.raises(BadCacheHeader) as caught:
        decide(ON, headers)
    assert caught.value.header == header
    assert text in str(caught.value)
