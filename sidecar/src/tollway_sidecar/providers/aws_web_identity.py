"""Temporary AWS credentials for a Bedrock backend from the pod's web identity (IRSA).

The gateway Pod's projected ServiceAccount token (`AWS_WEB_IDENTITY_TOKEN_FILE`, by default the path
EKS's pod-identity webhook mounts) is exchanged for temporary keys with STS
`AssumeRoleWithWebIdentity`, through botocore's STS client (unsigned, as the call needs no keys).
The role is the backend's `credential` (the operator compiles `webIdentity.roleARN` into it: the
role is what this source turns into keys), else the Pod's `AWS_ROLE_ARN`. The STS endpoint is
botocore's: regional for the backend's region, or `AWS_ENDPOINT_URL_STS` / `AWS_ENDPOINT_URL` when
set. The token file is read on every fetch, since the kubelet rotates it.

`fetch()` blocks (an HTTPS call): the credential refresher runs it in a thread. Its credential is
the JSON `providers.bedrock.parse_credentials` reads, so the Bedrock adapters sign with it unchanged.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import botocore.session
from botocore import UNSIGNED
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from tollway_sidecar.config.models import Backend
from tollway_sidecar.providers.refresh import Fetch

__all__ = ["DEFAULT_TOKEN_FILE", "SOURCE", "WebIdentityError", "WebIdentitySource", "fetch_for", "source_for"]

SOURCE: Final = "aws-web-identity"
# Where EKS's pod-identity webhook projects the ServiceAccount token (and sets the variable to).
DEFAULT_TOKEN_FILE: Final = "/var/run/secrets/eks.amazonaws.com/serviceaccount/token"
_SESSION_NAME_CHARS: Final = re.compile(r"[^\w+=,.@-]")


class WebIdentityError(RuntimeError):
    """Why no temporary credentials could be had; never holds the token or a key."""


@dataclass(frozen=True, slots=True)
class WebIdentitySource:
    role_arn: str
    region: str
    token_file: str
    session_name: str
    timeout_s: float = 10.0

    def _client(self) -> Any:  # botocore's clients are generated at run time: untyped
        config = Config(
            signature_version=UNSIGNED,
            connect_timeout=self.timeout_s,
            read_timeout=self.timeout_s,
            retries={"max_attempts": 2, "mode": "standard"},
        )
        # A fresh session reads AWS_ENDPOINT_URL_STS and the like now, not at import.
        return botocore.session.get_session().create_client("sts", region_name=self.region, config=config)

    def fetch(self) -> tuple[str, float]:
        """(the Bedrock credential JSON, its expiry as a Unix time); raises WebIdentityError."""
        try:
            token = Path(self.token_file).read_text().strip()
        except OSError as exc:
            raise WebIdentityError(
                f"cannot read the web identity token file {self.token_file}: {exc.strerror}"
            ) from None
        if not token:
            raise WebIdentityError(f"the web identity token file {self.token_file} is empty")
        client = self._client()
        try:
            answer = client.assume_role_with_web_identity(
                RoleArn=self.role_arn, RoleSessionName=self.session_name, WebIdentityToken=token
            )
        except ClientError as exc:
            error = exc.response.get("Error", {})
            raise WebIdentityError(
                f"STS AssumeRoleWithWebIdentity for {self.role_arn} failed: "
                f"{error.get('Code', '?')}: {error.get('Message', '')}"[:500]
            ) from None
        except BotoCoreError as exc:
            raise WebIdentityError(
                f"STS AssumeRoleWithWebIdentity for {self.role_arn} failed: {exc}"
            ) from None
        finally:
            client.close()
        credentials = answer["Credentials"]
        credential = json.dumps(
            {
                "access_key_id": credentials["AccessKeyId"],
                "secret_access_key": credentials["SecretAccessKey"],
                "session_token": credentials["SessionToken"],
            },
            sort_keys=True,
            separators=(",", ":"),
        )
        return credential, credentials["Expiration"].timestamp()


def source_for(backend: Backend, environ: Mapping[str, str] | None = None) -> WebIdentitySource:
    """The source of a web-identity Bedrock backend, from the backend and the pod's environment."""
    env = os.environ if environ is None else environ
    role_arn = backend.credential or env.get("AWS_ROLE_ARN", "")
    if not role_arn:
        raise WebIdentityError(
            f"backend {backend.name!r} uses web identity but names no roleARN and AWS_ROLE_ARN is unset"
        )
    if backend.region is None:
        raise WebIdentityError(f"backend {backend.name!r} uses web identity but has no region")
    session = env.get("AWS_ROLE_SESSION_NAME") or f"tollway-{backend.name}"
    return WebIdentitySource(
        role_arn=role_arn,
        region=backend.region,
        token_file=env.get("AWS_WEB_IDENTITY_TOKEN_FILE") or DEFAULT_TOKEN_FILE,
        session_name=_SESSION_NAME_CHARS.sub("-", session)[:64],
    )


def fetch_for(backend: Backend) -> Fetch:
    """The refresher's factory: the backend's fetch, or one that fails with the reason (a config
    reload must not fail for one backend's missing role; the refresher logs and retries it)."""
    try:
        return source_for(backend).fetch
    except WebIdentityError as exc:
        reason = str(exc)

        def refuse() -> tuple[str, float]:
            raise WebIdentityError(reason)

        return refuse
