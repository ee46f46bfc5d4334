"""One request over a new TLS connection, for the tests that compare the certificate a server presents."""

from __future__ import annotations

import socket
import ssl

from tests.support.waiting import WAIT


def tls_get(port: int, context: ssl.SSLContext, server_name: str | None) -> tuple[bytes, bytes]:
    """One new TLS connection and one GET on it: (the certificate presented, as DER; the whole answer)."""
    with (
        socket.create_connection(("127.0.0.1", port), timeout=WAIT) as raw,
        context.wrap_socket(raw, server_hostname=server_name) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
        assert der is not None
        tls.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := tls.recv(65536):
            data += chunk
    return der, data
