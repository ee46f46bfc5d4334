"""The startup guard: why a bind would fail, per operating system, and exactly how to fix it.

    predict(endpoints)        before binding: findings to log as warnings (the bind is still tried)
    explain(error, endpoint)  after a failed bind: one finding whose render() is the message to print
    check(endpoints)          `kestrelpy check`: every probe, facts and findings together

Probes read the host only through a `HostIO` (runner.py); pass `probe=` to feed recorded answers.
None of these functions raises: a probe that fails leaves a fact unknown, never the server unstarted.
"""

from __future__ import annotations

from collections.abc import Sequence

from kestrelpy.endpoints import Endpoint
from kestrelpy.guard.collect import gather
from kestrelpy.guard.facts import HostFacts
from kestrelpy.guard.runner import FixtureIO, HostIO, RecordingIO, SystemIO, default_io
from kestrelpy.guard.verdict import (
    BindFailure,
    FailureKind,
    Finding,
    Report,
    build,
    classify,
    explain_failure,
    predict_findings,
)

__all__ = [
    "BindFailure",
    "FailureKind",
    "Finding",
    "FixtureIO",
    "HostIO",
    "RecordingIO",
    "Report",
    "SystemIO",
    "check",
    "classify",
    "explain",
    "predict",
]


def _pick(probe: HostIO | None, runner: HostIO | None) -> HostIO:
    return probe or runner or default_io()


def predict(
    endpoints: Sequence[Endpoint],
    *,
    probe: HostIO | None = None,
    runner: HostIO | None = None,
    reuse_port: bool = False,
    thorough: bool = False,
) -> list[Finding]:
    """Findings for binds that would fail or misbehave. Cheap by default (see collect.py); never raises."""
    try:
        io = _pick(probe, runner)
        facts = gather(endpoints, io, thorough=thorough)
        return predict_findings(endpoints, facts, reuse_port=reuse_port)
    except Exception:  # the guard must never be the reason a server does not start
        return []


def explain(
    error: BaseException,
    endpoint: Endpoint,
    *,
    probe: HostIO | None = None,
    runner: HostIO | None = None,
) -> Finding:
    """Why binding `endpoint` failed with `error`, with remedies. Re-runs the probes that failure needs."""
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
) -> Report:
    """Every probe for `kestrelpy check`: the facts and the findings they lead to."""
    io = _pick(probe, runner)
    facts = gather(endpoints, io, thorough=True)
    return Report(facts, tuple(predict_findings(endpoints, facts, reuse_port=reuse_port)))
