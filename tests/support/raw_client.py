"""A plain socket that can send any bytes and read HTTP/1.1 responses back, pipelined or not, chunked
or close-delimited, with a short timeout on every read."""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass, field

from tests.support.waiting import WAIT


@dataclass
class RawResponse:
    status: int
    reason: str
    version: str
    headers: list[tuple[str, str]]  # names lower-cased, in wire order
    body: bytes
    head: bytes  # the status line and header lines exactly as received, blank line included
    chunked: bool = False
    chunks: list[bytes] = field(default_factory=list)
    trailers: list[tuple[str, str]] = field(default_factory=list)
    complete: bool = True  # False when the connection ended before the framing said the body was done

    def header(self, name: str) -> str | None:
        values = self.all(name)
        return values[0] if values else None

    def all(self, name: str) -> list[str]:
        return [value for key, value in self.headers if key == name.lower()]

    def names(self) -> list[str]:
        return [key for key, _ in self.headers]


class ConnectionEnded(Exception):
    """The peer closed (or reset) the connection before a complete response arrived."""


class RawClient:
    """A blocking socket speaking HTTP/1.1 by hand, with a short timeout on every read."""

    def __init__(self, port: int, timeout: float = WAIT, rcvbuf: int | None = None) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(timeout)
        self.sock.connect(("127.0.0.1", port))
        self.timeout = timeout
        self.buffer = bytearray()
        self.eof = False

    @property
    def local_port(self) -> int:
        return int(self.sock.getsockname()[1])

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def close(self) -> None:
        self.sock.close()

    def _fill(self) -> bool:
        """One read into the buffer; False at EOF or reset."""
        if self.eof:
            return False
        try:
            data = self.sock.recv(65536)
        except (ConnectionResetError, ConnectionAbortedError):
            data = b""
        if not data:
            self.eof = True
            return False
        self.buffer += data
        return True

    def _line(self) -> bytes:
        while True:
            end = self.buffer.find(b"\r\n")
            if end >= 0:
                line = bytes(self.buffer[:end])
                del self.buffer[: end + 2]
                return line
            if not self._fill():
                raise ConnectionEnded(f"connection ended inside a line: {bytes(self.buffer)!r}")

    def _exactly(self, n: int) -> bytes:
        while len(self.buffer) < n:
            if not self._fill():
                raise ConnectionEnded(f"connection ended after {len(self.buffer)} of {n} bytes")
        data = bytes(self.buffer[:n])
        del self.buffer[:n]
        return data

    def read_until_close(self) -> bytes:
        """Everything left on the connection (the buffer included) up to the peer's close."""
        while self._fill():
            pass
        data = bytes(self.buffer)
        self.buffer.clear()
        return data

    def wait_closed(self, timeout: float = WAIT) -> bool:
        """True once the peer has closed within `timeout`; bytes read meanwhile stay in the buffer."""
        deadline = time.monotonic() + timeout
        try:
            while not self.eof:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self.sock.settimeout(remaining)
                self._fill()
        except TimeoutError:
            return False
        finally:
            self.sock.settimeout(self.timeout)
        return True

    def nothing_within(self, seconds: float) -> bool:
        """True when no byte (and no close) arrives within `seconds`: for checking that something is NOT sent."""
        if self.buffer or self.eof:
            return False
        self.sock.settimeout(seconds)
        try:
            self._fill()
        except TimeoutError:
            return True
        finally:
            self.sock.settimeout(self.timeout)
        return False

    def read_response(self, *, head_request: bool = False) -> RawResponse:
        """One response from the connection (an interim 1xx is returned on its own)."""
        raw_head = bytearray()
        status_line = self._line()
        if not status_line and self.eof:
            raise ConnectionEnded("no response")
        raw_head += status_line + b"\r\n"
        version, _, rest = status_line.decode("latin-1").partition(" ")
        code, _, reason = rest.partition(" ")
        headers: list[tuple[str, str]] = []
        while True:
            line = self._line()
            raw_head += line + b"\r\n"
            if not line:
                break
            name, _, value = line.decode("latin-1").partition(":")
            headers.append((name.strip().lower(), value.strip()))
        response = RawResponse(int(code), reason, version, headers, b"", bytes(raw_head))
        status = response.status
        if head_request or status < 200 or status in (204, 304):
            return response
        if "chunked" in (response.header("transfer-encoding") or "").lower():
            response.chunked = True
            try:
                self._read_chunks(response)
            except ConnectionEnded:
                response.complete = False
                response.body = b"".join(response.chunks)
            return response
        length = response.header("content-length")
        if length is not None:
            try:
                response.body = self._exactly(int(length))
            except ConnectionEnded:
                response.complete = False
                response.body = self.read_until_close()
            return response
        response.body = self.read_until_close()
        return response

    def _read_chunks(self, response: RawResponse) -> None:
        while True:
            size_line = self._line()
            size = int(size_line.split(b";")[0].strip(), 16)
            if size == 0:
                break
            response.chunks.append(self._exactly(size))
            if self._exactly(2) != b"\r\n":
                raise AssertionError("chunk not followed by CRLF")
        response.body = b"".join(response.chunks)
        while True:
            line = self._line()
            if not line:
                return
            name, _, value = line.decode("latin-1").partition(":")
            response.trailers.append((name.strip().lower(), value.strip()))

    def request(self, method: str = "GET", path: str = "/", headers: str = "", body: bytes = b"") -> RawResponse:
        """Send one HTTP/1.1 request (Host included; Content-Length when there is a body) and read its answer."""
        self.send(self.request_bytes(method, path, headers, body))
        return self.read_response(head_request=method == "HEAD")

    @staticmethod
    def request_bytes(method: str = "GET", path: str = "/", headers: str = "", body: bytes = b"") -> bytes:
        """A well-formed HTTP/1.1 request; `headers` are extra `Name: value\\r\\n` lines."""
        length = f"Content-Length: {len(body)}\r\n" if body or method in ("POST", "PUT") else ""
        return f"{method} {path} HTTP/1.1\r\nHost: test\r\n{length}{headers}\r\n".encode("latin-1") + body
