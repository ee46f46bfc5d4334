"""TLS for the endpoints that ask for it (see endpoints.py): the server-side ssl.SSLContexts built from the
--ssl-* options, the certificate chosen for each connection by the name it asks for (SNI), the certificate
files watched for a new certificate, and what the ASGI TLS extension (asgiref specs/tls.rst, version 0.2)
reports about each connection.

The context: TLS 1.2 or 1.3 at least, the ssl module's secure cipher default unless --ssl-ciphers names
others, no TLS-level compression (CRIME), no renegotiation where OpenSSL offers the switch, client
certificates verified against --ssl-ca-certs as --ssl-cert-reqs says. A file that cannot be read or a key
that does not match ends in one ConfigError line, before anything is bound. A plain-HTTP request sent
to a TLS endpoint gets nginx's 400 (TlsPortObject).

Certificates by name, after Kestrel's SniOptionsSelector: every listener has one context whose
`sni_callback` switches each connection to the context of the certificate its server name (RFC 6066
section 3) selects: the exact name (case-insensitive), else the longest wildcard `*.domain` of a domain
it is under, at any depth, as Kestrel matches a wildcard as a suffix, else `*` when given. A name
that matches nothing, and a client that sends none, get the default certificate (--ssl-certfile). Every
context is built with the same settings, so only the certificate differs. A server with one certificate
installs no callback until that certificate is replaced: OpenSSL calls it during every handshake.

Endpoints of the config file may bring a certificate, SNI certificates or a client certificate mode of their
own (TlsOptions.for_endpoint): each such endpoint gets a ServerTls of its own, with its own SNI switch and its
own rotation watch, built from the same settings otherwise; every other TLS endpoint shares the one built from
the --ssl-* options (TlsListeners). Messages about an endpoint's files name its table.

Rotation: the certificate and key files (the default and every --ssl-sni one) are read every
--ssl-watch-interval seconds, through any symlinks (a Kubernetes secret mount swaps its `..data` symlink),
and compared by content (SHA-256), not by modification time, which a copy can keep and a rewrite within
the same second need not change. A changed pair
that loads, belongs together and has not expired replaces the old one for new connections; one that does
not is logged once and the old one stays. Each process watches for itself.

The extension is computed once per connection, on its first request, from the transport's `ssl_object`:
- `server_cert`: the first certificate of the file the connection was served from, as PEM (read with its
  context);
- `client_cert_chain`: what the client sent, as PEM, its certificate first. Python before 3.13 exposes only
  the client's own certificate, so the list holds that one; from 3.13 on, the whole chain it sent;
- `client_cert_name`: the client certificate's subject as an RFC 4514 string, or None;
- `client_cert_error`: always None, since a certificate that fails verification ends the handshake;
- `tls_version`: the protocol version number (0x0303 for TLS 1.2, 0x0304 for TLS 1.3);
- `cipher_suite`: the IANA number of the cipher suite. The ssl module names the suite in OpenSSL's
  spelling; the number comes from the same OpenSSL's cipher list for this context (its cipher ids are
  0x0300XXXX, XXXX the IANA number), so a name it does not list gives None rather than a guess.
"""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import logging
import re
import ssl
import time
from collections.abc import Callable, Container, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from kestrelpy.errors import ConfigError

if TYPE_CHECKING:
    from kestrelpy.config import TlsOptions
    from kestrelpy.endpoints import Endpoint

logger = logging.getLogger("kestrelpy.error")

_MIN_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}
_CERT_REQS = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL, "required": ssl.CERT_REQUIRED}
# What SSLObject.version() says, as the protocol's version number (RFC 8446 section 4.1.2, RFC 5246 A.1).
_VERSION_NUMBERS = {"TLSv1": 0x0301, "TLSv1.1": 0x0302, "TLSv1.2": 0x0303, "TLSv1.3": 0x0304}
_OPENSSL_TLS_CIPHER = 0x03000000  # OpenSSL's prefix for a TLS cipher id; the low 16 bits are IANA's number

# RFC 4514 section 3: the attribute type names every implementation knows, keyed by the ssl module's
# long names. Others are written as the ssl module names them.
_RFC4514_NAMES = {
    "commonName": "CN",
    "localityName": "L",
    "stateOrProvinceName": "ST",
    "organizationName": "O",
    "organizationalUnitName": "OU",
    "countryName": "C",
    "streetAddress": "STREET",
    "domainComponent": "DC",
    "userId": "UID",
}


@dataclass(frozen=True, slots=True)
class CertSource:
    """Where one certificate comes from: the default one (`name` None) or the one of an --ssl-sni name."""

    name: str | None
    certfile: str
    keyfile: str  # "" when the key is in certfile
    password: str = field(default="", repr=False)  # of an encrypted key
    origin: str = ""  # "endpoints.NAME" for a certificate of a config file endpoint

    def describe(self) -> str:
        """The option that gave it, as a user wrote it."""
        if self.origin:
            where = "certificate" if self.name is None else f'sni."{self.name}"'
            return f"[{self.origin}] {where} {self.certfile}" + (f" with key {self.keyfile}" if self.keyfile else "")
        if self.name is None:
            return f"--ssl-certfile {self.certfile}" + (f" with --ssl-keyfile {self.keyfile}" if self.keyfile else "")
        return f"--ssl-sni {self.name}={self.certfile}" + (f":{self.keyfile}" if self.keyfile else "")


# What nginx answers a plain-HTTP request sent to a TLS port (RFC 9110 section 15.5.1).
PLAIN_HTTP_ANSWER = (
    b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 46\r\n"
    b"Connection: close\r\n\r\nThe plain HTTP request was sent to HTTPS port\n"
)


class TlsPortObject(ssl.SSLObject):
    """The server side of one TLS connection, as the loop drives it through a pair of memory buffers,
    answering a plain-HTTP request with nginx's 400 instead of closing without a word.

    OpenSSL recognises a request starting GET, POST, HEAD or PUT where a TLS record should be and fails
    the handshake with the reason HTTP_REQUEST; the loop (asyncio's and uvloop's alike) then closes the
    socket at once, without sending what is in the outgoing buffer. So the answer goes into that buffer
    and the loop is told the handshake wants more input: it sends the answer and waits. The client's
    close (which follows `connection: close`), anything more it sends, or the handshake timeout then ends
    the connection as the failed handshake it is."""

    outgoing: ssl.MemoryBIO | None = None  # set by ServedContext.wrap_bio; None once answered

    def do_handshake(self) -> None:
        # Every handshake passes here, usually twice wanting more input: the C object is called directly
        # and that case re-raised first, which keeps what this class adds to a connection (with wrap_bio)
        # near 4,500 instructions, against 2.8 million for a resumed TLS 1.3 handshake.
        try:
            self._sslobj.do_handshake()  # type: ignore[attr-defined]  # (what SSLObject.do_handshake does)
        except ssl.SSLWantReadError:
            raise
        except ssl.SSLError as exc:
            outgoing = self.outgoing
            if exc.reason != "HTTP_REQUEST" or outgoing is None:
                raise
            self.outgoing = None
            outgoing.write(PLAIN_HTTP_ANSWER)
            raise ssl.SSLWantReadError("a plain-HTTP request, answered") from None


class ServedContext(ssl.SSLContext):
    """A context serving one certificate, which it carries (as PEM) for the ASGI TLS extension."""

    server_cert: str | None = None
    sslobject_class = TlsPortObject

    def wrap_bio(
        self,
        incoming: ssl.MemoryBIO,
        outgoing: ssl.MemoryBIO,
        server_side: bool = False,
        server_hostname: str | bytes | None = None,
        session: ssl.SSLSession | None = None,
    ) -> ssl.SSLObject:
        ssl_object = super().wrap_bio(incoming, outgoing, server_side, server_hostname, session)
        ssl_object.outgoing = outgoing  # type: ignore[attr-defined]  # (a TlsPortObject: sslobject_class)
        return ssl_object


class ServerTls:
    """A server's TLS settings, built once per process: the context every TLS listener uses, the context of
    each certificate it switches connections to, the handshake timeout, and what `describe` needs to fill
    the ASGI TLS extension of a connection."""

    __slots__ = (
        "_alpn",
        "_cipher_suites",
        "_contexts",
        "_digests",
        "_failed",
        "_options",
        "_timer",
        "_wallclock",
        "context",
        "handshake_timeout",
        "watch_interval",
    )

    def __init__(
        self,
        options: TlsOptions,
        contexts: dict[str | None, ServedContext],
        digests: dict[CertSource, str],
        wallclock: Callable[[], float] = time.time,
        alpn: Sequence[str] = ("http/1.1",),
    ) -> None:
        self._options = options
        self._alpn = alpn
        self._contexts = contexts  # by --ssl-sni name; None: the default certificate
        self._digests = digests  # the content each source was last loaded from
        self._failed: dict[CertSource, str] = {}  # the content that failed to load, logged once
        self._wallclock = wallclock
        self._timer: asyncio.TimerHandle | None = None
        # The listeners' context: the default certificate as it was at startup, and the switch, which
        # OpenSSL calls during every handshake: only once there is something to switch to (an --ssl-sni
        # certificate, or a new default one).
        self.context = contexts[None]
        if len(contexts) > 1:
            self.context.sni_callback = self._select_context
        self.handshake_timeout = options.tls_handshake_timeout
        self.watch_interval = options.ssl_watch_interval
        self._cipher_suites = cipher_suite_numbers(self.context.get_ciphers())

    @property
    def server_cert(self) -> str | None:
        """The default certificate now served, as PEM."""
        return self._contexts[None].server_cert

    def context_for(self, server_name: str | None) -> ServedContext:
        """The context whose certificate serves `server_name` (see the module's docstring)."""
        return self._contexts[select_name(server_name, self._contexts)]

    def _select_context(self, ssl_object: Any, server_name: str | None, _listener: ssl.SSLContext) -> None:
        # Called by OpenSSL during every handshake, with or without a name; switching the context switches
        # the certificate (and the CAs client certificates are verified against) for this connection only.
        chosen = self.context_for(server_name)
        if ssl_object.context is not chosen:
            ssl_object.context = chosen

    def describe(self, ssl_object: Any) -> dict[str, Any]:
        """The ASGI TLS extension for one connection whose handshake is complete."""
        chain = client_chain(ssl_object)
        cipher = ssl_object.cipher() if ssl_object is not None else None
        peer = ssl_object.getpeercert() if chain else None
        served = getattr(ssl_object, "context", None) if ssl_object is not None else None
        return {
            "server_cert": served.server_cert if isinstance(served, ServedContext) else self.server_cert,
            "client_cert_chain": chain,
            "client_cert_name": rfc4514_name(peer.get("subject", ())) if peer else None,
            "client_cert_error": None,
            "tls_version": _VERSION_NUMBERS.get(ssl_object.version()) if ssl_object is not None else None,
            "cipher_suite": self._cipher_suites.get(cipher[0]) if cipher else None,
        }

    # -- rotation ---------------------------------------------------------------------------------------

    def start_watching(self, loop: asyncio.AbstractEventLoop) -> None:
        """Poll the certificate files every --ssl-watch-interval seconds on `loop` (0: never)."""
        if self.watch_interval > 0:
            self._timer = loop.call_later(self.watch_interval, self._watch_tick, loop)

    def stop_watching(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _watch_tick(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = loop.call_later(self.watch_interval, self._watch_tick, loop)  # first, as the heartbeat
        # The reads happen on the event loop: a certificate and a key are a few kilobytes, read a few times
        # a minute, which costs less than handing them to a thread.
        try:
            self.poll()
        except Exception:  # the watch must outlive anything one poll meets
            logger.exception("Checking the TLS certificate files failed")

    def poll(self) -> list[CertSource]:
        """Load every certificate whose files' content changed since it was loaded; the sources loaded."""
        loaded = []
        for source in list(self._digests):
            if self._reload(source):
                loaded.append(source)
        return loaded

    def _reload(self, source: CertSource) -> bool:
        try:
            digest = files_digest(source)
        except OSError as exc:
            self._reject(source, f"unreadable:{exc.errno}", f"cannot read it ({_reason(exc)})")
            return False
        if digest == self._digests[source]:
            self._failed.pop(source, None)  # back to what is served: a later bad change is news again
            return False
        try:
            context = build_context(self._options, source, self._alpn)
            expires = certificate_expiry(context.server_cert)
        except ConfigError as exc:
            self._reject(source, digest, str(exc))
            return False
        if expires is not None and expires <= self._wallclock():
            self._reject(source, digest, "the new certificate has expired")
            return False
        self._contexts[source.name] = context
        self.context.sni_callback = self._select_context
        self._digests[source] = digest
        self._failed.pop(source, None)
        logger.info("Serving the new certificate of %s", source.describe())
        return True

    def _reject(self, source: CertSource, digest: str, why: str) -> None:
        if self._failed.get(source) == digest:
            return
        self._failed[source] = digest
        logger.error("Not serving the changed certificate of %s, keeping the old one: %s", source.describe(), why)


class TlsListeners:
    """The ServerTls of each TLS endpoint of this process: one for the endpoints that share the --ssl-*
    settings and protocols, and one for each endpoint with settings of its own (see the module's docstring).
    `alpn` names the protocols an endpoint offers, in the server's order of preference."""

    __slots__ = ("_alpn", "_by_settings", "_options")

    def __init__(
        self,
        options: TlsOptions,
        endpoints: Iterable[Endpoint],
        wallclock: Callable[[], float] = time.time,
        alpn: Callable[[Endpoint], Sequence[str]] = lambda _endpoint: ("http/1.1",),
    ):
        self._options = options
        self._alpn = alpn
        self._by_settings: dict[tuple[TlsOptions, tuple[str, ...]], ServerTls] = {}
        for endpoint in endpoints:
            key = self._key(endpoint)
            if endpoint.tls and key not in self._by_settings:
                self._by_settings[key] = build_tls(key[0], wallclock, key[1])

    def _key(self, endpoint: Endpoint) -> tuple[TlsOptions, tuple[str, ...]]:
        return self._options.for_endpoint(endpoint), tuple(self._alpn(endpoint))

    def for_endpoint(self, endpoint: Endpoint | None) -> ServerTls | None:
        """The TLS of the listener bound for `endpoint`; None for a plain one."""
        if endpoint is None or not endpoint.tls:
            return None
        return self._by_settings.get(self._key(endpoint))

    def start_watching(self, loop: asyncio.AbstractEventLoop) -> None:
        for served in self._by_settings.values():
            served.start_watching(loop)

    def stop_watching(self) -> None:
        for served in self._by_settings.values():
            served.stop_watching()


def select_name(server_name: str | None, names: Container[str | None]) -> str | None:
    """Which of `names` (--ssl-sni names, lower case) serves a client asking for `server_name`; None: the
    default certificate. Exact name, then the wildcard of the nearest domain it is under (the longest
    match: `*.b.example.com` before `*.example.com` for `a.b.example.com`), then `*`.

    A wildcard chooses the certificate, whose own names decide whether the client accepts it: a
    certificate for `*.example.com` alone is refused for `a.b.example.com` (RFC 6125 section 6.4.3),
    one that also names `*.b.example.com` is not."""
    if not server_name:
        return None
    name = server_name.lower().rstrip(".")
    if name in names:
        return name
    _, dot, domain = name.partition(".")
    while dot and domain:
        if f"*.{domain}" in names:
            return f"*.{domain}"
        _, dot, domain = domain.partition(".")
    return "*" if "*" in names else None


def certificate_sources(options: TlsOptions) -> list[CertSource]:
    """The default certificate, then each --ssl-sni one, in the order given."""
    password, origin = options.ssl_keyfile_password, options.origin
    default = CertSource(None, options.ssl_certfile, options.ssl_keyfile, password, origin)
    passwords = dict(options.sni_passwords)
    return [
        default,
        *(
            CertSource(name.lower(), cert, key, passwords.get(name, password), origin)
            for name, cert, key in options.ssl_sni
        ),
    ]


def files_digest(source: CertSource) -> str:
    """SHA-256 of a certificate file and its key file, read through symlinks."""
    digest = hashlib.sha256()
    for path in (source.certfile, source.keyfile):
        if path:
            with open(path, "rb") as file:
                digest.update(file.read())
        digest.update(b"\0")
    return digest.hexdigest()


def build_tls(
    options: TlsOptions, wallclock: Callable[[], float] = time.time, alpn: Sequence[str] = ("http/1.1",)
) -> ServerTls:
    """The server's TLS settings from the --ssl-* options; a ConfigError names the file that is wrong.
    `alpn`: the protocols offered, in the server's order of preference (RFC 7301)."""
    contexts: dict[str | None, ServedContext] = {}
    digests: dict[CertSource, str] = {}
    for source in certificate_sources(options):
        try:  # read before loading: a change in between shows as a change at the next poll
            digests[source] = files_digest(source)
        except OSError:
            digests[source] = ""  # build_context names the file that cannot be read
        contexts[source.name] = build_context(options, source, alpn)
    return ServerTls(options, contexts, digests, wallclock, alpn)


def build_context(
    options: TlsOptions, source: CertSource | None = None, alpn: Sequence[str] = ("http/1.1",)
) -> ServedContext:
    """A context with the --ssl-* settings serving one certificate (the default one unless `source`),
    offering the `alpn` protocols (every context: SNI may switch a connection to any of them)."""
    source = source or certificate_sources(options)[0]
    context = ServedContext(ssl.PROTOCOL_TLS_SERVER)  # already carries the ssl module's cipher default
    context.minimum_version = _MIN_VERSIONS[options.ssl_min_version]
    context.options |= ssl.OP_NO_COMPRESSION | getattr(ssl, "OP_NO_RENEGOTIATION", 0)
    context.set_alpn_protocols(list(alpn))
    if options.ssl_ciphers:
        try:
            context.set_ciphers(options.ssl_ciphers)
        except ssl.SSLError:
            raise ConfigError(f"--ssl-ciphers {options.ssl_ciphers!r}: OpenSSL knows none of these ciphers") from None
    _load_certificate(context, source)
    context.server_cert = first_certificate(source.certfile)
    if options.ssl_cert_reqs != "none":
        try:
            context.load_verify_locations(cafile=options.ssl_ca_certs)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"--ssl-ca-certs {options.ssl_ca_certs}: {_reason(exc)}") from None
        context.verify_mode = _CERT_REQS[options.ssl_cert_reqs]
    return context


def _load_certificate(context: ssl.SSLContext, source: CertSource) -> None:
    certfile, keyfile, password = source.certfile, source.keyfile or None, source.password

    def ask_password() -> str:
        # Without this callback OpenSSL would prompt on the terminal for an encrypted key's password.
        if not password:
            where = (
                f"the variable that password_env in [{source.origin}] names"
                if source.origin
                else "KESTRELPY_SSL_KEYFILE_PASSWORD (or --ssl-keyfile-password)"
            )
            raise ConfigError(f"{keyfile or certfile}: the private key is encrypted; give its password in {where}")
        return password

    try:
        context.load_cert_chain(certfile, keyfile, password=ask_password)
    except FileNotFoundError as exc:
        missing = exc.filename or certfile
        if source.origin:
            key = "key_path" if keyfile and missing == keyfile else "path"
            where = "certificate" if source.name is None else f'sni."{source.name}"'
            raise ConfigError(f"[{source.origin}] {where}.{key} {missing}: no such file") from None
        if source.name is not None:
            raise ConfigError(f"{source.describe()}: no such file {exc.filename or certfile}") from None
        flag = "--ssl-keyfile" if keyfile and exc.filename == keyfile else "--ssl-certfile"
        raise ConfigError(f"{flag} {exc.filename or certfile}: no such file") from None
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"{source.describe()}: cannot load the certificate and its key ({_reason(exc)}); both must be PEM, "
            "the key must belong to the certificate, and an encrypted key needs its right password"
        ) from None


def _reason(exc: BaseException) -> str:
    """OpenSSL's reason, as short as it gives it (often only "PEM lib", hence the hints around it)."""
    if isinstance(exc, ssl.SSLError):
        if exc.reason:
            return str(exc.reason).lower().replace("_", " ")
        text = str(exc.args[1]) if len(exc.args) > 1 else str(exc)
        return re.sub(r"^\[\w+\]\s*|\s*\(_ssl\.c:\d+\)$", "", text)
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc)


def first_certificate(path: str) -> str | None:
    """The first PEM certificate in `path` (the server's own, leaf first), or None when there is none."""
    try:
        with open(path, encoding="ascii", errors="replace") as file:
            text = file.read()
    except OSError:
        return None
    begin, end = "-----BEGIN CERTIFICATE-----", "-----END CERTIFICATE-----"
    start = text.find(begin)
    stop = text.find(end, start)
    if start < 0 or stop < 0:
        return None
    return text[start : stop + len(end)] + "\n"


def cipher_suite_numbers(ciphers: Iterable[Mapping[str, object]]) -> dict[str, int]:
    """OpenSSL cipher name -> IANA cipher suite number, for the TLS ciphers OpenSSL lists."""
    numbers: dict[str, int] = {}
    for cipher in ciphers:
        ident = cipher.get("id")
        if isinstance(ident, int) and ident & 0xFFFF0000 == _OPENSSL_TLS_CIPHER:
            numbers[str(cipher["name"])] = ident & 0xFFFF
    return numbers


def client_chain(ssl_object: Any) -> list[str]:
    """The certificates the client sent, as PEM, its own first; [] when it sent none."""
    if ssl_object is None:
        return []
    unverified = getattr(ssl_object, "get_unverified_chain", None)  # Python 3.13+
    if unverified is not None:
        chain = unverified() or []
        return [ssl.DER_cert_to_PEM_cert(bytes(der)) for der in chain]
    der = ssl_object.getpeercert(binary_form=True)
    return [ssl.DER_cert_to_PEM_cert(der)] if der else []


def rfc4514_name(subject: Sequence[Sequence[tuple[str, str]]]) -> str | None:
    """A certificate subject, as `ssl.getpeercert()` gives it (RDNs in certificate order), as an RFC 4514
    string: RDNs last to first, joined by ',', several attributes of one RDN by '+'."""
    rdns = ["+".join(f"{_RFC4514_NAMES.get(name, name)}={_escape(value)}" for name, value in rdn) for rdn in subject]
    return ",".join(reversed(rdns)) if rdns else None


def _escape(value: str) -> str:
    """RFC 4514 section 2.4: escape the special characters, a leading '#' or space and a trailing space."""
    out = []
    for i, char in enumerate(value):
        if char in ',+"\\<>;' or (i == 0 and char in "# ") or (i == len(value) - 1 and char == " "):
            out.append("\\" + char)
        elif char == "\0":
            out.append("\\00")
        else:
            out.append(char)
    return "".join(out)


def certificate_expiry(pem: str | None) -> float | None:
    """When a PEM certificate expires (its notAfter, RFC 5280 section 4.1.2.5) as a Unix time; None when
    it cannot be told. The ssl module parses no certificate it does not serve, so the DER is walked here:
    Certificate -> TBSCertificate -> [version], serialNumber, signature, issuer, validity -> notAfter."""
    if not pem:
        return None
    try:
        der = ssl.PEM_cert_to_DER_cert(pem)
        tbs, _ = _der_inside(der, 0)  # into Certificate
        pos, _ = _der_inside(der, tbs)  # into TBSCertificate
        if der[pos] == 0xA0:  # the optional explicit [0] version
            pos = _der_next(der, pos)
        for _ in range(3):  # serialNumber, signature, issuer
            pos = _der_next(der, pos)
        validity, _ = _der_inside(der, pos)
        not_after = _der_next(der, validity)
        start, end = _der_inside(der, not_after)
        return _der_time(der[not_after], der[start:end].decode("ascii"))
    except (ValueError, IndexError):
        return None


def _der_inside(der: bytes, pos: int) -> tuple[int, int]:
    """Where the content of the DER element at `pos` starts and ends (definite lengths, as DER has)."""
    length = der[pos + 1]
    start = pos + 2
    if length & 0x80:
        count = length & 0x7F
        length = int.from_bytes(der[start : start + count], "big")
        start += count
    return start, start + length


def _der_next(der: bytes, pos: int) -> int:
    return _der_inside(der, pos)[1]


def _der_time(tag: int, text: str) -> float:
    """A UTCTime (tag 0x17, two-digit year: 50-99 is 19xx) or GeneralizedTime (0x18), in UTC ("Z")."""
    if tag == 0x17:
        year = int(text[:2])
        text = str(1900 + year if year >= 50 else 2000 + year) + text[2:]
    elif tag != 0x18:
        raise ValueError(f"not a time: tag {tag:#x}")
    stamp = datetime.datetime.strptime(text, "%Y%m%d%H%M%SZ").replace(tzinfo=datetime.timezone.utc)
    return stamp.timestamp()
