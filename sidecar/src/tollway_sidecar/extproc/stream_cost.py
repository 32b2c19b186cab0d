"""The cost of a streamed call, told to the client at the end of the stream.

A JSON answer carries `x-tollway-cost-usd` in its headers; a stream's headers leave before any
usage exists. With the request header `x-tollway-stream-cost: comment`, its cost goes out as an SSE
comment line `: x-tollway-cost-usd=<usd>` just before the end marker (`data: [DONE]`;
`event: message_stop` on `/v1/messages`), the same exact decimal as the JSON header. Every SSE
parser skips comment lines, so the SDKs read the stream unchanged; a client reading the raw lines
sees the cost before the stream ends. (No HTTP trailer: Envoy 1.40's ext_proc cannot add one to a
response that had none, and the SDKs' HTTP client drops trailers anyway.)
"""

from __future__ import annotations

from typing import Final

from tollway_sidecar.extproc.state import RequestState
from tollway_sidecar.pricing import format_usd

__all__ = ["COST_HEADER", "OPT_IN_HEADER", "OPT_IN_VALUE", "annotate", "with_cost_comment"]

COST_HEADER: Final = "x-tollway-cost-usd"
OPT_IN_HEADER: Final = "x-tollway-stream-cost"
OPT_IN_VALUE: Final = "comment"

_OPENAI_END: Final = b"data: [DONE]"
_ANTHROPIC_END: Final = b"event: message_stop"


def _line_start(out: bytes, marker: bytes) -> int:
    """Where `marker` starts a line in `out`, or -1."""
    at = out.find(marker)
    while at > 0 and out[at - 1] != 0x0A:  # inside another line (never in escaped JSON, but be sure)
        at = out.find(marker, at + 1)
    return at


def with_cost_comment(out: bytes, cost_usd: str, *, anthropic: bool) -> bytes | None:
    """`out` (the bytes forwarded with the stream's last event) with the cost comment line before
    the end marker; after it when the marker began in an earlier chunk. None when neither place is
    a line boundary (the stream is then passed on unchanged rather than risk breaking a line).

    The comment is one line without a blank line after it: inside the end marker's event it does
    not dispatch anything on its own.
    """
    comment = f": {COST_HEADER}={cost_usd}\n".encode()
    at = _line_start(out, _ANTHROPIC_END if anthropic else _OPENAI_END)
    if at >= 0:
        return out[:at] + comment + out[at:]
    if out.endswith(b"\n"):
        return out + comment
    return None


def annotate(state: RequestState, chunk: bytes, replacement: bytes | None) -> bytes | None:
    """What to forward for the stream's last chunk once the call is priced: `replacement` (None:
    `chunk` as it came) with the cost comment, when the client asked for it."""
    if not state.cost_comment or state.cost is None:
        return replacement
    commented = with_cost_comment(
        chunk if replacement is None else replacement,
        format_usd(state.cost),
        anthropic=state.operation == "messages",
    )
    return replacement if commented is None else commented
