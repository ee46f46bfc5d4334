"""Errors a user can cause. Library code raises these; only the CLI turns them into a message and exit code."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class KestrelpyError(Exception):
    """Base of every user-caused failure; `exit_code` is what the CLI exits with."""

    exit_code = 1


class ConfigError(KestrelpyError):
    """A flag, environment variable or config file value is invalid."""

    exit_code = 2


class AppImportError(KestrelpyError):
    """The application could not be found, imported or built."""

    exit_code = 2


class LifespanStartupError(KestrelpyError):
    """The application's lifespan startup failed; the server does not serve."""

    exit_code = 3


class BindError(KestrelpyError):
    """A listening socket could not be bound. `findings` are the startup guard's explanation."""

    exit_code = 1

    def __init__(self, message: str, findings: Sequence[Any] = ()) -> None:
        super().__init__(message)
        self.findings = tuple(findings)
