"""The startup guard: why a bind would fail, per operating system, and exactly how to fix it.

    predict(endpoints)        before binding: findings to log as warnings (the bind is still tried)
    explain(error, endpoint)  after a failed bind: one finding whose render() is the message to print
    check(endpoints)          `kestrelpy check`: every probe, facts and findings together

Probes read the host only through a `HostIO` (runner.py); pass `probe=` to feed recorded answers.
None of these functions raises: a probe that fails leaves a fact unknown, never the server unstarted.

Every server start imports this package, so it loads almost nothing itself: `predict` first asks the
screen (screen.py, a few cheap reads), and only when that sees something, or when a bind failed, or for
`kestrelpy check`, are the probes, the rules and the message catalogue loaded.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from kestrelpy.endpoints import Endpoint

if TYPE_CHECKING:
    from kestrelpy.config import TlsOptions
    from kestrelpy.guard.facts import TlsFacts
    from kestrelpy.guard.runner import FixtureIO, HostIO, RecordingIO, SystemIO
    from kestrelpy.guard.verdict import BindFailure, FailureKind, Finding, Report, classify

__all__ = [
    "BindFailure",
    "FailureKind",
    "Finding",
    "FixtureIO",
    "HostIO",
    "RecordingIO",
    "Report",
    "SystemIO",
    "certificate_error",
    "check",
    "classify",
    "explain",
    "predict",
]

# Names this package re-exports, loaded on first use.
_LAZY = {
    "BindFailure": "kestrelpy.guard.verdict",
    "FailureKind": "kestrelpy.guard.verdict",
    "Finding": "kestrelpy.guard.verdict",
    "Report": "kestrelpy.guard.verdict",
    "classify": "kestrelpy.guard.verdict",
    "FixtureIO": "kestrelpy.guard.runner",
    "HostIO": "kestrelpy.guard.runner",
    "RecordingIO": "kestrelpy.guard.runner",
    "SystemIO": "kestrelpy.guard.runner",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


def _pick(probe: HostIO | None, runner: HostIO | None) -> HostIO:
    if probe is not None:
        return probe
    if runner is not None:
        return runner
    from kestrelpy.guard.system import SystemIO

    return SystemIO()


def certificate_error(findings: Sequence[Finding]) -> Finding | None:
    """The first finding that makes the certificate unusable: the server stops on it before any bind."""
    return next((f for f in findings if f.code.startswith("KP-TLS-") and f.severity == "error"), None)


def predict(
    endpoints: Sequence[Endpoint],
    *,
    probe: HostIO | None = None,
    runner: HostIO | None = None,
    reuse_port: bool = False,
    thorough: bool = False,
    tls: TlsOptions | None = None,
) -> list[Finding]:
    """Findings for binds that would fail or misbehave, the certificate's (`tls`, for the TLS endpoints)
    first. Cheap by default (see screen.py); never raises."""
    try:
        io = _pick(probe, runner)
        certificate = _certificate_findings(endpoints, io, tls)
        if not thorough:
            from kestrelpy.guard import screen

            try:
                if screen.clear(endpoints, io):
                    return certificate
            except Exception:  # the screen is only a shortcut; the full probes below decide
                pass
        from kestrelpy.guard.collect import gather
        from kestrelpy.guard.verdict import predict_findings

        facts = gather(endpoints, io, thorough=thorough)
        return certificate + predict_findings(endpoints, facts, reuse_port=reuse_port)
    except Exception:  # the guard must never be the reason a server does not start
        return []


def _tls_groups(
    endpoints: Sequence[Endpoint], io: HostIO, tls: TlsOptions | None
) -> list[tuple[list[Endpoint], TlsFacts]]:
    """The TLS endpoints grouped by the certificate they are served (the --ssl-* one, or an endpoint's own:
    TlsOptions.for_endpoint), each group with the facts about its files."""
    if tls is None:
        return []
    groups: dict[TlsOptions, list[Endpoint]] = {}
    for endpoint in endpoints:
        settings = tls.for_endpoint(endpoint)
        if endpoint.tls and settings.ssl_certfile:
            groups.setdefault(settings, []).append(endpoint)
    if not groups:
        return []
    from kestrelpy.guard.tlsprobe import collect_tls

    return [(group, collect_tls(io, settings)) for settings, group in groups.items()]


def _tls_findings(
    groups: Sequence[tuple[list[Endpoint], TlsFacts]], euid: int | None, user: str | None
) -> list[Finding]:
    from kestrelpy.guard.tlsrules import tls_findings

    return [finding for group, facts in groups for finding in tls_findings(group, facts, euid, user)]


def _certificate_findings(endpoints: Sequence[Endpoint], io: HostIO, tls: TlsOptions | None) -> list[Finding]:
    groups = _tls_groups(endpoints, io, tls)
    if not groups:
        return []
    euid = io.euid()
    return _tls_findings(groups, euid, io.user_name(euid) if euid is not None else None)


def explain(
    error: BaseException,
    endpoint: Endpoint,
    *,
    probe: HostIO | None = None,
    runner: HostIO | None = None,
) -> Finding:
    """Why binding `endpoint` failed with `error`, with remedies. Re-runs the probes that failure needs."""
    from kestrelpy.guard.collect import gather
    from kestrelpy.guard.facts import HostFacts
    from kestrelpy.guard.verdict import build, classify, explain_failure

    io = _pick(probe, runner)
    try:
        platform = io.platform
    except Exception:
        platform = "unknown"
    failure = classify(error, platform)
    try:
        facts = gather([endpoint], io, failure=failure)
    except Exception:
        facts = HostFacts(platform=platform, notes=("probes failed",))
    try:
        return explain_failure(failure, endpoint, facts)
    except Exception:
        return build("bind_failed", endpoint, "error", explaining=True, error=failure.text)


def check(
    endpoints: Sequence[Endpoint],
    *,
    probe: HostIO | None = None,
    runner: HostIO | None = None,
    reuse_port: bool = False,
    tls: TlsOptions | None = None,
) -> Report:
    """Every probe for `kestrelpy check`: the facts and the findings they lead to."""
    import dataclasses

    from kestrelpy.guard.collect import gather
    from kestrelpy.guard.verdict import Report, predict_findings

    io = _pick(probe, runner)
    facts = gather(endpoints, io, thorough=True)
    groups = _tls_groups(endpoints, io, tls)
    findings = predict_findings(endpoints, facts, reuse_port=reuse_port)
    if groups:
        # The facts hold the first certificate's files (the --ssl-* one when any endpoint uses it); the
        # findings cover every endpoint's.
        facts = dataclasses.replace(facts, tls=groups[0][1])
        findings = _tls_findings(groups, facts.euid, facts.user) + findings
    return Report(facts, tuple(findings))
