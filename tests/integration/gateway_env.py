"""Shared names for the integration tests: the demo keys, the mock fleet, the Gateway handle.

A module of its own (not conftest) so test files can import it by a name no other folder uses."""

from __future__ import annotations

import base64
import json
import os
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tollway.dev import Children, DevGateway, free_port

ROOT = Path(__file__).resolve().parents[2]
DEMO_KEY = "tw-demo-0123456789abcdef0123456789abcdef"
RESTRICTED_KEY = "tw-restricted-0123456789abcdef0123456789ab"
DISABLED_KEY = "tw-disabled-0123456789abcdef0123456789abcd"
EXPIRED_KEY = "tw-expired-0123456789abcdef0123456789abcdef"


# The gateway's web identity for Bedrock (IRSA): the ServiceAccount token the sidecar reads from
# AWS_WEB_IDENTITY_TOKEN_FILE (a JWT, as the kubelet projects one), the role it may assume, and how
# long the mock's STS keys live: short, so a test sees them refreshed.
def _b64(claims: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(claims).encode()).decode().rstrip("=")


WEB_IDENTITY_TOKEN = ".".join(
    (
        _b64({"alg": "RS256", "kid": "tollway-test"}),
        _b64(
            {
                "iss": "https://oidc.eks.us-east-1.amazonaws.com/id/TOLLWAYTEST",
                "sub": "system:serviceaccount:tollway-system:tw-tollway-gateway",
                "aud": "sts.amazonaws.com",
                "exp": 4102444800,
            }
        ),
        "dGVzdC1zaWduYXR1cmU",
    )
)
IRSA_ROLE = "arn:aws:iam::123456789012:role/tollway-gateway"
IRSA_KEY_LIFETIME_S = 6

# Extra mock providers for the fallback tests, each with one fixed behaviour (tollway mock-provider
# flags); tests/fixtures/integration/routing.yaml names them by port.
MOCK_FLEET: dict[str, list[str]] = {
    "SECOND": [],
    "LIMITED": ["--status", "429", "--retry-after", "1"],
    "BROKEN": ["--status", "503"],
    "UNAUTH": ["--status", "401"],
    "RESET": ["--fail", "reset"],
    "STALL": ["--fail", "stall"],
    "BEDROCK": ["--aws-access-key-id", "AKIDTOLLWAYTEST", "--aws-secret-access-key", "bedrock-test-secret"],
    # Vertex: tokens from its /token for the service account `vertex_flags` makes; short-lived, so
    # that the sidecar refreshes them during the run.
    "VERTEX": ["--vertex-token-lifetime", "6"],
    # Bedrock that accepts only keys from its own STS endpoint (web identity).
    "IRSA": [
        "--sts-web-identity-token",
        WEB_IDENTITY_TOKEN,
        "--sts-role-arn",
        IRSA_ROLE,
        "--sts-duration-s",
        str(IRSA_KEY_LIFETIME_S),
    ],
}
VERTEX_CLIENT_EMAIL = "tollway-it@tollway-test.iam.gserviceaccount.com"
_vertex_key: list[str] = []  # the service account's JSON key, once `vertex_flags` made it


@dataclass
class Gateway:
    dev: DevGateway
    config_dir: Path
    mock_url: str
    admin_url: str
    mocks: dict[str, str]  # fleet name (SECOND, LIMITED, …) → base URL

    @property
    def base_url(self) -> str:
        return self.dev.base_url

    @property
    def origin(self) -> str:
        return self.dev.base_url.removesuffix("/v1")

    def get_json(self, url: str) -> Any:
        with urllib.request.urlopen(url, timeout=5) as response:
            return json.loads(response.read())

    def spend(self) -> dict[str, Any]:
        return dict(self.get_json(f"{self.admin_url}/spend"))

    def metrics(self) -> str:
        with urllib.request.urlopen(f"{self.admin_url}/metrics", timeout=5) as response:
            return str(response.read().decode())

    def mock_requests(self) -> list[dict[str, Any]]:
        return list(self.get_json(f"{self.mock_url}/_mock/requests"))

    def clear_mock_requests(self) -> None:
        for url in (self.mock_url, *self.mocks.values()):
            request = urllib.request.Request(f"{url}/_mock/requests", method="DELETE")
            urllib.request.urlopen(request, timeout=5).close()

    def requests_at(self, fleet: str) -> list[dict[str, Any]]:
        """What one fleet mock (or "MOCK", the default one) has received since the last clear."""
        url = self.mock_url if fleet == "MOCK" else self.mocks[fleet]
        return list(self.get_json(f"{url}/_mock/requests"))


def start_mock(children: Children, name: str, port: int, *flags: str, timeout: float = 30.0) -> None:
    """`tollway mock-provider` on `port` (with CLI flags fixing its behaviour), once it answers."""
    argv = [sys.executable, "-m", "tollway", "mock-provider", "--port", str(port), *flags]
    children.spawn(name, argv, dict(os.environ))
    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/_mock/health", timeout=1).close()
            return
        except (urllib.error.URLError, OSError):
            exited = children.exited(name)
            if exited is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    exited or f"mock provider {name} did not start (see {children.log_dir})"
                ) from None
            time.sleep(0.05)


def vertex_flags(directory: Path, port: int) -> list[str]:
    """A throwaway service account for the Vertex mock on `port`: its key (`vertex_key`) names that
    mock's token endpoint; the mock gets the public half."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "vertex-public.pem").write_bytes(public)
    info = {
        "type": "service_account",
        "project_id": "tollway-test",
        "private_key_id": "0123456789abcdef",
        "private_key": private.decode(),
        "client_email": VERTEX_CLIENT_EMAIL,
        "token_uri": f"http://127.0.0.1:{port}/token",
    }
    _vertex_key[:] = [json.dumps(info)]
    pem = str(directory / "vertex-public.pem")
    return ["--vertex-public-key-file", pem, "--vertex-client-email", VERTEX_CLIENT_EMAIL]


def vertex_key() -> str:
    """The Vertex fleet mock's service-account JSON key (after `start_fleet`)."""
    return _vertex_key[0]


def start_fleet(children: Children) -> dict[str, int]:
    """The fleet of single-behaviour mocks (MOCK_FLEET), by name → port."""
    ports = {name: free_port() for name in MOCK_FLEET}
    for name, port in ports.items():
        flags = MOCK_FLEET[name]
        if name == "VERTEX":
            flags = [*flags, *vertex_flags(children.log_dir, port)]
        start_mock(children, f"mock-{name.lower()}", port, *flags)
    return ports
