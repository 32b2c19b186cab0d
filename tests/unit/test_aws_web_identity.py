"""Web-identity credentials for Bedrock: the sidecar's source (botocore's STS client) against the mock
provider's STS endpoint over HTTP, and the temporary keys it issues signing Bedrock calls."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

import aiohttp
import pytest
import pytest_asyncio
from yarl import URL

from tollway.mockprovider import MockSettings, base_url, serve
from tollway_sidecar.config.models import Backend
from tollway_sidecar.providers import bedrock
from tollway_sidecar.providers.adapters.base import AttemptRequest
from tollway_sidecar.providers.adapters.chat_bedrock import ChatBedrock
from tollway_sidecar.providers.aws_web_identity import (
    DEFAULT_TOKEN_FILE,
    WebIdentityError,
    WebIdentitySource,
    fetch_for,
    source_for,
)
from tollway_sidecar.providers.refresh import Refreshers
from tollway_sidecar.providers.sources import credential_sources

ROLE = "arn:aws:iam::123456789012:role/tollway-gateway"
NS = {"sts": "https://sts.amazonaws.com/doc/2011-06-15/"}


def b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")


def jwt(**claims: Any) -> str:
    body = {"iss": "https://oidc.example/id/ABC", "sub": "system:serviceaccount:tollway:gateway"}
    body |= {"aud": "sts.amazonaws.com", "exp": int(time.time()) + 3600} | claims
    return f"{b64({'alg': 'RS256', 'kid': 'k1'})}.{b64(body)}.c2lnbmF0dXJl"


TOKEN = jwt()


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def mock_url() -> AsyncIterator[str]:
    settings = MockSettings(port=0, sts_web_identity_token=TOKEN, sts_role_arn=ROLE, sts_duration_s=2.0)
    runner = await serve(settings)
    try:
        yield base_url(runner)
    finally:
        await runner.cleanup()


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "token"
    path.write_text(TOKEN + "\n")
    return path


@pytest.fixture
def sts_env(monkeypatch: pytest.MonkeyPatch, mock_url: str, tmp_path: Path) -> None:
    # botocore's own endpoint override, as an operator sets it for a private STS endpoint.
    monkeypatch.setenv("AWS_ENDPOINT_URL_STS", mock_url)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)


def source(token_file: Path, role: str = ROLE) -> WebIdentitySource:
    return WebIdentitySource(
        role_arn=role, region="us-east-1", token_file=str(token_file), session_name="tollway-br"
    )


def backend(url: str, role: str | None = ROLE) -> Backend:
    return Backend(
        name="br",
        provider="bedrock",
        model="amazon.nova-lite-v1:0",
        base_url=url,
        region="us-east-1",
        credential=role,
        credential_source="aws-web-identity",
    )


async def converse(url: str, credential: str) -> tuple[int, dict[str, str], bytes]:
    """One Bedrock call as Envoy sends it, signed by the adapter with `credential`."""
    b = backend(url)
    body = {"model": "fast", "messages": [{"role": "user", "content": "Hello"}]}
    request = ChatBedrock().request(
        AttemptRequest(b, "/v1/chat/completions", {}, body, None, credential, time.time(), False)
    )
    assert request.body is not None
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            URL(f"{url}{request.path}", encoded=True),
            data=request.body,
            headers={"host": b.host, **request.set_headers},
        ) as resp,
    ):
        return resp.status, dict(resp.headers), await resp.read()


async def test_fetch_gets_temporary_keys_that_sign_bedrock_calls(
    sts_env: None, token_file: Path, mock_url: str
) -> None:
    before = time.time()
    credential, expires_at = await asyncio.to_thread(source(token_file).fetch)
    keys = bedrock.parse_credentials(credential)
    assert keys is not None and keys.access_key.startswith("ASIA") and keys.token
    assert before + 1 <= expires_at <= time.time() + 3  # the mock's 2 s lifetime, to the second
    status, _, body = await converse(mock_url, credential)
    assert status == 200, body
    recorded = await requests_at(mock_url)
    upstream = recorded[-1]
    assert upstream["headers"]["x-amz-security-token"] == keys.token
    assert "x-amz-security-token" in upstream["headers"]["authorization"]
    sts_call = next(r for r in reversed(recorded) if r["path"] == "/")
    assert sts_call["body"]["WebIdentityToken"] == TOKEN
    assert sts_call["body"]["RoleSessionName"] == "tollway-br"


async def requests_at(url: str) -> list[dict[str, Any]]:
    async with aiohttp.ClientSession() as http, http.get(f"{url}/_mock/requests") as resp:
        return list(await resp.json())


async def test_expired_temporary_keys_are_refused_and_a_new_fetch_serves(
    sts_env: None, token_file: Path, mock_url: str
) -> None:
    credential, expires_at = await asyncio.to_thread(source(token_file).fetch)
    await asyncio.sleep(max(0.0, expires_at - time.time()) + 1.1)
    status, headers, body = await converse(mock_url, credential)
    assert status == 403
    assert headers["x-amzn-ErrorType"].startswith("ExpiredTokenException:")
    assert "expired" in json.loads(body)["message"]
    fresh, _ = await asyncio.to_thread(source(token_file).fetch)
    assert fresh != credential
    assert (await converse(mock_url, fresh))[0] == 200


async def test_a_session_token_not_sent_is_refused(sts_env: None, token_file: Path, mock_url: str) -> None:
    credential, _ = await asyncio.to_thread(source(token_file).fetch)
    keys = json.loads(credential)
    del keys["session_token"]
    status, headers, _ = await converse(mock_url, json.dumps(keys))
    assert status == 403
    assert headers["x-amzn-ErrorType"].startswith("UnrecognizedClientException:")


@pytest.mark.parametrize(
    ("token", "code"),
    [
        (jwt(sub="system:serviceaccount:other:sa"), "InvalidIdentityToken"),  # a JWT, not the one
        ("not-a-jwt", "InvalidIdentityToken"),
        (jwt(exp=int(time.time()) - 10), "ExpiredTokenException"),
    ],
)
async def test_sts_refuses_a_wrong_token_with_the_reason(
    sts_env: None, tmp_path: Path, token: str, code: str
) -> None:
    path = tmp_path / "token"
    path.write_text(token)
    with pytest.raises(WebIdentityError, match=code) as caught:
        await asyncio.to_thread(source(path).fetch)
    assert token not in str(caught.value)


async def test_sts_refuses_another_role(sts_env: None, token_file: Path) -> None:
    with pytest.raises(WebIdentityError, match="AccessDenied"):
        await asyncio.to_thread(source(token_file, "arn:aws:iam::123456789012:role/other").fetch)


async def test_a_missing_token_file_is_named(sts_env: None, tmp_path: Path) -> None:
    with pytest.raises(WebIdentityError, match=r"cannot read the web identity token file .*absent"):
        await asyncio.to_thread(source(tmp_path / "absent").fetch)


async def test_the_sts_wire_format(mock_url: str) -> None:
    form = {
        "Action": "AssumeRoleWithWebIdentity",
        "Version": "2011-06-15",
        "RoleArn": ROLE,
        "RoleSessionName": "raw",
        "WebIdentityToken": TOKEN,
    }
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{mock_url}/sts", data=form) as resp:
            assert resp.status == 200 and resp.content_type == "text/xml"
            root = ET.fromstring(await resp.text())
        assert root.tag == f"{{{NS['sts']}}}AssumeRoleWithWebIdentityResponse"
        creds = root.find("sts:AssumeRoleWithWebIdentityResult/sts:Credentials", NS)
        assert creds is not None
        assert {child.tag.split("}")[1] for child in creds} == {
            "AccessKeyId",
            "SecretAccessKey",
            "SessionToken",
            "Expiration",
        }
        async with http.post(f"{mock_url}/", data={**form, "Action": "AssumeRole"}) as resp:
            assert resp.status == 400
            error = ET.fromstring(await resp.text()).find("sts:Error/sts:Code", NS)
            assert error is not None and error.text == "InvalidAction"


def test_source_for_takes_the_backends_role_else_the_pods() -> None:
    env = {"AWS_ROLE_ARN": "arn:aws:iam::123456789012:role/pod", "AWS_WEB_IDENTITY_TOKEN_FILE": "/t"}
    own = source_for(backend("http://b", ROLE), env)
    assert (own.role_arn, own.token_file, own.region) == (ROLE, "/t", "us-east-1")
    assert source_for(backend("http://b", None), env).role_arn == env["AWS_ROLE_ARN"]
    assert source_for(backend("http://b", None), {"AWS_ROLE_ARN": ROLE}).token_file == DEFAULT_TOKEN_FILE
    with pytest.raises(WebIdentityError, match="names no roleARN and AWS_ROLE_ARN is unset"):
        source_for(backend("http://b", None), {})


async def test_the_refresher_keeps_web_identity_keys_for_the_bedrock_adapter(
    sts_env: None, token_file: Path, mock_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_WEB_IDENTITY_TOKEN_FILE", str(token_file))
    refreshers = Refreshers(credential_sources())
    b = backend(mock_url)
    refreshers.update([b])
    assert refreshers.credential(b) is None  # nothing fetched yet
    await refreshers.refresh_due()
    first = refreshers.credential(b)
    assert first is not None and (await converse(mock_url, first))[0] == 200
    due = refreshers.next_due()
    # Halfway through the mock's 2 s lifetime: well before the keys expire.
    assert due is not None and due <= time.time() + 1.2
    await asyncio.sleep(max(0.0, due - time.time()) + 0.05)
    await refreshers.refresh_due()
    second = refreshers.credential(b)
    assert second is not None and second != first
    assert (await converse(mock_url, second))[0] == 200


def test_a_backend_without_any_role_fails_its_fetch_not_the_config(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_ROLE_ARN", raising=False)
    fetch = fetch_for(backend("http://b", None))
    with pytest.raises(WebIdentityError, match="names no roleARN"):
        fetch()
