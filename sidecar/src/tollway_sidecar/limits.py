"""The gateway's size and time limits that Envoy and the sidecar must agree on.

Envoy buffers a whole request (ext_proc `BUFFERED`) and a whole JSON answer (to price it before its
headers leave), and sends each to the sidecar as one gRPC message; the sidecar's gRPC server must
accept a message that large, or the call fails with gRPC's own error. One module, so the bootstrap,
the dynamic routes and the sidecar's server all read the same numbers.
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "DEFAULT_MAX_REQUEST_BYTES",
    "DEFAULT_MAX_RESPONSE_BYTES",
    "GRPC_MESSAGE_MARGIN_BYTES",
    "MESSAGE_TIMEOUT_MS",
    "grpc_message_limit",
]

DEFAULT_MAX_REQUEST_BYTES: Final = 10 * 1024 * 1024
"""A request body above this is refused with 413 (Envoy counts the bytes; the sidecar checks
`content-length` first)."""
DEFAULT_MAX_RESPONSE_BYTES: Final = 32 * 1024 * 1024
"""A buffered (non-streamed) answer above this becomes a 502 naming the limit; streamed answers pass
chunk by chunk and have no limit."""
GRPC_MESSAGE_MARGIN_BYTES: Final = 1024 * 1024
"""Room for what an ext_proc message carries besides the body (headers, attributes, framing)."""
MESSAGE_TIMEOUT_MS: Final = 2000
"""Envoy's ext_proc `message_timeout`: how long Envoy waits for the sidecar's reply to one message."""


def grpc_message_limit(max_request_bytes: int, max_response_bytes: int) -> int:
    """The largest gRPC message either side of the ext_proc stream must accept."""
    return max(max_request_bytes, max_response_bytes) + GRPC_MESSAGE_MARGIN_BYTES
