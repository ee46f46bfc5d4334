"""Where to listen: pure endpoint values and their parsing. No sockets are created here (see sockets.py).

Spellings accepted, after Kestrel's binding model:

    --host H --port P                 one TCP endpoint
    --bind 127.0.0.1:8080             repeatable; also [::1]:8080, [fe80::1%eth0]:8080, :8080, *:8080,
    --bind unix:/run/app.sock           localhost:8080, unix:PATH and fd://N
    --bind fd://3
    --urls "http://+:8080;https://localhost:5001"  Kestrel-style URLs, `;`-separated (also http://unix:PATH)
    --uds /run/app.sock               the same as --bind unix:/run/app.sock
    LISTEN_FDS / LISTEN_PID / LISTEN_FDNAMES      systemd socket activation (read by the CLI)

Host meanings: `localhost` is both loopbacks (127.0.0.1 and ::1), `*`, `+` and `::` are every address
(dual-stack where the OS allows), anything else is one IP literal or one resolved name.

TLS is a property of an endpoint (`tls=True`): an `https://` URL says so itself, an `http://` URL says
not; an endpoint given without a scheme (--host/--port, --bind HOST:PORT, unix:PATH, fd://N, systemd
sockets) is TLS when a certificate is configured (--ssl-certfile), as in uvicorn.

Endpoints named in the config file (`[endpoints.NAME]`, kestrelpy/config_file.py) carry their `name`, the
`protocols` they serve and, in `settings`, what they set for TLS themselves (a certificate, SNI
certificates, a client certificate mode); what they leave out comes from the --ssl-* options. An endpoint
with settings gets a TLS context of its own (kestrelpy/tls.py); every other TLS endpoint shares the one
built from the --ssl-* options.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from urllib.parse import unquote

from kestrelpy.errors import ConfigError

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
ANY_HOSTS = frozenset({"*", "+", "::"})
SYSTEMD_FIRST_FD = 3  # SD_LISTEN_FDS_START
# What an endpoint serves, Kestrel's HttpProtocols spelled as the config file spells it. "" on an
# endpoint: the server-wide --protocols.
PROTOCOL_CHOICES = ("http1", "http2", "http1+http2")
CLIENT_CERTIFICATE_MODES = ("none", "optional", "required")  # Kestrel's ClientCertificateMode


@dataclass(frozen=True, slots=True)
class CertificateFiles:
    """A certificate named in the config file: the PEM file `path` (leaf first), its key (`key_path`, ""
    when the key is in `path`), and the environment variable holding an encrypted key's password
    (`password_env`), which the command line reads into `password`."""

    path: str
    key_path: str = ""
    password_env: str = ""
    password: str = field(default="", repr=False)


@dataclass(frozen=True, slots=True)
class EndpointTls:
    """What one endpoint of the config file sets for TLS itself; None and () leave it to the --ssl-* options.
    `sni` pairs a server name (lower case) with its certificate and replaces --ssl-sni for this endpoint."""

    certificate: CertificateFiles | None = None
    sni: tuple[tuple[str, CertificateFiles], ...] = ()
    client_certificate_mode: str | None = None


@dataclass(frozen=True, slots=True)
class TcpEndpoint:
    """A TCP address. `host` is an IP literal (IPv6 without brackets, maybe with a `%zone`), a name,
    `localhost` (both loopbacks) or `*`/`::` (every address, dual-stack); port 0 picks a free port."""

    host: str
    port: int
    tls: bool = False
    name: str = ""  # [endpoints.NAME] in the config file; "" for an endpoint given otherwise
    # One of PROTOCOL_CHOICES. Config.endpoints() sets --protocols on every endpoint but a config file one
    # that chose its own (one that did not comes with "").
    protocols: str = "http1+http2"
    settings: EndpointTls | None = None

    def display(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return _named(f"{host}:{self.port}", self.name)

    @property
    def any_address(self) -> bool:
        return self.host in ANY_HOSTS

    @property
    def is_localhost(self) -> bool:
        return self.host.lower() == "localhost"


@dataclass(frozen=True, slots=True)
class UnixEndpoint:
    """A Unix domain socket path; `mode` (e.g. 0o660) is applied to the socket file after binding."""

    path: str
    mode: int | None = None
    tls: bool = False
    name: str = ""
    protocols: str = "http1+http2"
    settings: EndpointTls | None = None

    def display(self) -> str:
        return _named(f"unix:{self.path}", self.name)


@dataclass(frozen=True, slots=True)
class FdEndpoint:
    """An already-open listening socket inherited as a file descriptor (`name` from LISTEN_FDNAMES)."""

    fd: int
    name: str = ""
    tls: bool = False
    protocols: str = "http1+http2"
    settings: EndpointTls | None = None

    def display(self) -> str:
        return f"fd://{self.fd}" + (f" ({self.name})" if self.name else "")


Endpoint = TcpEndpoint | UnixEndpoint | FdEndpoint


def _named(address: str, name: str) -> str:
    return f"{address} ([endpoints.{name}])" if name else address


def tcp_endpoint(host: str, port: int, tls: bool = False) -> TcpEndpoint:
    """The endpoint for `--host/--port`, validated."""
    if not 0 <= port <= 65535:
        raise ConfigError(f"--port must be between 0 and 65535, not {port}")
    host = host.strip()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not host:
        raise ConfigError("--host must not be empty")
    return TcpEndpoint(_normal_host(host), port, tls)


def _normal_host(host: str) -> str:
    if host == "+":
        return "*"
    if host.lower() == "localhost":
        return "localhost"
    return host


def _port(text: str, source: str) -> int:
    if not text.isdigit():
        raise ConfigError(f"{source}: the port must be a number, not {text!r}")
    port = int(text)
    if port > 65535:
        raise ConfigError(f"{source}: the port must be between 0 and 65535, not {port}")
    return port


def _split_host_port(text: str, source: str) -> tuple[str, str]:
    """`HOST:PORT` or `[IPV6]:PORT` into its two halves (the host without brackets)."""
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or not rest.startswith(":") or not host:
            raise ConfigError(f"{source}: expected [IPV6]:PORT")
        return host, rest[1:]
    host, sep, port = text.rpartition(":")
    if not sep:
        raise ConfigError(f"{source}: expected HOST:PORT")
    if ":" in host:
        raise ConfigError(f"{source}: put an IPv6 address in brackets, as [{host}]:{port}")
    return host, port


def parse_bind(text: str, *, uds_mode: int | None = None, tls: bool = False) -> Endpoint:
    """One `--bind` value: `HOST:PORT`, `[IPV6]:PORT`, `:PORT`, `unix:PATH`, `fd://N` or an http(s):// URL.
    `tls` is what an endpoint without a scheme gets (whether a certificate is configured)."""
    value = text.strip()
    source = f"--bind {text!r}"
    if value.startswith("unix:"):
        return unix_endpoint(value[5:], source, uds_mode, tls)
    if value.startswith("fd://"):
        return fd_endpoint(value[5:], source, tls=tls)
    if "://" in value:
        return parse_url(value, uds_mode=uds_mode)
    host, port = _split_host_port(value, source)
    return TcpEndpoint(_normal_host(host) if host else "0.0.0.0", _port(port, source), tls)


def unix_endpoint(path: str, source: str = "--uds", mode: int | None = None, tls: bool = False) -> UnixEndpoint:
    if not path:
        raise ConfigError(f"{source}: the socket path is empty")
    if "\0" in path:
        raise ConfigError(f"{source}: the socket path contains NUL")
    return UnixEndpoint(path, mode, tls)


def fd_endpoint(text: str, source: str, name: str = "", *, tls: bool = False) -> FdEndpoint:
    if not text.isdigit():
        raise ConfigError(f"{source}: expected fd://N with N a file descriptor number")
    fd = int(text)
    if fd < 3:
        raise ConfigError(f"{source}: file descriptor {fd} is stdin, stdout or stderr, not a socket")
    return FdEndpoint(fd, name, tls)


_URL = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://(?P<rest>.*)$")


def parse_url(text: str, *, uds_mode: int | None = None, source: str = "") -> Endpoint:
    """One Kestrel-style URL: `http://HOST[:PORT][/]` or `https://...` (a TLS endpoint, port 443 unless
    given), HOST one of `*`, `+`, `localhost`, an IP literal (IPv6 in brackets; a zone id as `%25eth0` or
    `%eth0`) or a name; or `http://unix:/PATH` (`https://unix:/PATH`)."""
    value = text.strip()
    source = source or f"--urls {text!r}"
    match = _URL.match(value)
    if match is None:
        raise ConfigError(f"{source}: expected a URL such as http://localhost:8000")
    scheme = match["scheme"].lower()
    rest = match["rest"]
    if scheme not in ("http", "https"):
        raise ConfigError(f"{source}: the scheme must be http or https, not {scheme}")
    tls = scheme == "https"
    if rest.startswith("unix:"):
        return unix_endpoint(rest[5:], source, uds_mode, tls)
    authority, _, path = rest.partition("/")
    if path:
        raise ConfigError(f"{source}: a path is not part of an endpoint; use --root-path for a URL prefix")
    if "@" in authority:
        raise ConfigError(f"{source}: user information is not part of an endpoint")
    if authority.startswith("["):
        host, sep, after = authority[1:].partition("]")
        if not sep or not host or (after and not after.startswith(":")):
            raise ConfigError(f"{source}: expected [IPV6] or [IPV6]:PORT")
        port_text = after[1:] if after else ""
        host = unquote(host)
    else:
        host, sep, port_text = authority.partition(":")
        if sep and not port_text:
            raise ConfigError(f"{source}: the port is empty")
        if not host:
            raise ConfigError(f"{source}: the host is empty; use * or + for every address")
    port = _port(port_text, source) if port_text else (443 if tls else 80)
    return TcpEndpoint(_normal_host(host), port, tls)


def parse_urls(text: str, *, uds_mode: int | None = None) -> list[Endpoint]:
    """`--urls`: URLs separated by `;` (Kestrel's separator), commas or spaces also accepted."""
    parts = [p for p in re.split(r"[;,\s]+", text.strip()) if p]
    if not parts:
        raise ConfigError("--urls is empty")
    return [parse_url(p, uds_mode=uds_mode) for p in parts]


def parse_octal_mode(text: str) -> int:
    """`--uds-mode`: an octal permission such as 660, 0660 or 0o660."""
    value = text.strip().lower().removeprefix("0o")
    if not value or any(c not in "01234567" for c in value):
        raise ValueError(f"expected an octal mode such as 660, got {text!r}")
    mode = int(value, 8)
    if mode > 0o7777:
        raise ValueError(f"mode {text!r} is larger than 7777")
    return mode


def systemd_endpoints(environ: Mapping[str, str], pid: int) -> tuple[FdEndpoint, ...]:
    """The sockets systemd passed this process (sd_listen_fds): LISTEN_FDS sockets from fd 3 upwards,
    named by LISTEN_FDNAMES, but only when LISTEN_PID names this process. Malformed values mean none."""
    fds_text = environ.get("LISTEN_FDS", "").strip()
    pid_text = environ.get("LISTEN_PID", "").strip()
    if not fds_text.isdigit() or not pid_text.isdigit() or int(pid_text) != pid:
        return ()
    count = int(fds_text)
    names = environ.get("LISTEN_FDNAMES", "")
    name_list = names.split(":") if names else []
    return tuple(FdEndpoint(SYSTEMD_FIRST_FD + i, name_list[i] if i < len(name_list) else "") for i in range(count))


SYSTEMD_VARIABLES = ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES")


def configured_endpoints(
    *,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    binds: Sequence[str] = (),
    urls: str = "",
    uds: str = "",
    uds_mode: int | None = None,
    inherited: Iterable[FdEndpoint] = (),
    tls: bool = False,
    named: Iterable[Endpoint] = (),
    protocols: str = "",
) -> list[Endpoint]:
    """Every endpoint a configuration names, in order: --host/--port, --uds, --bind, --urls, the config
    file's [endpoints] tables (`named`), inherited.

    `tls` (a certificate is configured) makes every endpoint given without a scheme a TLS endpoint;
    URLs say their own. --host/--port count when either differs from its default or when nothing else names an endpoint
    (so `--bind unix:/run/app.sock` alone does not also open 127.0.0.1:8000). Duplicates are dropped,
    except port 0, which asks for another free port each time. `protocols` (--protocols) goes to every
    endpoint that did not choose its own.
    """
    found: list[Endpoint] = []
    if uds:
        found.append(unix_endpoint(uds, "--uds", uds_mode, tls))
    found.extend(parse_bind(b, uds_mode=uds_mode, tls=tls) for b in binds)
    if urls.strip():
        found.extend(parse_urls(urls, uds_mode=uds_mode))
    own_protocols = [e for e in named if e.protocols]
    found.extend(named)
    found.extend(dataclasses.replace(fd, tls=tls) for fd in inherited)
    if not found or host != DEFAULT_HOST or port != DEFAULT_PORT:
        found.insert(0, tcp_endpoint(host, port, tls))
    if protocols:
        found = [e if e in own_protocols else dataclasses.replace(e, protocols=protocols) for e in found]
    unique: list[Endpoint] = []
    for endpoint in found:
        # port 0 asked twice means two free ports, not one
        if endpoint not in unique or (isinstance(endpoint, TcpEndpoint) and endpoint.port == 0):
            unique.append(endpoint)
    return unique


def listener_endpoint(name: object, endpoints: Sequence[Endpoint]) -> Endpoint | None:
    """The endpoint a listening socket was bound for, told from the socket's own address (its
    `getsockname()`), so a worker handed sockets by its supervisor finds the same answer as the process
    that bound them. An exact port beats a port-0 endpoint; a socket no address matches came from an
    inherited descriptor (the first fd endpoint); None when nothing fits."""
    matches: list[Endpoint]
    if isinstance(name, bytes):
        name = name.decode(errors="replace")
    if isinstance(name, str):
        matches = [e for e in endpoints if isinstance(e, UnixEndpoint) and e.path == name]
    elif isinstance(name, tuple) and len(name) >= 2:
        host, port = str(name[0]), int(name[1])
        tcp = [e for e in endpoints if isinstance(e, TcpEndpoint) and _host_matches(e, host)]
        matches = [e for e in tcp if e.port == port] or [e for e in tcp if e.port == 0]
    else:
        matches = []
    if not matches:
        matches = [e for e in endpoints if isinstance(e, FdEndpoint)]
    return matches[0] if matches else None


def _host_matches(endpoint: TcpEndpoint, bound: str) -> bool:
    """Whether a socket bound to the address `bound` can belong to `endpoint` (a name matches anything:
    it resolved to whatever address it was bound to)."""
    if endpoint.is_localhost:
        return bound in ("127.0.0.1", "::1")
    if endpoint.any_address:
        return bound in ("::", "0.0.0.0")
    try:
        wanted = ipaddress.ip_address(endpoint.host)
    except ValueError:
        return True
    try:
        return ipaddress.ip_address(bound) == wanted
    except ValueError:
        return bound == endpoint.host


def ambiguous_tls(endpoints: Sequence[Endpoint]) -> tuple[TcpEndpoint, TcpEndpoint] | None:
    """Two port-0 endpoints, one TLS and one not (or with TLS settings of their own that differ), whose
    sockets could not be told apart by address (see listener_endpoint): a TLS endpoint asking for a free
    port needs an address of its own."""
    free = [e for e in endpoints if isinstance(e, TcpEndpoint) and e.port == 0]
    for i, first in enumerate(free):
        for second in free[i + 1 :]:
            differ = first.tls != second.tls or first.settings != second.settings
            if differ and (_hosts_overlap(first, second) or _hosts_overlap(second, first)):
                return first, second
    return None


def metrics_endpoint(text: str) -> TcpEndpoint:
    """`--metrics-bind HOST:PORT` (or `[IPV6]:PORT`, `:PORT` for every address): plain TCP only."""
    source = f"--metrics-bind {text!r}"
    host, port = _split_host_port(text.strip(), source)
    return TcpEndpoint(_normal_host(host) if host else "0.0.0.0", _port(port, source))


def same_address(a: TcpEndpoint, b: TcpEndpoint) -> bool:
    """Whether two endpoints with a fixed port ask for the same port on an address both would hold."""
    return a.port == b.port != 0 and (_hosts_overlap(a, b) or _hosts_overlap(b, a))


def _hosts_overlap(a: TcpEndpoint, b: TcpEndpoint) -> bool:
    if b.is_localhost:
        return _host_matches(a, "127.0.0.1") or _host_matches(a, "::1")
    if b.any_address:
        return _host_matches(a, "::") or _host_matches(a, "0.0.0.0")
    return _host_matches(a, b.host)


def display_url(endpoint: Endpoint, address: object = None) -> str:
    """How a log line names a listening endpoint: `http://127.0.0.1:8000`, `https://[::1]:8443`,
    `http://unix:/run/app.sock`, `fd://3`. `address` is the bound socket's name, which carries the real
    port when 0 was asked for."""
    scheme = "https" if endpoint.tls else "http"
    if isinstance(address, tuple) and len(address) >= 2:
        host, port = str(address[0]), int(address[1])
        if len(address) >= 4 and address[3]:
            host = f"{host}%{address[3]}" if "%" not in host else host
        return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"
    if isinstance(endpoint, UnixEndpoint):
        return f"{scheme}://unix:{endpoint.path}"
    if isinstance(address, str) and address:
        return f"{scheme}://unix:{address}"
    if isinstance(endpoint, TcpEndpoint):
        return f"{scheme}://{dataclasses.replace(endpoint, name='').display()}"
    return endpoint.display()
