from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "guard"


@pytest.fixture
def load() -> Callable[[str], str]:
    """Text of a recorded probe input under tests/fixtures/guard/."""

    def _load(name: str) -> str:
        return (FIXTURES / name).read_text(encoding="utf-8")

    return _load
