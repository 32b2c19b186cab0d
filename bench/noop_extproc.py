"""A do-nothing ext_proc server, the floor under Tollway's router filter:
`python -m bench.noop_extproc --socket /path/x.sock`.

It serves `envoy.service.ext_proc.v3.ExternalProcessor` with grpc.aio on `unix:<socket>` (on uvloop
when importable, reading and writing with `context.read()`/`context.write()` like the sidecar) and
answers every message the way Tollway's router filter does for a one-backend route, with nothing
behind it: no JSON, no keys, no quotas, no Redis, no tracing. Every reply is built once, at import:

- request_headers: continue;
- request_body: continue, setting `x-floor: 1` and clearing the route cache (where Tollway sets its
  route headers, so Envoy matches the route again);
- response_headers: continue, asking (`mode_override`) for the body STREAMED when the response is
  `text/event-stream`, else BUFFERED;
- response_body: continue; a BUFFERED (JSON) body also sets `x-floor-cost: 0`, where Tollway sets
  its cost header;
- anything else: the matching empty continue.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
from typing import Any

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as ep
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as ep_grpc

Mode = processing_mode_pb2.ProcessingMode


def _set_header(name: str, value: str) -> Any:
    return ep.HeaderMutation(
        set_headers=[
            base_pb2.HeaderValueOption(
                header=base_pb2.HeaderValue(key=name, raw_value=value.encode()),
                append_action=base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD,
            )
        ]
    )


def _response_headers(body_mode: Any) -> Any:
    reply = ep.ProcessingResponse(response_headers=ep.HeadersResponse())
    reply.mode_override.CopyFrom(Mode(response_body_mode=body_mode, response_trailer_mode=Mode.SKIP))
    return reply


REQUEST_HEADERS = ep.ProcessingResponse(request_headers=ep.HeadersResponse())
REQUEST_BODY = ep.ProcessingResponse(
    request_body=ep.BodyResponse(
        response=ep.CommonResponse(header_mutation=_set_header("x-floor", "1"), clear_route_cache=True)
    )
)
RESPONSE_HEADERS_STREAMED = _response_headers(Mode.STREAMED)
RESPONSE_HEADERS_BUFFERED = _response_headers(Mode.BUFFERED)
RESPONSE_BODY_STREAMED = ep.ProcessingResponse(response_body=ep.BodyResponse())
RESPONSE_BODY_BUFFERED = ep.ProcessingResponse(
    response_body=ep.BodyResponse(
        response=ep.CommonResponse(header_mutation=_set_header("x-floor-cost", "0"))
    )
)
OTHERS = {
    "request_trailers": ep.ProcessingResponse(request_trailers=ep.TrailersResponse()),
    "response_trailers": ep.ProcessingResponse(response_trailers=ep.TrailersResponse()),
}


def is_event_stream(headers: Any) -> bool:
    """Whether an `HttpHeaders` message has a `text/event-stream` content type."""
    for header in headers.headers.headers:
        if header.key == "content-type":
            return b"text/event-stream" in header.raw_value or "text/event-stream" in header.value
    return False


class NoopProcessor(ep_grpc.ExternalProcessorServicer):  # type: ignore[misc]
    async def Process(self, request_iterator: Any, context: Any) -> None:
        buffered = True
        while True:
            request = await context.read()
            if request is grpc.aio.EOF:
                return
            which = request.WhichOneof("request")
            if which == "request_headers":
                reply = REQUEST_HEADERS
            elif which == "request_body":
                reply = REQUEST_BODY
            elif which == "response_headers":
                buffered = not is_event_stream(request.response_headers)
                reply = RESPONSE_HEADERS_BUFFERED if buffered else RESPONSE_HEADERS_STREAMED
            elif which == "response_body":
                reply = RESPONSE_BODY_BUFFERED if buffered else RESPONSE_BODY_STREAMED
            else:
                reply = OTHERS[which]
            await context.write(reply)


async def serve(socket_path: str) -> None:
    """Serve until SIGTERM or SIGINT."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(socket_path)
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    ep_grpc.add_ExternalProcessorServicer_to_server(NoopProcessor(), server)
    server.add_insecure_port(f"unix:{socket_path}")
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"noop ext_proc ready on unix:{socket_path}", flush=True)
    await stop.wait()
    await server.stop(grace=1)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--socket", required=True, help="the Unix socket to listen on")
    args = parser.parse_args()
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency of the sidecar
        asyncio.run(serve(args.socket))
    else:
        uvloop.run(serve(args.socket))


if __name__ == "__main__":
    main()
