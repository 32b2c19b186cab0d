"""A raw HTTP call, for requests an SDK would refuse to send (bad JSON, no key, huge bodies)."""

from __future__ import annotations

import http.client
import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def error(self) -> dict[str, Any]:
        """The OpenAI error object, checked for its shape."""
        payload = self.json()
        assert set(payload) == {"error"}, payload
        error = payload["error"]
        assert set(error) == {"message", "type", "param", "code"}, error
        assert isinstance(error["message"], str) and error["message"], error
        return dict(error)


def call(
    origin: str,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    *,
    chunked: bool = False,
    declared_length: int | None = None,
    timeout: float = 10,
) -> Answer:
    """One request. `chunked` streams the body in pieces without a length; `declared_length` sends
    only the headers, announcing that many bytes, and reads the answer (as `Expect: 100-continue`
    clients do), so a refusal of the size can be read before the body is sent."""
    parts = urlsplit(origin)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        all_headers = {"content-type": "application/json", **(headers or {})}
        if declared_length is not None:
            connection.putrequest(method, path)
            for name, value in all_headers.items():
                connection.putheader(name, value)
            connection.putheader("content-length", str(declared_length))
            connection.endheaders()
        elif chunked:
            connection.putrequest(method, path)
            for name, value in all_headers.items():
                connection.putheader(name, value)
            connection.putheader("transfer-encoding", "chunked")
            connection.endheaders()
            data = body or b""
            for start in range(0, len(data), 65536):
                piece = data[start : start + 65536]
                try:
                    connection.send(b"%x\r\n%s\r\n" % (len(piece), piece))
                except (BrokenPipeError, ConnectionResetError):
                    break
            else:
                connection.send(b"0\r\n\r\n")
        else:
            connection.request(method, path, body=body, headers=all_headers)
        response = connection.getresponse()
        return Answer(response.status, {k.lower(): v for k, v in response.getheaders()}, response.read())
    finally:
        connection.close()


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}
