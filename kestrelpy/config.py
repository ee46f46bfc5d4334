"""The single frozen configuration object.

Every option is declared once, as a dataclass field whose metadata carries its CLI flag, help text and
how to parse it from a string. `cli.py` builds the argument parser and the `KESTRELPY_*` environment
reader from these fields, so a flag cannot drift from its default or its validation. No I/O happens here.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from kestrelpy.access_log import compile_format
from kestrelpy.endpoints import (
    PROTOCOL_CHOICES,
    Endpoint,
    FdEndpoint,
    TcpEndpoint,
    UnixEndpoint,
    ambiguous_tls,
    configured_endpoints,
    display_url,
    metrics_endpoint,
    parse_octal_mode,
    same_address,
)
from kestrelpy.errors import ConfigError
from kestrelpy.proxy import DEFAULT_TRUSTED, parse_trusted

HTTP_CHOICES = ("auto", "httptools", "h11")
LOOP_CHOICES = ("auto", "uvloop", "asyncio")
LIFESPAN_CHOICES = ("auto", "on", "off")
WS_CHOICES = ("auto", "websockets", "none")
LOG_LEVEL_CHOICES = ("critical", "error", "warning", "info", "debug", "trace")
LOG_FORMAT_CHOICES = ("text", "json")
CERT_REQS_CHOICES = ("none", "optional", "required")  # Kestrel's ClientCertificateMode
TLS_MIN_VERSION_CHOICES = ("1.2", "1.3")


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected a boolean (true/false), got {text!r}")


def parse_header(text: str) -> tuple[str, str]:
    """`NAME:VALUE` as given to --header."""
    name, sep, value = text.partition(":")
    if not sep or not name.strip():
        raise ValueError(f"expected NAME:VALUE, got {text!r}")
    return name.strip(), value.strip()


# A DNS name as SNI carries it (RFC 6066 section 3: no IP literals), lower case: labels of letters, digits,
# hyphens and underscores.
_SNI_NAME = re.compile(
    r"(?:\*\.)?[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?(?:\.[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?)*",
    re.IGNORECASE,
)


def parse_sni(text: str) -> tuple[str, str, str]:
    """`NAME=CERTFILE[:KEYFILE]` as given to --ssl-sni: (name in lower case, certificate file, key file or "")."""
    name, sep, files = text.strip().partition("=")
    certfile, colon, keyfile = files.rpartition(":")
    if not colon:
        certfile, keyfile = files, ""
    if not sep or not certfile.strip():
        raise ValueError(f"expected NAME=CERTFILE:KEYFILE, got {text!r}")
    name = name.strip().lower()
    sni_name_problem(name)
    return name, certfile.strip(), keyfile.strip()


def sni_name_problem(name: str) -> None:
    """Raise ValueError unless `name` is an --ssl-sni name: a host name, `*.` and a domain, or `*`."""
    if name == "*" or (len(name) <= 253 and _SNI_NAME.fullmatch(name)):
        return
    raise ValueError(
        f"{name!r} is not a server name: give a host name (app.example.com), a wildcard of one label "
        "(*.example.com) or * (any other name)"
    )


def option(
    default: Any,
    help: str,
    *,
    flag: str | None = None,
    parse: Callable[[str], Any] | None = None,
    choices: tuple[str, ...] | None = None,
    negatable: bool = False,
    repeatable: bool = False,
    metavar: str | None = None,
    group: str | None = None,
) -> Any:
    """Declare a config field once: its default, its help text and how the CLI and environment spell it.

    `flag=None` derives `--field-name` from the field name; `parse` turns a CLI/env string into the value
    (for a `repeatable` option, one item: the environment gives several items one per line). `group` is the
    section of the flag reference (docs/flags.md) the option is listed under; the server never reads it.
    """
    metadata = {
        "help": help,
        "flag": flag,
        "parse": parse,
        "choices": choices,
        "negatable": negatable,
        "repeatable": repeatable,
        "metavar": metavar,
        "group": group,
    }
    if isinstance(default, (list, dict, set)):
        raise TypeError("mutable defaults are not allowed in a frozen config")
    return field(default=default, metadata=metadata)


@dataclass(frozen=True, slots=True)
class Limits:
    """Connection limits, after Kestrel's KestrelServerLimits. Each default says where it comes from.

    They are enforced once, in the shared connection (protocols/http11.py), so both parsers refuse the
    same requests with the same answer.
    """

    keep_alive_timeout: float = option(
        5.0,
        "Close a keep-alive connection idle for this many seconds (uvicorn and hypercorn use 5; "
        "raise it above your load balancer's idle timeout).",
        flag="--timeout-keep-alive",
        parse=float,
        metavar="SECONDS",
        group="timeouts",
    )
    request_headers_timeout: float = option(
        10.0,
        "Answer 408 and close when a request head has started but is not complete after this many seconds "
        "(Kestrel uses 30, hypercorn cuts at 5).",
        flag="--timeout-request-headers",
        parse=float,
        metavar="SECONDS",
        group="timeouts",
    )
    max_request_line_size: int = option(
        8 * 1024,
        "Answer 414 to a request line longer than this many bytes (Kestrel's MaxRequestLineSize).",
        flag="--limit-request-line",
        parse=int,
        metavar="BYTES",
        group="limits",
    )
    max_request_headers_size: int = option(
        32 * 1024,
        "Answer 431 to header fields totalling more than this many bytes (Kestrel's MaxRequestHeadersTotalSize).",
        flag="--limit-request-headers",
        parse=int,
        metavar="BYTES",
        group="limits",
    )
    max_request_header_count: int = option(
        100,
        "Answer 431 to a request with more header fields than this (Kestrel's MaxRequestHeaderCount, "
        "Apache's LimitRequestFields).",
        flag="--limit-request-header-count",
        parse=int,
        metavar="N",
        group="limits",
    )
    max_request_body_size: int = option(
        30_000_000,
        "Answer 413 to a request body larger than this many bytes, before reading it when Content-Length "
        "says so (Kestrel's MaxRequestBodySize; 0 = unlimited).",
        flag="--limit-request-body",
        parse=int,
        metavar="BYTES",
        group="limits",
    )
    max_requests_per_connection: int = option(
        0,
        "Close a keep-alive connection after this many requests, the last answered with Connection: close "
        "(nginx's keepalive_requests idea; 0 = unlimited, Kestrel's default).",
        flag="--limit-keep-alive-requests",
        parse=int,
        metavar="N",
        group="limits",
    )
    max_concurrent_connections: int = option(
        0,
        "Answer 503 and close when this many connections are already open (Kestrel's "
        "MaxConcurrentConnections; 0 = unlimited, Kestrel's default).",
        flag="--limit-concurrency",
        parse=int,
        metavar="N",
        group="limits",
    )
    min_request_body_rate: float = option(
        240.0,
        "Answer 408 (or abort, once the response has started) when a request body arrives slower than this "
        "many bytes per second on average, counted only while the app waits for it (Kestrel's "
        "MinRequestBodyDataRate; 0 = off).",
        flag="--limit-min-request-body-rate",
        parse=float,
        metavar="BYTES_PER_S",
        group="limits",
    )
    min_request_body_grace: float = option(
        5.0,
        "Seconds of waiting for the request body before --limit-min-request-body-rate applies (Kestrel's "
        "grace period; more than the heartbeat's 1 s).",
        flag="--limit-min-request-body-grace",
        parse=float,
        metavar="SECONDS",
        group="limits",
    )
    min_response_rate: float = option(
        240.0,
        "Abort a connection whose client reads the response slower than this many bytes per second while "
        "the server's output is held up (Kestrel's MinResponseDataRate; 0 = off).",
        flag="--limit-min-response-rate",
        parse=float,
        metavar="BYTES_PER_S",
        group="limits",
    )
    min_response_grace: float = option(
        5.0,
        "Seconds any write may take, however small, before --limit-min-response-rate applies (Kestrel's "
        "grace period; more than the heartbeat's 1 s).",
        flag="--limit-min-response-grace",
        parse=float,
        metavar="SECONDS",
        group="limits",
    )
    max_upgraded_connections: int = option(
        0,
        "Answer 503 and close when this many WebSocket connections are already open; upgraded connections "
        "count here instead of towards --limit-concurrency (Kestrel's MaxConcurrentUpgradedConnections; "
        "0 = unlimited, Kestrel's default).",
        flag="--limit-upgraded-connections",
        parse=int,
        metavar="N",
        group="limits",
    )

    def __post_init__(self) -> None:
        if self.keep_alive_timeout <= 0:
            raise ConfigError("--timeout-keep-alive must be greater than 0")
        if self.request_headers_timeout <= 0:
            raise ConfigError("--timeout-request-headers must be greater than 0")
        # A request line shorter than 32 bytes could not even hold "GET / HTTP/1.1" with a short path.
        if self.max_request_line_size < 32:
            raise ConfigError("--limit-request-line must be at least 32")
        if self.max_request_headers_size < 64:
            raise ConfigError("--limit-request-headers must be at least 64")
        if self.max_request_header_count < 1:
            raise ConfigError("--limit-request-header-count must be at least 1")
        if self.max_request_body_size < 0:
            raise ConfigError("--limit-request-body must not be negative (0 = unlimited)")
        if self.max_requests_per_connection < 0:
            raise ConfigError("--limit-keep-alive-requests must not be negative (0 = unlimited)")
        if self.max_concurrent_connections < 0:
            raise ConfigError("--limit-concurrency must not be negative (0 = unlimited)")
        for name in ("min_request_body", "min_response"):
            flag = f"--limit-{name.replace('_', '-')}"
            if getattr(self, f"{name}_rate") < 0:
                raise ConfigError(f"{flag}-rate must not be negative (0 = off)")
            # Kestrel's rule: rates are measured once per heartbeat, so a shorter grace cannot be honoured.
            if getattr(self, f"{name}_grace") <= 1.0:
                raise ConfigError(f"{flag}-grace must be greater than 1 (the heartbeat interval)")
        if self.max_upgraded_connections < 0:
            raise ConfigError("--limit-upgraded-connections must not be negative (0 = unlimited)")


@dataclass(frozen=True, slots=True)
class Http2Limits:
    """HTTP/2 (kestrelpy[http2]): whether it is served, and its limits, after Kestrel's Http2Limits. Each
    default is Kestrel's. protocols/http2.py applies them; the HTTP/1.1 limits above apply per stream."""

    http2: bool = option(
        True,
        "Serve HTTP/2: offered by ALPN on TLS endpoints, and to cleartext connections that open with the "
        "HTTP/2 preface (prior knowledge); needs the h2 package (the kestrelpy[http2] extra), and is off "
        "without it.",
        parse=_parse_bool,
        negatable=True,
        group="http2",
    )
    http2_max_concurrent_streams: int = option(
        100,
        "Streams a client may have open at once on one connection (SETTINGS_MAX_CONCURRENT_STREAMS; "
        "Kestrel's MaxStreamsPerConnection).",
        parse=int,
        metavar="N",
        group="http2",
    )
    http2_header_table_size: int = option(
        4096,
        "Size of the HPACK dynamic table the client may use for request headers (SETTINGS_HEADER_TABLE_SIZE; "
        "Kestrel's HeaderTableSize).",
        parse=int,
        metavar="BYTES",
        group="http2",
    )
    http2_max_frame_size: int = option(
        16 * 1024,
        "Largest frame payload the client may send, 16384 to 16777215 (SETTINGS_MAX_FRAME_SIZE; Kestrel's "
        "MaxFrameSize).",
        parse=int,
        metavar="BYTES",
        group="http2",
    )
    http2_max_request_header_field_size: int = option(
        16 * 1024,
        "Largest request header field, name and value decoded, before the stream is refused with 431 "
        "(Kestrel's MaxRequestHeaderFieldSize).",
        parse=int,
        metavar="BYTES",
        group="http2",
    )
    http2_initial_connection_window_size: int = option(
        1024 * 1024,
        "Request body bytes a client may send on one connection before the app reads them "
        "(Kestrel's InitialConnectionWindowSize).",
        parse=int,
        metavar="BYTES",
        group="http2",
    )
    http2_initial_stream_window_size: int = option(
        768 * 1024,
        "Request body bytes a client may send on one stream before the app reads them "
        "(SETTINGS_INITIAL_WINDOW_SIZE; Kestrel's InitialStreamWindowSize).",
        parse=int,
        metavar="BYTES",
        group="http2",
    )
    http2_keep_alive_ping_delay: float = option(
        0.0,
        "Send a PING when nothing has been received for this many seconds (Kestrel's KeepAlivePingDelay; "
        "0 = never, Kestrel's default).",
        parse=float,
        metavar="SECONDS",
        group="http2",
    )
    http2_keep_alive_ping_timeout: float = option(
        20.0,
        "Close the connection when a keep-alive PING is unanswered for this many seconds (Kestrel's "
        "KeepAlivePingTimeout).",
        parse=float,
        metavar="SECONDS",
        group="http2",
    )

    def __post_init__(self) -> None:
        # RFC 9113 section 6.5.2 gives the ranges of the settings; a window is at most 2^31-1 (section 6.9.1).
        if self.http2_max_concurrent_streams < 1:
            raise ConfigError("--http2-max-concurrent-streams must be at least 1")
        if self.http2_header_table_size < 0:
            raise ConfigError("--http2-header-table-size must not be negative")
        if not 2**14 <= self.http2_max_frame_size <= 2**24 - 1:
            raise ConfigError("--http2-max-frame-size must be between 16384 and 16777215")
        if self.http2_max_request_header_field_size < 64:
            raise ConfigError("--http2-max-request-header-field-size must be at least 64")
        if not 65535 <= self.http2_initial_connection_window_size <= 2**31 - 1:
            raise ConfigError("--http2-initial-connection-window-size must be between 65535 and 2147483647")
        if not 65535 <= self.http2_initial_stream_window_size <= 2**31 - 1:
            raise ConfigError("--http2-initial-stream-window-size must be between 65535 and 2147483647")
        if self.http2_keep_alive_ping_delay < 0:
            raise ConfigError("--http2-keep-alive-ping-delay must not be negative (0 = never)")
        if self.http2_keep_alive_ping_timeout <= 0:
            raise ConfigError("--http2-keep-alive-ping-timeout must be greater than 0")


@dataclass(frozen=True, slots=True)
class TlsOptions:
    """The certificate and settings of the TLS endpoints (`https://` URLs, or every endpoint given without
    a scheme once --ssl-certfile is set). kestrelpy/tls.py turns them into an ssl.SSLContext."""

    ssl_certfile: str = option(
        "",
        "PEM file with the server certificate (and its chain, leaf first); it turns the endpoints given without "
        "a scheme (--host/--port, --bind, --uds) into TLS endpoints, as https:// URLs are.",
        parse=str,
        metavar="PATH",
        group="tls",
    )
    ssl_keyfile: str = option(
        "",
        "PEM file with the certificate's private key (default: the key is in --ssl-certfile).",
        parse=str,
        metavar="PATH",
        group="tls",
    )
    ssl_keyfile_password: str = option(
        "",
        "Password of an encrypted --ssl-keyfile. Prefer the environment variable KESTRELPY_SSL_KEYFILE_PASSWORD, "
        "which no other user can read in the process list.",
        parse=str,
        metavar="PASSWORD",
        group="tls",
    )
    ssl_ca_certs: str = option(
        "",
        "PEM file of the CA certificates client certificates are verified against (for --ssl-cert-reqs).",
        parse=str,
        metavar="PATH",
        group="tls",
    )
    ssl_cert_reqs: str = option(
        "none",
        "Client certificates (Kestrel's ClientCertificateMode): none (not asked for), optional (asked for and "
        "verified when sent) or required (a connection without a valid one is refused).",
        choices=CERT_REQS_CHOICES,
        group="tls",
    )
    ssl_min_version: str = option(
        "1.2",
        "Oldest TLS version accepted: 1.2 or 1.3.",
        choices=TLS_MIN_VERSION_CHOICES,
        group="tls",
    )
    ssl_ciphers: str = option(
        "",
        "OpenSSL cipher list for TLS 1.2 (default: the Python ssl module's secure default; TLS 1.3 suites are "
        "not affected).",
        parse=str,
        metavar="CIPHERS",
        group="tls",
    )
    ssl_sni: tuple[tuple[str, str, str], ...] = option(
        (),
        "Serve the certificate in CERTFILE (its key in KEYFILE, or in CERTFILE when left out) to clients asking "
        "for NAME: a host name, *.example.com (any name under example.com; the longest wildcard wins) or * "
        "(any name nothing else matches); repeat for more. Names that match nothing get --ssl-certfile.",
        parse=parse_sni,
        repeatable=True,
        metavar="NAME=CERTFILE:KEYFILE",
        group="tls",
    )
    ssl_watch_interval: float = option(
        15.0,
        "Read the certificate and key files every this many seconds and serve a changed certificate to new "
        "connections, without a restart (0 = never).",
        parse=float,
        metavar="SECONDS",
        group="tls",
    )
    tls_handshake_timeout: float = option(
        10.0,
        "Close a connection whose TLS handshake is not complete after this many seconds (Kestrel's default).",
        flag="--timeout-tls-handshake",
        parse=float,
        metavar="SECONDS",
        group="tls",
    )

    # Set only for the settings of an endpoint with its own certificate (for_endpoint): which endpoint, so
    # messages name it, and the passwords of its SNI certificates' keys, by name.
    origin: str = field(default="")
    sni_passwords: tuple[tuple[str, str], ...] = field(default=(), repr=False)

    def __post_init__(self) -> None:
        if self.ssl_cert_reqs not in CERT_REQS_CHOICES:
            raise ConfigError(f"--ssl-cert-reqs must be one of {', '.join(CERT_REQS_CHOICES)}")
        if self.ssl_min_version not in TLS_MIN_VERSION_CHOICES:
            raise ConfigError(f"--ssl-min-version must be one of {', '.join(TLS_MIN_VERSION_CHOICES)}")
        if self.tls_handshake_timeout <= 0:
            raise ConfigError("--timeout-tls-handshake must be greater than 0")
        if self.ssl_watch_interval < 0:
            raise ConfigError("--ssl-watch-interval must not be negative (0 = never)")
        self._check_sni()
        if not self.ssl_certfile:
            for flag, given in (
                ("--ssl-sni", bool(self.ssl_sni)),
                ("--ssl-keyfile", bool(self.ssl_keyfile)),
                ("--ssl-keyfile-password", bool(self.ssl_keyfile_password)),
            ):
                if given:
                    raise ConfigError(f"{flag} needs --ssl-certfile (the server certificate)")
        if self.ssl_cert_reqs != "none" and not self.ssl_ca_certs:
            raise ConfigError(
                f"--ssl-cert-reqs {self.ssl_cert_reqs} needs --ssl-ca-certs (the CAs client certificates are "
                "verified against)"
            )

    def _check_sni(self) -> None:
        seen: set[str] = set()
        for name, certfile, _keyfile in self.ssl_sni:
            try:
                sni_name_problem(name)
            except ValueError as exc:
                raise ConfigError(f"--ssl-sni: {exc}") from None
            if name.lower() in seen:
                raise ConfigError(f"--ssl-sni {name.lower()} is given twice")
            if not certfile:
                raise ConfigError(f"--ssl-sni {name} names no certificate file")
            seen.add(name.lower())

    @property
    def enabled(self) -> bool:
        """Whether a certificate is configured."""
        return bool(self.ssl_certfile)

    def for_endpoint(self, endpoint: Endpoint) -> TlsOptions:
        """The settings a TLS endpoint is served with: these, with what its [endpoints] table sets instead
        (its certificate, its SNI certificates, its client certificate mode). The same object when the
        endpoint sets nothing, so endpoints that share the --ssl-* settings share one context."""
        own = endpoint.settings
        if own is None:
            return self
        changes: dict[str, Any] = {"origin": f"endpoints.{endpoint.name}"}
        if own.certificate is not None:
            cert = own.certificate
            changes.update(ssl_certfile=cert.path, ssl_keyfile=cert.key_path, ssl_keyfile_password=cert.password)
        if own.sni:
            changes["ssl_sni"] = tuple((name, c.path, c.key_path) for name, c in own.sni)
            changes["sni_passwords"] = tuple((name, c.password) for name, c in own.sni if c.password)
        if own.client_certificate_mode is not None:
            changes["ssl_cert_reqs"] = own.client_certificate_mode
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True, slots=True)
class Config:
    """Everything the server needs to run, validated at construction."""

    app: Any = option(None, "The ASGI application as module:attribute (or the callable itself).")
    host: str = option("127.0.0.1", "Address to listen on (IPv4, IPv6 or a host name).", parse=str, group="listening")
    port: int = option(8000, "TCP port to listen on; 0 picks a free port.", parse=int, group="listening")
    binds: tuple[str, ...] = option(
        (),
        "Another endpoint: HOST:PORT, [IPV6]:PORT, localhost:PORT (both loopbacks), *:PORT (every address), "
        "unix:PATH or fd://N; repeat for more. --host/--port still count when given.",
        flag="--bind",
        parse=str,
        repeatable=True,
        metavar="ENDPOINT",
        group="listening",
    )
    urls: str = option(
        "",
        "Kestrel-style endpoint URLs separated by ';', e.g. 'http://+:8080;http://localhost:5000'.",
        parse=str,
        metavar="URLS",
        group="listening",
    )
    uds: str = option(
        "",
        "Listen on this Unix domain socket path (the same as --bind unix:PATH).",
        parse=str,
        group="listening",
    )
    uds_mode: int | None = option(
        None,
        "Octal permissions for Unix socket files, e.g. 660 (default: what the umask gives).",
        parse=parse_octal_mode,
        metavar="MODE",
        group="listening",
    )
    inherited: tuple[FdEndpoint, ...] = field(default=())  # systemd socket activation, filled in by the CLI
    # The config file's [endpoints.NAME] tables, parsed (kestrelpy/config_file.py); the CLI leaves them out
    # when the command line or the environment names endpoints itself.
    named_endpoints: tuple[Endpoint, ...] = field(default=())
    backlog: int = option(2048, "Maximum number of connections waiting to be accepted.", parse=int, group="listening")
    http: str = option("auto", "HTTP/1.1 parser (auto = httptools).", choices=HTTP_CHOICES, group="http")
    protocols: str = option(
        "http1+http2",
        "HTTP versions the endpoints serve, unless a config file endpoint chooses its own (Kestrel's "
        "Protocols): http1, http2, or http1+http2. HTTP/2 needs the h2 package and is off with --no-http2.",
        choices=PROTOCOL_CHOICES,
        group="http",
    )
    loop: str = option("auto", "Event loop (auto = uvloop where installed).", choices=LOOP_CHOICES, group="application")
    lifespan: str = option(
        "auto",
        "ASGI lifespan protocol (auto tolerates apps without it).",
        choices=LIFESPAN_CHOICES,
        group="application",
    )
    log_level: str = option("info", "Log level.", choices=LOG_LEVEL_CHOICES, group="logging")
    log_format: str = option(
        "text",
        "How the server's own log lines are written: text, or json (one object per line with time, level, "
        "logger, message and any exception).",
        choices=LOG_FORMAT_CHOICES,
        group="logging",
    )
    log_config: str = option(
        "",
        "A logging configuration (logging.config.dictConfig) to apply after the defaults: a .json, .toml, "
        "or .yaml/.yml file (YAML needs PyYAML).",
        parse=str,
        metavar="FILE",
        group="logging",
    )
    access_log: bool = option(True, "Log one line per request.", parse=_parse_bool, negatable=True, group="logging")
    access_log_format: str = option(
        "default",
        "Access log line: default, common, combined (as nginx writes them), json, or a template of fields "
        "such as '{client} {method} {path} {status} {bytes} {duration_ms} {header:user-agent}'.",
        parse=str,
        metavar="FORMAT",
        group="logging",
    )
    root_path: str = option("", "ASGI root_path for an app mounted below a URL prefix.", parse=str, group="proxy")
    proxy_headers: bool = option(
        True,
        "Trust X-Forwarded-For/-Proto/-Host and Forwarded from peers in --forwarded-allow-ips.",
        parse=_parse_bool,
        negatable=True,
        group="proxy",
    )
    forwarded_allow_ips: str = option(
        DEFAULT_TRUSTED,
        "Comma-separated IPs, CIDR networks, 'unix' (Unix-socket peers) or '*' allowed to set forwarded headers.",
        parse=str,
        metavar="LIST",
        group="proxy",
    )
    factory: bool = option(
        False,
        "Treat APP as a factory: call it with no arguments to get the app.",
        parse=_parse_bool,
        group="application",
    )
    app_dir: str = option(
        ".",
        "Directory put first on sys.path before importing the app.",
        parse=str,
        group="application",
    )
    headers: tuple[tuple[str, str], ...] = option(
        (),
        "Extra response header NAME:VALUE sent with every response; repeat for more.",
        flag="--header",
        parse=parse_header,
        repeatable=True,
        metavar="NAME:VALUE",
        group="http",
    )
    server_header: bool = option(True, "Send `Server: kestrelpy`.", parse=_parse_bool, negatable=True, group="http")
    date_header: bool = option(True, "Send a Date header.", parse=_parse_bool, negatable=True, group="http")
    timeout_graceful_shutdown: float = option(
        30.0,
        "On SIGINT/SIGTERM, wait this many seconds for in-flight requests before closing them.",
        parse=float,
        metavar="SECONDS",
        group="timeouts",
    )
    shutdown_delay: float = option(
        0.0,
        "On SIGTERM, keep serving this many seconds (answering with Connection: close) before closing the "
        "listeners, so a load balancer can take the instance out of rotation first.",
        parse=float,
        metavar="SECONDS",
        group="timeouts",
    )
    workers: int = option(
        1,
        "Number of worker processes sharing the listening sockets (WEB_CONCURRENCY when not given).",
        parse=int,
        metavar="N",
        group="processes",
    )
    reuse_port: bool = option(
        False,
        "Linux: each worker listens on its own SO_REUSEPORT socket and the kernel spreads connections "
        "across them (a stopping worker's queued connections are reset unless net.ipv4.tcp_migrate_req=1).",
        parse=_parse_bool,
        group="processes",
    )
    timeout_worker_healthcheck: float = option(
        10.0,
        "Replace a worker whose event loop has not reported for this many seconds (multi-process mode).",
        parse=float,
        metavar="SECONDS",
        group="processes",
    )
    timeout_worker_startup: float = option(
        60.0,
        "Kill and replace a worker that has not finished importing the app and lifespan startup after this many "
        "seconds (multi-process mode; 0 = wait indefinitely).",
        parse=float,
        metavar="SECONDS",
        group="processes",
    )
    limit_max_requests: int = option(
        0,
        "Gracefully replace a worker after it has served this many requests (0 = never).",
        parse=int,
        metavar="N",
        group="processes",
    )
    limit_max_requests_jitter: int = option(
        0,
        "Add a random 0..N to --limit-max-requests per worker so workers do not all recycle at once.",
        parse=int,
        metavar="N",
        group="processes",
    )
    limit_worker_memory: float = option(
        0.0,
        "Gracefully replace a worker whose resident memory exceeds this many MiB (0 = never).",
        parse=float,
        metavar="MIB",
        group="processes",
    )
    reload: bool = option(
        False,
        "Restart the workers when a source file changes (development).",
        parse=_parse_bool,
        group="processes",
    )
    reload_dirs: tuple[str, ...] = option(
        (),
        "Directory to watch with --reload (default: --app-dir); repeat for more.",
        flag="--reload-dir",
        parse=str,
        repeatable=True,
        metavar="DIR",
        group="processes",
    )
    reload_includes: tuple[str, ...] = option(
        (),
        "Glob of file names that trigger a reload (default: *.py); repeat for more.",
        flag="--reload-include",
        parse=str,
        repeatable=True,
        metavar="GLOB",
        group="processes",
    )
    reload_excludes: tuple[str, ...] = option(
        (),
        "Glob of file or directory names never watched, besides .*, *.py[cod], *~, __pycache__ and "
        "node_modules; repeat for more.",
        flag="--reload-exclude",
        parse=str,
        repeatable=True,
        metavar="GLOB",
        group="processes",
    )
    metrics_bind: str = option(
        "",
        "Serve metrics in the Prometheus text format at http://HOST:PORT/metrics, a listener of their own "
        "(never the app's port; with workers the supervisor serves the whole server's sums). Off when empty.",
        parse=str,
        metavar="HOST:PORT",
        group="metrics",
    )
    metrics_otel: bool = option(
        False,
        "Also publish the metrics through an OpenTelemetry meter (needs opentelemetry-api; each serving "
        "process publishes its own).",
        parse=_parse_bool,
        negatable=True,
        group="metrics",
    )
    ws: str = option(
        "auto",
        "WebSocket support: websockets (the kestrelpy[websockets] extra), auto (it when installed, else "
        "Upgrade requests are plain HTTP) or none.",
        choices=WS_CHOICES,
        group="websocket",
    )
    ws_max_size: int = option(
        16 * 1024 * 1024,
        "Close a WebSocket with 1009 when a message is larger than this many bytes (uvicorn's default; 0 = unlimited).",
        parse=int,
        metavar="BYTES",
        group="websocket",
    )
    ws_ping_interval: float = option(
        20.0,
        "Ping an open WebSocket every this many seconds (uvicorn's default; 0 = never).",
        parse=float,
        metavar="SECONDS",
        group="websocket",
    )
    ws_ping_timeout: float = option(
        20.0,
        "Close a WebSocket with 1011 when a ping is unanswered for this many seconds (uvicorn's default; "
        "0 = wait forever).",
        parse=float,
        metavar="SECONDS",
        group="websocket",
    )
    ws_per_message_deflate: bool = option(
        True,
        "Offer WebSocket permessage-deflate compression.",
        parse=_parse_bool,
        negatable=True,
        group="websocket",
    )
    limits: Limits = field(default_factory=Limits)
    http2_limits: Http2Limits = field(default_factory=Http2Limits)
    tls: TlsOptions = field(default_factory=TlsOptions)

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"--port must be between 0 and 65535, not {self.port}")
        if self.backlog < 1:
            raise ConfigError("--backlog must be at least 1")
        if self.timeout_graceful_shutdown < 0:
            raise ConfigError("--timeout-graceful-shutdown must not be negative")
        for name, choices in (
            ("http", HTTP_CHOICES),
            ("protocols", PROTOCOL_CHOICES),
            ("log_format", LOG_FORMAT_CHOICES),
            ("loop", LOOP_CHOICES),
            ("lifespan", LIFESPAN_CHOICES),
            ("log_level", LOG_LEVEL_CHOICES),
            ("ws", WS_CHOICES),
        ):
            if getattr(self, name) not in choices:
                raise ConfigError(f"--{name.replace('_', '-')} must be one of {', '.join(choices)}")
        for name, value in self.headers:
            if not name or any(c in name + value for c in "\r\n\0"):
                raise ConfigError(f"--header {name!r} contains a line break or NUL")
        if not 1 <= self.workers <= 512:
            raise ConfigError(f"--workers must be between 1 and 512, not {self.workers}")
        if self.timeout_worker_healthcheck <= 0:
            raise ConfigError("--timeout-worker-healthcheck must be greater than 0")
        if self.timeout_worker_startup < 0:
            raise ConfigError("--timeout-worker-startup must not be negative")
        if self.limit_max_requests < 0 or self.limit_max_requests_jitter < 0:
            raise ConfigError("--limit-max-requests and --limit-max-requests-jitter must not be negative")
        if self.limit_worker_memory < 0:
            raise ConfigError("--limit-worker-memory must not be negative")
        if self.ws_max_size < 0 or self.ws_ping_interval < 0 or self.ws_ping_timeout < 0:
            raise ConfigError("--ws-max-size, --ws-ping-interval and --ws-ping-timeout must not be negative")
        if self.shutdown_delay < 0:
            raise ConfigError("--shutdown-delay must not be negative")
        try:
            compile_format(self.access_log_format)
        except ValueError as exc:
            raise ConfigError(f"--access-log-format: {exc}") from None
        try:
            parse_trusted(self.forwarded_allow_ips)
        except ValueError as exc:
            raise ConfigError(f"--forwarded-allow-ips: {exc}") from None
        endpoints = self.endpoints()  # every endpoint spelling is checked here, before anything is bound
        self._check_tls_endpoints(endpoints)
        _check_distinct_addresses(endpoints)
        self._check_metrics_endpoint(endpoints)

    @property
    def multiprocess(self) -> bool:
        """True when a supervisor runs the workers: several of them, reloading or recycling."""
        return (
            self.workers > 1
            or self.reload
            or self.reuse_port
            or self.limit_max_requests > 0
            or self.limit_worker_memory > 0
        )

    def _check_tls_endpoints(self, endpoints: list[Endpoint]) -> None:
        for endpoint in endpoints:
            if endpoint.tls:
                self._check_tls_endpoint(endpoint)
        if not any(e.tls and self.tls.for_endpoint(e).enabled for e in endpoints):
            for flag, given in (("--ssl-ca-certs", self.tls.ssl_ca_certs), ("--ssl-ciphers", self.tls.ssl_ciphers)):
                if given:
                    raise ConfigError(f"{flag} needs --ssl-certfile (the server certificate)")
        pair = ambiguous_tls(endpoints)
        if pair is not None:
            raise ConfigError(
                f"{display_url(pair[0])} and {display_url(pair[1])} both ask for a free port on the same "
                "address, one with TLS and one without (or with another certificate); give one of them a "
                "fixed port or another address"
            )

    def _check_tls_endpoint(self, endpoint: Endpoint) -> None:
        """A TLS endpoint needs a certificate, its own or --ssl-certfile; its client certificate mode needs
        the CAs of --ssl-ca-certs."""
        own = endpoint.settings
        has_certificate = self.tls.enabled or (own is not None and own.certificate is not None)
        if not endpoint.name:
            if not has_certificate:
                raise ConfigError(
                    f"{display_url(endpoint)} is a TLS endpoint but no certificate is configured: give "
                    "--ssl-certfile (and --ssl-keyfile unless the key is in the same file)"
                )
            return
        table = f"[endpoints.{endpoint.name}] ({display_url(endpoint)})"
        if not has_certificate:
            what = "only SNI certificates" if own is not None and own.sni else "no certificate"
            raise ConfigError(
                f"{table} has {what}: give it certificate = {{ path = ..., key_path = ... }}, or set "
                "ssl_certfile for every https endpoint"
            )
        mode = own.client_certificate_mode if own is not None else None
        if mode not in (None, "none") and not self.tls.ssl_ca_certs:
            raise ConfigError(
                f"{table} sets client_certificate_mode = {mode!r}, which needs ssl_ca_certs (the CAs client "
                "certificates are verified against)"
            )

    def metrics_endpoint(self) -> TcpEndpoint | None:
        """Where --metrics-bind listens; None when metrics are not served."""
        return metrics_endpoint(self.metrics_bind) if self.metrics_bind else None

    def _check_metrics_endpoint(self, endpoints: list[Endpoint]) -> None:
        metrics = self.metrics_endpoint()
        if metrics is None:
            return
        for endpoint in endpoints:
            if isinstance(endpoint, TcpEndpoint) and same_address(endpoint, metrics):
                raise ConfigError(
                    f"--metrics-bind {self.metrics_bind} is the app's endpoint {display_url(endpoint)}: give the "
                    "metrics a port of their own"
                )

    def replace(self, **changes: Any) -> Config:
        return dataclasses.replace(self, **changes)

    def endpoints(self) -> list[Endpoint]:
        """Every endpoint this configuration names (see endpoints.configured_endpoints)."""
        return configured_endpoints(
            host=self.host,
            port=self.port,
            binds=self.binds,
            urls=self.urls,
            uds=self.uds,
            uds_mode=self.uds_mode,
            inherited=self.inherited,
            tls=self.tls.enabled,
            named=self.named_endpoints,
            protocols=self.protocols,
        )


def _check_distinct_addresses(endpoints: list[Endpoint]) -> None:
    """Two different endpoints on one address (a fixed port, or one socket path) could not both bind."""
    seen: dict[object, Endpoint] = {}
    for endpoint in endpoints:
        if isinstance(endpoint, TcpEndpoint) and endpoint.port != 0:
            key: object = (endpoint.host.lower(), endpoint.port)
        elif isinstance(endpoint, UnixEndpoint):
            key = endpoint.path
        else:
            continue
        if key in seen:
            raise ConfigError(f"{seen[key].display()} and {endpoint.display()} are the same address; listen on it once")
        seen[key] = endpoint


# The nested option groups, by the Config field that holds each.
NESTED: dict[str, type] = {"limits": Limits, "http2_limits": Http2Limits, "tls": TlsOptions}


def options() -> Iterator[tuple[type, dataclasses.Field[Any]]]:
    """Every declared option, with the dataclass that owns it (Config first, then the nested ones)."""
    for owner in (Config, *NESTED.values()):
        for f in dataclasses.fields(owner):
            if "help" in f.metadata and f.name != "app":
                yield owner, f


def flag_name(f: dataclasses.Field[Any]) -> str:
    return str(f.metadata["flag"] or "--" + f.name.replace("_", "-"))


def env_name(f: dataclasses.Field[Any]) -> str:
    return "KESTRELPY_" + flag_name(f)[2:].replace("-", "_").upper()
