"""A throwaway Google service account for Vertex tests: a fresh RSA key, its JSON key file, its public key."""

from __future__ import annotations

import json

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

CLIENT_EMAIL = "tollway-test@tollway-proj.iam.gserviceaccount.com"


def service_account(token_uri: str, email: str = CLIENT_EMAIL) -> tuple[str, str]:
    """(the service account's JSON key, as its Secret holds it; its public key, PEM)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    public = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    info = {
        "type": "service_account",
        "project_id": "tollway-proj",
        "private_key_id": "0123456789abcdef",
        "private_key": private,
        "client_email": email,
        "client_id": "1234567890",
        "token_uri": token_uri,
    }
    return json.dumps(info), public
