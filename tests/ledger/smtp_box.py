"""A real SMTP server (aiosmtpd) for the cost reports' e-mail: what it accepted, whether each message
and each login came over TLS, and (for the STARTTLS tests) certificates made on the spot."""

from __future__ import annotations

import asyncio
import email
import email.policy
import ipaddress
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, Envelope, LoginPassword, Session
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tollway.ports import free_port

USERNAME, PASSWORD = "reports", "s3cret"


@dataclass
class Mailbox:
    """The SMTP server's side: what it accepted; `hold` blocks the reply to the first DATA."""

    messages: list[EmailMessage] = field(default_factory=list)
    over_tls: list[bool] = field(default_factory=list)  # per message: did its DATA come over TLS
    logins: list[tuple[str, bool]] = field(default_factory=list)  # (login, over TLS) per AUTH
    hold: threading.Event | None = None
    holding: threading.Event = field(default_factory=threading.Event)

    async def handle_DATA(self, server: Any, session: Session, envelope: Envelope) -> str:
        content = envelope.content if isinstance(envelope.content, bytes) else b""
        message = email.message_from_bytes(content, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        self.messages.append(message)
        self.over_tls.append(session.ssl is not None)
        if self.hold is not None and len(self.messages) == 1:
            self.holding.set()
            await asyncio.get_running_loop().run_in_executor(None, self.hold.wait, 60)
        return "250 OK"

    def authenticate(
        self, server: Any, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        login = data.login.decode() if isinstance(data, LoginPassword) else ""
        self.logins.append((login, session.ssl is not None))
        ok = isinstance(data, LoginPassword) and (data.login, data.password) == (
            USERNAME.encode(),
            PASSWORD.encode(),
        )
        return AuthResult(success=ok, handled=False)  # handled=False: aiosmtpd answers 235 or 535


@contextmanager
def smtp_server(tls: ssl.SSLContext | None = None) -> Iterator[tuple[Mailbox, int]]:
    """Without `tls`: no STARTTLS offered. With it: STARTTLS required before anything else."""
    box = Mailbox()
    port = free_port()
    controller = Controller(
        box,
        hostname="127.0.0.1",
        port=port,
        authenticator=box.authenticate,
        # AUTH is offered before STARTTLS too, so a client that logged in first would succeed and
        # be seen doing it (Mailbox.logins), not be stopped by the server.
        auth_require_tls=False,
        tls_context=tls,
        require_starttls=tls is not None,
    )
    controller.start()
    try:
        yield box, port
    finally:
        if box.hold is not None:
            box.hold.set()
        controller.stop()


@dataclass(frozen=True)
class Authority:
    """A throwaway CA: its certificate as a PEM file, and its key to issue server certificates."""

    pem: Path
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _builder(
    subject: x509.Name, issuer: x509.Name, key: ec.EllipticCurvePrivateKey
) -> x509.CertificateBuilder:
    now = datetime.now(UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )


def make_authority(folder: Path, name: str) -> Authority:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        _builder(_name(name), _name(name), key)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
        .sign(key, hashes.SHA256())
    )
    pem = folder / f"{name}.pem"
    pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return Authority(pem, cert, key)


def server_context(authority: Authority, folder: Path, host: str = "127.0.0.1") -> ssl.SSLContext:
    """A server-side TLS context with a certificate for `host` (an IP SAN) issued by `authority`."""
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        _builder(_name(host), authority.cert.subject, key)
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(host))]), False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(authority.key.public_key()), critical=False
        )
        .sign(authority.key, hashes.SHA256())
    )
    chain, key_file = folder / "server.pem", folder / "server.key"
    chain.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(chain, key_file)
    return context
