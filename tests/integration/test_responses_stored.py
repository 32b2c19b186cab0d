"""Stored Responses through the real Envoy with the openai SDK: created (JSON and streamed), then
retrieved, listed (input items), deleted and gone; only for the key that created them; and a
`previous_response_id` pinned to the backend that stored it, with no other backend tried."""

from __future__ import annotations

from collections.abc import Callable

import openai
import pytest
from gateway_env import RESTRICTED_KEY, Gateway


def _stored_path_calls(gateway: Gateway, fleet: str, response_id: str) -> list[tuple[str, str]]:
    return [(r["method"], r["path"]) for r in gateway.requests_at(fleet) if response_id in r["path"]]


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_create_retrieve_list_delete_and_then_404(
    gateway: Gateway, sdk_for: Callable[..., openai.OpenAI], stream: bool
) -> None:
    sdk = sdk_for()
    if stream:
        with sdk.responses.stream(model="responses-mini", input="Keep me") as events:
            created = events.get_final_response()
    else:
        created = sdk.responses.create(model="responses-mini", input="Keep me")
    gateway.clear_mock_requests()

    raw = sdk.responses.with_raw_response.retrieve(created.id)
    again = raw.parse()
    assert again.id == created.id and again.output_text == created.output_text
    assert raw.headers["x-tollway-backend"] == "openai" and raw.headers["x-tollway-cost-usd"] == "0"
    items = sdk.responses.input_items.list(created.id)
    assert [part.text for item in items.data for part in item.content] == ["Keep me"]  # type: ignore[union-attr]
    deleted = sdk.responses.with_raw_response.delete(created.id)
    assert deleted.http_response.status_code == 200
    with pytest.raises(openai.NotFoundError) as missing:
        sdk.responses.retrieve(created.id)
    assert missing.value.body == {
        "message": f"Response with id '{created.id}' not found.",
        "type": "invalid_request_error",
        "param": None,
        "code": "response_not_found",
    }
    # The last retrieve never reached the backend: the delete removed the gateway's record too.
    assert _stored_path_calls(gateway, "SECOND", created.id) == [
        ("GET", f"/v1/responses/{created.id}"),
        ("GET", f"/v1/responses/{created.id}/input_items"),
        ("DELETE", f"/v1/responses/{created.id}"),
    ]


def test_another_key_can_neither_read_nor_delete_it(
    gateway: Gateway, sdk_for: Callable[..., openai.OpenAI]
) -> None:
    created = sdk_for().responses.create(model="responses-mini", input="Mine only")
    gateway.clear_mock_requests()
    stranger = sdk_for(RESTRICTED_KEY)
    with pytest.raises(openai.NotFoundError):
        stranger.responses.retrieve(created.id)
    with pytest.raises(openai.NotFoundError):
        stranger.responses.input_items.list(created.id)
    with pytest.raises(openai.NotFoundError):
        stranger.responses.delete(created.id)
    assert _stored_path_calls(gateway, "SECOND", created.id) == []  # refused before any provider
    assert sdk_for().responses.retrieve(created.id).id == created.id  # still the owner's
    with pytest.raises(openai.AuthenticationError):
        sdk_for("tw-not-a-key").responses.retrieve(created.id)


def test_previous_response_id_is_pinned_to_the_backend_that_stored_it(
    gateway: Gateway, sdk_for: Callable[..., openai.OpenAI]
) -> None:
    sdk = sdk_for()
    # `broken` (503) comes first on this route: the response is created (and stored) by `openai`.
    first = sdk.responses.with_raw_response.create(model="responses-fallback", input="Remember 42")
    assert first.headers["x-tollway-backend"] == "openai"
    gateway.clear_mock_requests()

    follow = sdk.responses.with_raw_response.create(
        model="responses-fallback", input="What did I say?", previous_response_id=first.parse().id
    )
    assert follow.parse().status == "completed"
    assert follow.headers["x-tollway-backend"] == "openai" and follow.headers["x-tollway-attempts"] == "1"
    assert gateway.requests_at("BROKEN") == []  # the first backend of the route was never tried
    (upstream,) = gateway.requests_at("SECOND")
    assert upstream["body"]["previous_response_id"] == first.parse().id
    assert follow.headers["x-tollway-cost-usd"] != "0"  # a continuation is a priced call

    retrieved = sdk.responses.with_raw_response.retrieve(follow.parse().id)
    assert retrieved.headers["x-tollway-backend"] == "openai" and gateway.requests_at("BROKEN") == []

    with pytest.raises(openai.NotFoundError) as unknown:
        sdk.responses.create(model="responses-fallback", input="x", previous_response_id="resp_nope")
    assert isinstance(unknown.value.body, dict) and unknown.value.body["param"] == "previous_response_id"
    assert gateway.requests_at("BROKEN") == [] and len(gateway.requests_at("SECOND")) == 2


def test_azure_passthrough_is_retrieved_on_its_v1_api(
    gateway: Gateway, sdk_for: Callable[..., openai.OpenAI]
) -> None:
    created = sdk_for().responses.create(model="azure-gpt", input="Hello, Azure")
    gateway.clear_mock_requests()
    assert sdk_for().responses.retrieve(created.id).output_text == created.output_text
    (upstream,) = gateway.requests_at("SECOND")
    assert upstream["path"] == f"/openai/v1/responses/{created.id}"
    assert upstream["headers"]["api-key"] and "authorization" not in upstream["headers"]
