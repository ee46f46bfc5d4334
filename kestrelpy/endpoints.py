"""Where to listen: pure endpoint values and their parsing. No sockets are created here (see sockets.py)."""

from __future__ import annotations

from dataclasses import dataclass

from kestrelpy.errors import ConfigError


@dataclass(frozen=True, slots=True)
class TcpEndpoint:
    """A TCP address: `host` is an IP literal or a name (IPv6 without brackets); port 0 picks a free port."""

    host: str
    port: int

    def display(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


@dataclass(frozen=True, slots=True)
class UnixEndpoint:
    """A Unix domain socket path."""

    path: str

    def display(self) -> str:
        return f"unix:{self.path}"


@dataclass(frozen=True, slots=True)
class FdEndpoint:
    """An already-open listening socket inherited as a file descriptor."""

    fd: int

    def display(self) -> str:
        return f"fd://{self.fd}"


Endpoint = TcpEndpoint | UnixEndpoint | FdEndpoint


def tcp_endpoint(host: str, port: int) -> TcpEndpoint:
    """The endpoint for `--host/--port`, validated."""
    if not 0 <= port <= 65535:
        raise ConfigError(f"--port must be between 0 and 65535, not {port}")
    host = host.strip()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not host:
        raise ConfigError("--host must not be empty")
    return TcpEndpoint(host, port)
