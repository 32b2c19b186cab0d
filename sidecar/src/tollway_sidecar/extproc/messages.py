"""Building ext_proc replies: header mutations, body mutations, and OpenAI-shaped immediate answers."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from functools import cache

from envoy.config.core.v3 import base_pb2
from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as ep
from envoy.type.v3 import http_status_pb2

from tollway_sidecar.providers.errors import anthropic_error_body as anthropic_error_body
from tollway_sidecar.providers.errors import openai_error_body as openai_error_body

ProcessingResponse = ep.ProcessingResponse
ProcessingMode = processing_mode_pb2.ProcessingMode

_OVERWRITE = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD


def header_map(headers: Mapping[str, str] | Iterable[tuple[str, str]]) -> list[base_pb2.HeaderValueOption]:
    items = headers.items() if isinstance(headers, Mapping) else headers
    return [
        base_pb2.HeaderValueOption(
            header=base_pb2.HeaderValue(key=key, raw_value=value.encode()), append_action=_OVERWRITE
        )
        for key, value in items
    ]


def mutation(set_headers: Mapping[str, str] | None = None, remove: Iterable[str] = ()) -> ep.HeaderMutation:
    return ep.HeaderMutation(set_headers=header_map(set_headers or {}), remove_headers=list(remove))


def headers_of(message: ep.HttpHeaders) -> dict[str, str]:
    """Header names are lowercase in ext_proc; values arrive as raw bytes."""
    out: dict[str, str] = {}
    for header in message.headers.headers:
        out[header.key] = header.raw_value.decode("latin-1") if header.raw_value else header.value
    return out


def immediate(
    status: int,
    body: bytes,
    *,
    headers: Mapping[str, str] | None = None,
    content_type: str = "application/json",
    details: str = "tollway",
) -> ep.ProcessingResponse:
    all_headers = {"content-type": content_type, **(headers or {})}
    return ep.ProcessingResponse(
        immediate_response=ep.ImmediateResponse(
            status=http_status_pb2.HttpStatus(code=status),
            headers=mutation(all_headers),
            body=body,
            details=details,
        )
    )


def error(
    status: int,
    message: str,
    *,
    error_type: str,
    code: str | None,
    param: str | None = None,
    headers: Mapping[str, str] | None = None,
    anthropic: bool = False,
) -> ep.ProcessingResponse:
    """An answer in the OpenAI error shape: {"error": {"message", "type", "param", "code"}}
    (or, with `anthropic`, in the Anthropic shape)."""
    body = (
        anthropic_error_body(status, message)
        if anthropic
        else openai_error_body(message, error_type, code, param)
    )
    return immediate(status, body, headers=headers, details=code or error_type)


def continue_headers(
    phase: str,
    *,
    set_headers: Mapping[str, str] | None = None,
    remove: Iterable[str] = (),
    clear_route_cache: bool = False,
    mode_override: processing_mode_pb2.ProcessingMode | None = None,
) -> ep.ProcessingResponse:
    common = ep.CommonResponse(clear_route_cache=clear_route_cache)
    if set_headers or remove:
        common.header_mutation.CopyFrom(mutation(set_headers, remove))
    response = ep.ProcessingResponse(**{phase: ep.HeadersResponse(response=common)})
    if mode_override is not None:
        response.mode_override.CopyFrom(mode_override)
    return response


def continue_body(
    phase: str,
    *,
    body: bytes | None = None,
    set_headers: Mapping[str, str] | None = None,
    remove: Iterable[str] = (),
    clear_route_cache: bool = False,
) -> ep.ProcessingResponse:
    common = ep.CommonResponse(clear_route_cache=clear_route_cache)
    if set_headers or remove:
        common.header_mutation.CopyFrom(mutation(set_headers, remove))
    if body is not None:
        common.body_mutation.CopyFrom(ep.BodyMutation(body=body))
    return ep.ProcessingResponse(**{phase: ep.BodyResponse(response=common)})


@cache
def response_body_mode(mode: str) -> processing_mode_pb2.ProcessingMode:
    """One shared object per mode: callers only ever copy it (`continue_headers`), never change it."""
    return processing_mode_pb2.ProcessingMode(
        response_body_mode=processing_mode_pb2.ProcessingMode.BodySendMode.Value(mode),
        response_trailer_mode=processing_mode_pb2.ProcessingMode.SKIP,
    )


def _upstream_mode(body: bool, response_headers: bool) -> processing_mode_pb2.ProcessingMode:
    modes = processing_mode_pb2.ProcessingMode
    return modes(
        request_header_mode=modes.SEND,
        request_body_mode=modes.BUFFERED if body else modes.NONE,
        response_header_mode=modes.SEND if response_headers else modes.SKIP,
        response_body_mode=modes.NONE,
        request_trailer_mode=modes.SKIP,
        response_trailer_mode=modes.SKIP,
    )


# The upstream filter's modes for one attempt, by (body rewritten, response headers watched).
# Shared and never mutated: `continue_headers` copies the one it is given.
UPSTREAM_MODES: dict[tuple[bool, bool], processing_mode_pb2.ProcessingMode] = {
    (body, watch): _upstream_mode(body, watch) for body in (False, True) for watch in (False, True)
}
