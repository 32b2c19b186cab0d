"""Compiling bedrock backends: region, the default endpoint, and AWS credentials from one Secret."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.unit.test_compile import compile_docs, only_error, resource, route_error, secret

from tollway_operator.compile import compile_directory

MODEL = "amazon.nova-lite-v1:0"


def bedrock(**fields: Any) -> dict[str, Any]:
    return {
        "name": "br",
        "provider": "bedrock",
        "model": MODEL,
        "region": "eu-west-1",
        "credentialsSecretRef": {"name": "aws", "key": "AWS_ACCESS_KEY_ID"},
    } | fields


def aws_secret(**extra: str) -> dict[str, Any]:
    return secret("aws", AWS_ACCESS_KEY_ID="AKIDTEST", AWS_SECRET_ACCESS_KEY="s3cr3t", **extra)


def test_bedrock_backend_compiles_with_its_credentials(tmp_path: Path) -> None:
    result = compile_docs(
        tmp_path, aws_secret(), resource("RouteRule", "br", {"model": "fast", "backends": [bedrock()]})
    )
    assert result.errors == ()
    (b,) = result.config.routes[0].backends
    assert (b.provider, b.region, b.base_url) == (
        "bedrock",
        "eu-west-1",
        "https://bedrock-runtime.eu-west-1.amazonaws.com",
    )
    assert json.loads(b.credential or "") == {"access_key_id": "AKIDTEST", "secret_access_key": "s3cr3t"}


def test_session_token_and_base_url_override(tmp_path: Path) -> None:
    spec = {"model": "fast", "backends": [bedrock(baseURL="http://127.0.0.1:9000")]}
    result = compile_docs(tmp_path, aws_secret(AWS_SESSION_TOKEN="tok"), resource("RouteRule", "br", spec))
    (b,) = result.config.routes[0].backends
    assert b.base_url == "http://127.0.0.1:9000"
    assert json.loads(b.credential or "")["session_token"] == "tok"


def test_region_is_required(tmp_path: Path) -> None:
    backend = bedrock()
    del backend["region"]
    error = route_error(tmp_path, aws_secret(), backends=[backend])
    assert error.field.endswith("region") and "required" in error.message


def test_only_bedrock_takes_a_region(tmp_path: Path) -> None:
    other = {
        "name": "m",
        "provider": "openai-compatible",
        "model": "x",
        "baseURL": "http://h/v1",
        "region": "us-east-1",
    }
    error = route_error(tmp_path, backends=[other])
    assert error.field.endswith("region")


def test_the_secret_access_key_must_be_in_the_secret(tmp_path: Path) -> None:
    result = compile_docs(
        tmp_path,
        secret("aws", AWS_ACCESS_KEY_ID="AKIDTEST"),
        resource("RouteRule", "br", {"model": "fast", "backends": [bedrock()]}),
    )
    error = only_error(result)
    assert "AWS_SECRET_ACCESS_KEY" in error.message
    assert result.config.routes == ()


ROLE = "arn:aws:iam::123456789012:role/tollway-gateway"


def web_identity(**fields: Any) -> dict[str, Any]:
    backend = bedrock(**fields)
    del backend["credentialsSecretRef"]
    return backend


def test_web_identity_compiles_to_the_role_and_its_source(tmp_path: Path) -> None:
    spec = {"model": "fast", "backends": [web_identity(webIdentity={"roleARN": ROLE})]}
    result = compile_docs(tmp_path, resource("RouteRule", "br", spec))
    assert result.errors == ()
    (b,) = result.config.routes[0].backends
    assert (b.credential_source, b.credential, b.region) == ("aws-web-identity", ROLE, "eu-west-1")


def test_web_identity_without_a_role_leaves_it_to_the_pod(tmp_path: Path) -> None:
    spec = {"model": "fast", "backends": [web_identity(webIdentity={})]}
    (b,) = compile_docs(tmp_path, resource("RouteRule", "br", spec)).config.routes[0].backends
    assert (b.credential_source, b.credential) == ("aws-web-identity", None)


def test_web_identity_and_a_secret_exclude_each_other(tmp_path: Path) -> None:
    error = route_error(tmp_path, aws_secret(), backends=[bedrock(webIdentity={"roleARN": ROLE})])
    assert error.field.endswith("webIdentity") and "exactly one of" in error.message


def test_bedrock_needs_a_secret_or_web_identity(tmp_path: Path) -> None:
    error = route_error(tmp_path, backends=[web_identity()])
    assert error.field.endswith("credentialsSecretRef") and "unless webIdentity is set" in error.message


def test_only_bedrock_takes_web_identity(tmp_path: Path) -> None:
    other = {"name": "m", "provider": "openai-compatible", "model": "x", "baseURL": "http://h/v1"}
    error = route_error(tmp_path, backends=[other | {"webIdentity": {"roleARN": ROLE}}])
    assert error.field.endswith("webIdentity") and "only bedrock" in error.message


def test_a_role_that_is_no_iam_role_arn_is_refused(tmp_path: Path) -> None:
    error = route_error(tmp_path, backends=[web_identity(webIdentity={"roleARN": "tollway-gateway"})])
    assert "roleARN" in error.field


def test_the_bedrock_example_compiles_to_both_kinds_of_keys() -> None:
    result = compile_directory(Path(__file__).resolve().parents[2] / "examples" / "bedrock")
    assert (result.errors, result.warnings) == ((), ())
    routes = {r.name: r for r in result.config.routes}
    us, eu = routes["nova"].backends
    assert (us.credential_source, us.credential) == (
        "aws-web-identity",
        "arn:aws:iam::123456789012:role/tollway-bedrock",
    )
    assert (eu.credential_source, eu.credential, eu.region) == ("aws-web-identity", None, "eu-west-1")
    (static,) = routes["claude-on-bedrock"].backends
    assert (
        static.credential_source is None
        and json.loads(static.credential or "")["access_key_id"] == "AKIDEXAMPLE"
    )
