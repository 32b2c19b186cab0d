"""The Responses API passed through to OpenAI and Azure: paths, renamed model, usage read once from
JSON and from the typed event stream (any chunking), and the request checks and estimate."""

from __future__ import annotations

import json
import random

import pytest

from tollway_sidecar.config.models import Backend
from tollway_sidecar.extproc.validation import BadRequest, validate
from tollway_sidecar.providers.adapters.base import AttemptRequest
from tollway_sidecar.providers.adapters.registry import adapter_for
from tollway_sidecar.providers.usage import TokenUsage
from tollway_sidecar.quota.estimate import PER_MESSAGE_TOKENS, REPLY_PRIMING_TOKENS, output_cap, prompt_parts
from tollway_sidecar.routing.select import estimate_tokens

USAGE = {
    "input_tokens": 40,
    "input_tokens_details": {"cached_tokens": 16},
    "output_tokens": 25,
    "output_tokens_details": {"reasoning_tokens": 7},
    "total_tokens": 65,
}
EXPECTED = TokenUsage(input_tokens=40, output_tokens=25, cache_read_tokens=16, reasoning_tokens=7)


def response(status: str = "completed", output: list[object] | None = None) -> dict[str, object]:
    return {
        "id": "resp_1",
        "object": "response",
        "created_at": 1,
        "status": status,
        "model": "gpt-4o-mini-2024-07-18",
        "output": output
        if output is not None
        else [
            {
                "type": "message",
                "id": "msg_1",
                "status": "completed",
                "role": "assistant",
                "content": [{"type": "output_text", "text": "Hello there", "annotations": []}],
            }
        ],
        "usage": USAGE,
        "error": None,
        "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
    }


def attempt(provider: str, base_url: str, body: dict[str, object]) -> AttemptRequest:
    backend = Backend(name="b", provider=provider, model="gpt-4o-mini", base_url=base_url)  # type: ignore[arg-type]
    raw = json.dumps(body).encode()
    return AttemptRequest(backend, "/v1/responses", {}, body, raw, "sk-test", 0.0, False)


def test_openai_path_credential_and_renamed_model() -> None:
    adapter = adapter_for("responses", "openai")
    assert adapter is not None
    up = adapter.request(attempt("openai", "https://api.openai.com/v1", {"model": "mini", "input": "hi"}))
    assert up.path == "/v1/responses"
    assert up.set_headers == {"authorization": "Bearer sk-test"}
    assert up.body is not None and json.loads(up.body)["model"] == "gpt-4o-mini"


def test_azure_uses_the_resource_v1_api_with_the_deployment_as_model() -> None:
    adapter = adapter_for("responses", "azure-openai")
    assert adapter is not None
    base = "https://res.openai.azure.com/openai/deployments/my-deployment"
    up = adapter.request(attempt("azure-openai", base, {"model": "mini", "input": "hi"}))
    assert up.path == "/openai/v1/responses"
    assert up.set_headers == {"api-key": "sk-test"}
    assert up.body is not None and json.loads(up.body)["model"] == "my-deployment"


def test_json_answer_is_passed_on_with_its_usage_text_and_end() -> None:
    adapter = adapter_for("responses", "openai")
    assert adapter is not None
    read = adapter.answer(200, "application/json", json.dumps(response()).encode())
    assert read.body is None and read.bad_gateway is None
    assert read.usage == EXPECTED
    assert read.model == "gpt-4o-mini-2024-07-18" and read.text == "Hello there"
    assert read.finish_reasons == ("stop",)
    calls = [{"type": "function_call", "id": "fc_1", "call_id": "c", "name": "f", "arguments": "{}"}]
    assert adapter.answer(
        200, "application/json", json.dumps(response(output=calls)).encode()
    ).finish_reasons == ("tool_calls",)
    cut = adapter.answer(200, "application/json", json.dumps(response("incomplete")).encode())
    assert cut.finish_reasons == ("length",)
    broken = adapter.answer(200, "application/json", b"<html>")
    assert broken.usage is None and broken.bad_gateway is not None


def sse(events: list[dict[str, object]]) -> bytes:
    return b"".join(f"event: {event['type']}\ndata: {json.dumps(event)}\n\n".encode() for event in events)


STREAM = sse(
    [
        {
            "type": "response.created",
            "sequence_number": 0,
            "response": {**response("in_progress"), "usage": None},
        },
        {"type": "response.output_text.delta", "sequence_number": 1, "delta": "Hello", "item_id": "msg_1"},
        {"type": "response.output_text.delta", "sequence_number": 2, "delta": " there", "item_id": "msg_1"},
        {
            "type": "response.output_text.done",
            "sequence_number": 3,
            "text": "Hello there",
            "item_id": "msg_1",
        },
        {"type": "response.completed", "sequence_number": 4, "response": response()},
    ]
)


@pytest.mark.parametrize("seed", range(20))
def test_stream_usage_from_response_completed_under_any_chunking(seed: int) -> None:
    adapter = adapter_for("responses", "openai")
    assert adapter is not None
    reader = adapter.stream(client_model="mini", strip_usage_chunk=False)
    rng = random.Random(seed)
    cuts = sorted(rng.sample(range(1, len(STREAM)), 6))
    forwarded = b""
    for start, end in zip([0, *cuts], [*cuts, len(STREAM)], strict=True):
        piece = STREAM[start:end]
        out = reader.feed(piece)
        forwarded += piece if out is None else out
    forwarded += reader.flush()
    assert forwarded == STREAM  # never rewritten
    assert reader.complete
    parsed = reader.finish()
    assert parsed.usage == EXPECTED and parsed.error is None
    assert parsed.model == "gpt-4o-mini-2024-07-18"
    assert parsed.output_chunks == 2 and parsed.finish_reasons == ("stop",)


def test_a_stream_cut_before_response_completed_has_no_usage() -> None:
    adapter = adapter_for("responses", "openai")
    assert adapter is not None
    reader = adapter.stream(client_model="mini", strip_usage_chunk=False)
    reader.feed(STREAM[: STREAM.index(b"event: response.completed")])
    parsed = reader.finish()
    assert not parsed.complete and parsed.usage is None and parsed.output_chunks == 2


def test_an_error_event_is_reported() -> None:
    adapter = adapter_for("responses", "openai")
    assert adapter is not None
    reader = adapter.stream(client_model="mini", strip_usage_chunk=False)
    reader.feed(sse([{"type": "error", "code": "server_error", "message": "boom", "sequence_number": 0}]))
    assert reader.finish().error == "provider error: server_error: boom"


def test_validation_names_the_field() -> None:
    assert validate("responses", {"model": "m", "input": "hi"}) == "m"
    assert validate("responses", {"model": "m", "input": [{"role": "user", "content": "hi"}]}) == "m"
    cases = [
        ({"model": "m"}, "input"),
        ({"model": "m", "input": 3}, "input"),
        ({"model": "m", "input": ["hi"]}, "input[0]"),
        ({"model": "m", "input": "hi", "max_output_tokens": 0}, "max_output_tokens"),
        ({"model": "m", "input": "hi", "instructions": 5}, "instructions"),
        ({"model": "m", "input": "hi", "stream": "yes"}, "stream"),
    ]
    for body, param in cases:
        with pytest.raises(BadRequest) as caught:
            validate("responses", body)
        assert caught.value.param == param, body


def test_estimate_reads_instructions_input_and_max_output_tokens() -> None:
    body = {"model": "m", "instructions": "be brief", "input": [{"role": "user", "content": "hi"}]}
    parts = prompt_parts("responses", body)
    assert parts.fixed == REPLY_PRIMING_TOKENS + 2 * PER_MESSAGE_TOKENS
    assert "be brief" in parts.strings and "hi" in parts.strings
    assert output_cap("responses", {**body, "max_output_tokens": 77}, 4096) == 77
    assert output_cap("responses", body, 4096) == 4096
    # Ranking by cost: a Responses call has output, unlike an embeddings call with `input`.
    assert estimate_tokens({**body, "max_output_tokens": 77}, 100)[1] == 77
