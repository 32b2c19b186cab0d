"""Where a stream's cost comment goes: before the end marker's line, never inside another line."""

from __future__ import annotations

import pytest

from tollway_sidecar.extproc.stream_cost import with_cost_comment

COMMENT = b": x-tollway-cost-usd=0.00001275\n"
USAGE = b'data: {"choices":[],"usage":{"prompt_tokens":5}}\n\n'


def test_before_done_in_the_same_chunk() -> None:
    out = with_cost_comment(USAGE + b"data: [DONE]\n\n", "0.00001275", anthropic=False)
    assert out == USAGE + COMMENT + b"data: [DONE]\n\n"


def test_crlf_streams_keep_their_line_ends() -> None:
    chunk = b'data: {"x":1}\r\n\r\ndata: [DONE]\r\n\r\n'
    out = with_cost_comment(chunk, "0.00001275", anthropic=False)
    assert out == b'data: {"x":1}\r\n\r\n' + COMMENT + b"data: [DONE]\r\n\r\n"


def test_anthropic_streams_get_it_before_message_stop() -> None:
    chunk = b'event: message_delta\ndata: {}\n\nevent: message_stop\ndata: {"type":"message_stop"}\n\n'
    out = with_cost_comment(chunk, "0.00001275", anthropic=True)
    assert out is not None
    assert out.index(COMMENT) == chunk.index(b"event: message_stop")


def test_a_marker_inside_another_line_is_not_a_place_for_it() -> None:
    chunk = b'data: {"text":"data: [DONE]"}\n\ndata: [DONE]\n\n'
    out = with_cost_comment(chunk, "1", anthropic=False)
    assert out == b'data: {"text":"data: [DONE]"}\n\n: x-tollway-cost-usd=1\ndata: [DONE]\n\n'


@pytest.mark.parametrize(
    ("chunk", "expected"),
    [
        (b"NE]\n\n", b"NE]\n\n" + COMMENT),  # the marker began in an earlier chunk: after it
        (b"NE]\n\ndata: x", None),  # no line boundary at the end: leave the stream alone
    ],
)
def test_when_the_marker_started_in_an_earlier_chunk(chunk: bytes, expected: bytes | None) -> None:
    assert with_cost_comment(chunk, "0.00001275", anthropic=False) == expected
