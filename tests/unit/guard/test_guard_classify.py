"""Classifying real exception shapes (per OS and Python version) into failure kinds."""

from __future__ import annotations

import json
import socket
import sys
from typing import Any

import pytest

from kestrelpy.guard.verdict import FailureKind, classify


def _rows() -> list[dict[str, Any]]:
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "fixtures" / "guard" / "python" / "errors.json"
    rows: list[dict[str, Any]] = json.loads(path.read_text(encoding="utf-8"))
    return rows


def _make(row: dict[str, Any]) -> BaseException:
    if row["type"] == "gaierror":
        return socket.gaierror(row["errno"], row["str"])
    if row["errno"] is None:
        return OSError(None, row["str"])
    # OSError(13, ...) yields PermissionError by itself; the message is stored as strerror
    exc = OSError(row["errno"], row["str"])
    if row["winerror"] is not None:
        exc.winerror = row["winerror"]  # type: ignore[attr-defined]  # the Windows-only attribute
    return exc


@pytest.mark.parametrize("row", _rows(), ids=lambda r: f"{r['os']}-{r['python']}-{r['errno']}-{r['kind']}")
def test_every_recorded_error_shape(row: dict[str, Any]) -> None:
    failure = classify(_make(row), row["os"])
    assert failure.kind.value == row["kind"]


def test_errno_none_with_python_313_message_is_not_available() -> None:
    exc = OSError(None, "could not bind on any address out of [('192.0.2.1', 18081)]")
    assert exc.errno is None
    assert classify(exc, "linux").kind is FailureKind.NOT_AVAILABLE


def test_winerror_recovered_from_the_313_message_after_asyncio_dropped_the_attribute() -> None:
    exc = OSError(13, "error while attempting to bind on address ('0.0.0.0', 8080): [winerror 10013] an attempt")
    failure = classify(exc, "win32")
    assert (failure.kind, failure.winerror) == (FailureKind.DENIED, 10013)


def test_same_errno_means_different_things_per_os() -> None:
    assert classify(OSError(48, "x"), "darwin").kind is FailureKind.IN_USE
    assert classify(OSError(48, "x"), "linux").kind is FailureKind.OTHER
    assert classify(OSError(98, "x"), "linux").kind is FailureKind.IN_USE


def test_real_exceptions_from_this_host() -> None:
    with socket.socket() as a, socket.socket() as b:
        a.bind(("127.0.0.1", 0))
        a.listen()
        with pytest.raises(OSError) as info:
            b.bind(a.getsockname())
    assert classify(info.value, sys.platform).kind is FailureKind.IN_USE
