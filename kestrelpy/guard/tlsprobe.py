"""The TLS probe: what the --ssl-* files hold, as `TlsFacts` for the rules in tlsrules.py.

Files are read through the guard's `HostIO` (PEM is text) and stat'ed through `HostIO.file_access`, so the
rules can be fed recorded answers. With `cryptography` importable every certificate is parsed (validity,
names, who signed whom) and the key compared with them; without it only the ssl module looks, through the
same `load_cert_chain` the server will call on the real files, and a debug line says that deeper checks
need `cryptography`.
"""

from __future__ import annotations

import logging
import re
import ssl
import time
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from kestrelpy.guard.facts import TlsCertificate, TlsFacts, TlsKeyState
from kestrelpy.guard.runner import HostIO

if TYPE_CHECKING:
    from kestrelpy.config import TlsOptions

logger = logging.getLogger("kestrelpy.guard")

_KEY_BLOCK = re.compile(r"-----BEGIN (?:[A-Z]+ )?PRIVATE KEY-----.*?-----END (?:[A-Z]+ )?PRIVATE KEY-----", re.S)


def collect_tls(io: HostIO, options: TlsOptions, now: float | None = None) -> TlsFacts:
    """The facts about --ssl-certfile and --ssl-keyfile (or an endpoint's certificate: `options.origin`
    names it, and the files' roles are its keys); never raises."""
    when = time.time() if now is None else now
    certfile, keyfile = options.ssl_certfile, options.ssl_keyfile
    cert_role, key_role = (
        (f"[{options.origin}] certificate.path", f"[{options.origin}] certificate.key_path")
        if options.origin
        else ("--ssl-certfile", "--ssl-keyfile")
    )
    files = [io.file_access(certfile, cert_role)]
    if keyfile:
        files.append(io.file_access(keyfile, key_role))
    base = TlsFacts(certfile, keyfile, tuple(files), now=when, origin=options.origin)
    if not all(f.exists and f.readable for f in files):
        return base  # the file rules say everything that can be said
    cert_text = io.read_text(certfile) or ""
    key_text = io.read_text(keyfile) if keyfile else cert_text
    try:
        import cryptography  # noqa: F401
    except ImportError:
        logger.debug("TLS checks: install `cryptography` for validity, names, chain order and key checks")
        return _ssl_only(base, options)
    try:
        return _parsed(base, cert_text, key_text or "", options.ssl_keyfile_password)
    except Exception as exc:  # a parser surprise must not hide the file-level facts
        return replace(base, error=str(exc) or type(exc).__name__)


def _parsed(base: TlsFacts, cert_text: str, key_text: str, password: str) -> TlsFacts:
    from cryptography import x509

    try:
        certs = x509.load_pem_x509_certificates(cert_text.encode("ascii", "replace"))
    except ValueError as exc:
        return replace(base, key="unknown", error=f"no PEM certificate could be read ({exc})", deep=True)
    key, key_state, error = _load_key(key_text, password)
    summaries = tuple(_summary(cert, certs[i + 1] if i + 1 < len(certs) else None) for i, cert in enumerate(certs))
    index: int | None = None
    if key is not None:
        index = _matching(key, certs)
        key_state = "ok" if index is not None else "mismatch"
    return replace(base, certificates=summaries, key=key_state, key_index=index, error=error, deep=True)


def _load_key(text: str, password: str) -> tuple[Any, TlsKeyState, str | None]:
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    match = _KEY_BLOCK.search(text)
    if match is None:
        return None, "unloadable", "no PEM private key found"
    data = match.group(0).encode("ascii", "replace")
    secret = password.encode() if password else None
    try:
        return load_pem_private_key(data, secret), "ok", None
    except TypeError:  # encrypted without a password given, or a password for a key that is not encrypted
        if secret is None:
            return None, "no_password", None
        try:
            return load_pem_private_key(data, None), "ok", None
        except (TypeError, ValueError) as exc:
            return None, "unloadable", str(exc)
    except ValueError as exc:
        if secret is not None and b"ENCRYPTED" in data:
            return None, "wrong_password", None
        return None, "unloadable", str(exc)
    except Exception as exc:  # an unsupported key type
        return None, "unloadable", str(exc) or type(exc).__name__


def _public(obj: Any) -> bytes:
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    return bytes(obj.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo))


def _matching(key: Any, certs: list[Any]) -> int | None:
    wanted = _public(key.public_key())
    for i, cert in enumerate(certs):
        if _public(cert.public_key()) == wanted:
            return i
    return None


def _signed_by(cert: Any, issuer: Any) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)  # issuer name and signature (cryptography 40+)
    except AttributeError:
        return bool(cert.issuer == issuer.subject)
    except Exception:
        return False
    return True


def _summary(cert: Any, following: Any) -> TlsCertificate:
    from cryptography import x509

    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        dns = tuple(str(n) for n in san.get_values_for_type(x509.DNSName))
        ips = tuple(str(a) for a in san.get_values_for_type(x509.IPAddress))
    except x509.ExtensionNotFound:
        dns, ips = (), ()
    try:
        is_ca = bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        is_ca = False
    before = getattr(cert, "not_valid_before_utc", None) or cert.not_valid_before
    after = getattr(cert, "not_valid_after_utc", None) or cert.not_valid_after
    return TlsCertificate(
        subject=cert.subject.rfc4514_string(),
        issuer=cert.issuer.rfc4514_string(),
        not_before=_epoch(before),
        not_after=_epoch(after),
        dns_names=dns,
        ip_addresses=ips,
        is_ca=is_ca,
        self_signed=cert.issuer == cert.subject and _signed_by(cert, cert),
        issued_by_next=_signed_by(cert, following) if following is not None else None,
    )


def _epoch(moment: Any) -> float:
    from datetime import timezone

    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return float(moment.timestamp())


def _ssl_only(base: TlsFacts, options: TlsOptions) -> TlsFacts:
    """What `load_cert_chain` says about the real files, told apart by OpenSSL's reason."""
    asked: list[bool] = []

    def password() -> str:
        asked.append(True)
        if not options.ssl_keyfile_password:
            raise ValueError("no password")
        return options.ssl_keyfile_password

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(options.ssl_certfile, options.ssl_keyfile or None, password=password)
    except (OSError, ssl.SSLError, ValueError) as exc:
        reason = str(getattr(exc, "reason", "") or exc)
        state: TlsKeyState = "unloadable"
        if asked and not options.ssl_keyfile_password:
            state = "no_password"
        elif "KEY_VALUES_MISMATCH" in reason.upper():
            state = "mismatch"
        elif asked and "DECRYPT" in reason.upper():
            state = "wrong_password"
        return replace(base, key=state, error=reason)
    return replace(base, key="ok")
