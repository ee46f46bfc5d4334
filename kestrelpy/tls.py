"""TLS for the endpoints that ask for it (see endpoints.py): one server-side ssl.SSLContext built from the
--ssl-* options, and what the ASGI TLS extension (asgiref specs/tls.rst, version 0.2) reports about each
connection.

The context: TLS 1.2 or 1.3 at least, the ssl module's secure cipher default unless --ssl-ciphers names
others, no TLS-level compression (CRIME), no renegotiation where OpenSSL offers the switch, client
certificates verified against --ssl-ca-certs as --ssl-cert-reqs says. A file that cannot be read or a key
that does not match ends in one ConfigError line, before anything is bound.

The extension is computed once per connection, when its handshake is complete, from the transport's
`ssl_object`:
- `server_cert`: the first certificate of --ssl-certfile, as PEM (read once with the context);
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

import re
import ssl
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from kestrelpy.errors import ConfigError

if TYPE_CHECKING:
    from kestrelpy.config import TlsOptions

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


class ServerTls:
    """A server's TLS settings, built once per process: the context every TLS listener uses, the handshake
    timeout, and what `describe` needs to fill the ASGI TLS extension of a connection."""

    __slots__ = ("_cipher_suites", "context", "handshake_timeout", "server_cert")

    def __init__(self, context: ssl.SSLContext, server_cert: str | None, handshake_timeout: float) -> None:
        self.context = context
        self.server_cert = server_cert
        self.handshake_timeout = handshake_timeout
        self._cipher_suites = cipher_suite_numbers(context.get_ciphers())

    def describe(self, ssl_object: Any) -> dict[str, Any]:
        """The ASGI TLS extension for one connection whose handshake is complete."""
        chain = client_chain(ssl_object)
        cipher = ssl_object.cipher() if ssl_object is not None else None
        peer = ssl_object.getpeercert() if chain else None
        return {
            "server_cert": self.server_cert,
            "client_cert_chain": chain,
            "client_cert_name": rfc4514_name(peer.get("subject", ())) if peer else None,
            "client_cert_error": None,
            "tls_version": _VERSION_NUMBERS.get(ssl_object.version()) if ssl_object is not None else None,
            "cipher_suite": self._cipher_suites.get(cipher[0]) if cipher else None,
        }


def build_tls(options: TlsOptions) -> ServerTls:
    """The server's TLS settings from the --ssl-* options; a ConfigError names the file that is wrong."""
    return ServerTls(build_context(options), first_certificate(options.ssl_certfile), options.tls_handshake_timeout)


def build_context(options: TlsOptions) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)  # already carries the ssl module's cipher default
    context.minimum_version = _MIN_VERSIONS[options.ssl_min_version]
    context.options |= ssl.OP_NO_COMPRESSION | getattr(ssl, "OP_NO_RENEGOTIATION", 0)
    if options.ssl_ciphers:
        try:
            context.set_ciphers(options.ssl_ciphers)
        except ssl.SSLError:
            raise ConfigError(f"--ssl-ciphers {options.ssl_ciphers!r}: OpenSSL knows none of these ciphers") from None
    _load_certificate(context, options)
    if options.ssl_cert_reqs != "none":
        try:
            context.load_verify_locations(cafile=options.ssl_ca_certs)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"--ssl-ca-certs {options.ssl_ca_certs}: {_reason(exc)}") from None
        context.verify_mode = _CERT_REQS[options.ssl_cert_reqs]
    return context


def _load_certificate(context: ssl.SSLContext, options: TlsOptions) -> None:
    certfile, keyfile = options.ssl_certfile, options.ssl_keyfile or None
    password = options.ssl_keyfile_password

    def ask_password() -> str:
        # Without this callback OpenSSL would prompt on the terminal for an encrypted key's password.
        if not password:
            raise ConfigError(
                f"{keyfile or certfile}: the private key is encrypted; give its password in "
                "KESTRELPY_SSL_KEYFILE_PASSWORD (or --ssl-keyfile-password)"
            )
        return password

    try:
        context.load_cert_chain(certfile, keyfile, password=ask_password)
    except FileNotFoundError as exc:
        flag = "--ssl-keyfile" if keyfile and exc.filename == keyfile else "--ssl-certfile"
        raise ConfigError(f"{flag} {exc.filename or certfile}: no such file") from None
    except (OSError, ssl.SSLError) as exc:
        files = f"--ssl-certfile {certfile}" + (f" with --ssl-keyfile {keyfile}" if keyfile else "")
        raise ConfigError(
            f"{files}: cannot load the certificate and its key ({_reason(exc)}); both must be PEM, the key must "
            "belong to the certificate, and an encrypted key needs its right password"
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
