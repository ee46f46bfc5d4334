"""Fixtures of the supervisor tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.supervised import Supervised, stop


@pytest.fixture
def servers() -> Iterator[list[Supervised]]:
    """The supervised kestrelpy processes a test starts (append them), killed at teardown."""
    started: list[Supervised] = []
    yield started
    for server in started:
        stop(server.proc)
