"""The SSE framing the stream translators share: events out of bytes split anywhere."""

from __future__ import annotations

import random

import pytest

from tollway_sidecar.providers.sse_blocks import SseBlocks, SseEvent, parse_block

STREAM = (
    b'event: message_start\ndata: {"a": 1}\n\n'
    b": a comment\n\n"
    b"event: ping\r\ndata: {}\r\n\r\n"
    b"data: line one\ndata: line two\n\n"
    b"data: [DONE]\n\n"
)
EVENTS = [
    SseEvent("message_start", b'{"a": 1}'),
    SseEvent(None, None),
    SseEvent("ping", b"{}"),
    SseEvent(None, b"line one\nline two"),
    SseEvent(None, b"[DONE]"),
]


@pytest.mark.parametrize("seed", range(20))
def test_events_are_the_same_however_the_bytes_are_split(seed: int) -> None:
    rng = random.Random(seed)
    cuts = sorted(rng.sample(range(1, len(STREAM)), rng.randint(1, 12)))
    blocks, events = SseBlocks(), []
    for start, end in zip([0, *cuts], [*cuts, len(STREAM)], strict=True):
        events += blocks.feed(STREAM[start:end])
    assert events == EVENTS
    assert blocks.flush() is None and not blocks.overflowed


def test_an_unterminated_last_event_comes_out_at_flush_only() -> None:
    blocks = SseBlocks()
    assert blocks.feed(b'data: {"done": true}\n') == []
    assert blocks.flush() == SseEvent(None, b'{"done": true}')
    assert blocks.flush() is None


def test_an_event_larger_than_the_bound_is_dropped_and_reported() -> None:
    blocks = SseBlocks(max_pending=64)
    assert blocks.feed(b"data: " + b"x" * 100) == []
    assert blocks.overflowed
    assert blocks.feed(b"\n\ndata: next\n\n") == [SseEvent(None, None), SseEvent(None, b"next")]


def test_the_space_after_the_colon_is_optional_and_only_one_is_removed() -> None:
    assert parse_block(b"data:x\nevent:e") == SseEvent("e", b"x")
    assert parse_block(b"data:  two spaces") == SseEvent(None, b" two spaces")
