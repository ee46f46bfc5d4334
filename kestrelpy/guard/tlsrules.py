"""Facts in, findings out, for the certificate of the TLS endpoints. Pure: `TlsFacts` (tlsprobe.py) in.

  =====================  ========  =====================================================================
  code                   severity  when
  =====================  ========  =====================================================================
  KP-TLS-FILE-MISSING    error     --ssl-certfile or --ssl-keyfile does not exist
  KP-TLS-FILE-UNREADABLE error     it exists but the user the server runs as may not read it
  KP-TLS-KEY-PASSWORD    error     the key is encrypted and no password, or the wrong one, was given
  KP-TLS-KEY-MISMATCH    error     the key belongs to no certificate of the file
  KP-TLS-UNLOADABLE      error     anything else that stops the files from loading (not PEM, ...)
  KP-TLS-CHAIN-ORDER     error     the key's certificate is not first, or one is not signed by the next
  KP-TLS-EXPIRED         error     a certificate's notAfter is past (RFC 5280 section 4.1.2.5)
  KP-TLS-NOT-YET-VALID   error     a certificate's notBefore is still to come
  KP-TLS-EXPIRING        warning   a certificate expires within 14 days
  KP-TLS-NAME-MISMATCH   warning   the leaf's subjectAltName does not cover the endpoint's host
                                   (RFC 9110 section 4.3.4, RFC 6125); not for wildcard binds
  KP-TLS-SELF-SIGNED     info      the leaf is self-signed
  =====================  ========  =====================================================================

A certificate may be shared by several TLS endpoints (the --ssl-* one by all those without one of their
own), so the findings about its files are reported once, on the first endpoint it serves; the name rule runs
for each TCP one. The guard calls this once per certificate, with the endpoints it serves. A missing or
unreadable file stops the rules there: nothing else about it can be known.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any

import kestrelpy.guard.messages as m
from kestrelpy.endpoints import Endpoint, TcpEndpoint
from kestrelpy.guard.facts import TlsCertificate, TlsFacts, TlsFile
from kestrelpy.guard.verdict import Finding, build

EXPIRY_WARNING_DAYS = 14
_DAY = 86400.0
# Hosts that mean "every address": no one connects to them by that name.
WILDCARD_HOSTS = frozenset({"", "*", "+", "0.0.0.0", "::"})


def tls_findings(
    endpoints: Sequence[Endpoint], tls: TlsFacts, euid: int | None = None, user: str | None = None
) -> list[Finding]:
    secure = [e for e in endpoints if e.tls]
    if not secure:
        return []
    first = secure[0]
    blocked = _file_findings(first, tls, euid, user)
    if blocked:
        return blocked
    findings = _key_findings(first, tls)
    if not tls.certificates:
        return findings
    findings += _chain_findings(first, tls)
    findings += _validity_findings(first, tls)
    for endpoint in secure:
        if isinstance(endpoint, TcpEndpoint):
            findings += _name_findings(endpoint, tls)
    leaf = _leaf(tls)
    if leaf.self_signed:
        findings.append(build("tls_self_signed", first, "info", subject=leaf.subject, certfile=tls.certfile))
    return findings


def _who(euid: int | None, user: str | None) -> str:
    if euid is None:
        return "this user"
    return f"uid {euid} ({user})" if user else f"uid {euid}"


def _file_findings(endpoint: Endpoint, tls: TlsFacts, euid: int | None, user: str | None) -> list[Finding]:
    findings: list[Finding] = []
    who = _who(euid, user)
    name = user or (str(euid) if euid is not None else "USER")
    for f in tls.files:
        if f.exists is False:
            setting = _example_setting(f.role, tls.origin)
            findings.append(build("tls_file_missing", endpoint, "error", role=f.role, path=f.path, setting=setting))
        elif f.exists is None:
            findings.append(
                build("tls_file_unreachable", endpoint, "error", role=f.role, path=f.path, who=who, user=name)
            )
        elif not f.readable:
            findings.append(_unreadable(endpoint, f, who, name))
    return findings


def _example_setting(role: str, origin: str) -> str:
    """How a user sets that file, with Let's Encrypt's path as the example."""
    key = role.endswith(("--ssl-keyfile", "key_path"))
    path = f"/etc/letsencrypt/live/NAME/{'privkey.pem' if key else 'fullchain.pem'}"
    if origin:
        return f'`{"key_path" if key else "path"} = "{path}"` in the certificate of [{origin}]'
    return f"`{role} {path}`"


def _unreadable(endpoint: Endpoint, f: TlsFile, who: str, user: str) -> Finding:
    owner = f.owner or (str(f.uid) if f.uid is not None else "?")
    group = f.group or (str(f.gid) if f.gid is not None else "?")
    mode = f.mode if f.mode is not None else 0
    fact = m.FACT_TLS_FILE.format(role=f.role, path=f.path, owner=owner, group=group, mode=mode, who=who)
    return build(
        "tls_file_unreadable",
        endpoint,
        "error",
        [fact],
        role=f.role,
        path=f.path,
        who=who,
        user=user,
        owner=owner,
        group=group,
        mode=mode,
    )


def _key_findings(endpoint: Endpoint, tls: TlsFacts) -> list[Finding]:
    keyfile = tls.keyfile or tls.certfile
    own = "endpoint_" if tls.origin else ""  # an endpoint's password comes from its password_env
    if tls.key == "no_password":
        return [build(f"tls_{own}key_no_password", endpoint, "error", keyfile=keyfile, origin=tls.origin)]
    if tls.key == "wrong_password":
        return [build(f"tls_{own}key_wrong_password", endpoint, "error", keyfile=keyfile, origin=tls.origin)]
    if tls.key == "mismatch":
        return [build("tls_key_mismatch", endpoint, "error", keyfile=keyfile, certfile=tls.certfile)]
    if tls.key == "unloadable" or (tls.error and not tls.certificates):
        files = tls.certfile + (f" and {tls.keyfile}" if tls.keyfile else "")
        return [build("tls_unloadable", endpoint, "error", files=files, error=tls.error or "unknown reason")]
    return []


def _leaf(tls: TlsFacts) -> TlsCertificate:
    index = tls.key_index if tls.key_index is not None else 0
    return tls.certificates[index]


def _chain_findings(endpoint: Endpoint, tls: TlsFacts) -> list[Finding]:
    certs = tls.certificates
    if tls.key_index:  # the key's certificate is not the first one
        leaf = certs[tls.key_index]
        return [
            build(
                "tls_leaf_not_first",
                endpoint,
                "error",
                _cert_facts(tls),
                subject=leaf.subject,
                position=tls.key_index + 1,
                certfile=tls.certfile,
            )
        ]
    for i, cert in enumerate(certs[:-1]):
        if cert.issued_by_next is False:
            return [
                build(
                    "tls_chain_order",
                    endpoint,
                    "error",
                    _cert_facts(tls),
                    certfile=tls.certfile,
                    position=i + 1,
                    subject=cert.subject,
                    next_subject=certs[i + 1].subject,
                )
            ]
    return []


def _cert_facts(tls: TlsFacts) -> list[str]:
    return [
        m.FACT_TLS_CERT.format(
            position=i + 1, subject=c.subject, issuer=c.issuer, start=_date(c.not_before), end=_date(c.not_after)
        )
        for i, c in enumerate(tls.certificates)
    ]


def _date(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, tz=timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def _validity_findings(endpoint: Endpoint, tls: TlsFacts) -> list[Finding]:
    findings: list[Finding] = []
    now = tls.now
    for cert in tls.certificates:
        fields: dict[str, Any] = {"subject": cert.subject, "certfile": tls.certfile}
        if now > cert.not_after:
            days = int((now - cert.not_after) // _DAY)
            findings.append(build("tls_expired", endpoint, "error", date=_date(cert.not_after), days=days, **fields))
        elif now < cert.not_before:
            findings.append(build("tls_not_yet_valid", endpoint, "error", date=_date(cert.not_before), **fields))
        elif cert.not_after - now < EXPIRY_WARNING_DAYS * _DAY:
            days = int((cert.not_after - now) // _DAY)
            findings.append(build("tls_expiring", endpoint, "warning", date=_date(cert.not_after), days=days, **fields))
    return findings


def _name_findings(endpoint: TcpEndpoint, tls: TlsFacts) -> list[Finding]:
    host = endpoint.host.strip("[]")
    if host.lower() in WILDCARD_HOSTS:
        return []
    leaf = _leaf(tls)
    if covers(leaf, host):
        return []
    names = ", ".join([*leaf.dns_names, *leaf.ip_addresses]) or "no subjectAltName at all"
    host_port = f"[{host}]:{endpoint.port}" if ":" in host else f"{host}:{endpoint.port}"
    return [
        build(
            "tls_name_mismatch",
            endpoint,
            "warning",
            [m.FACT_TLS_NAMES.format(names=names)],
            certfile=tls.certfile,
            host=host,
            host_port=host_port,
            names=names,
        )
    ]


def covers(cert: TlsCertificate, host: str) -> bool:
    """Whether the certificate's subjectAltName covers `host` (RFC 6125 section 6.4: an IP literal against
    the iPAddress entries, a name case-insensitively against the dNSName ones, a `*` only as the whole
    left-most label and matching exactly one label)."""
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        address = None
    if address is not None:
        return any(_same_ip(address, ip) for ip in cert.ip_addresses)
    name = host.rstrip(".").lower()
    for pattern in (p.rstrip(".").lower() for p in cert.dns_names):
        if pattern == name:
            return True
        if pattern.startswith("*.") and "." in name and name.split(".", 1)[1] == pattern[2:]:
            return True
    return False


def _same_ip(address: ipaddress.IPv4Address | ipaddress.IPv6Address, text: str) -> bool:
    try:
        return ipaddress.ip_address(text) == address
    except ValueError:
        return False
