"""How long tests wait, and polling for a condition that another thread or process makes true."""

from __future__ import annotations

import time
from collections.abc import Callable

# How long a test waits for anything that should happen promptly (a response, a close, a start).
WAIT = 10.0


def wait_until(condition: Callable[[], bool], timeout: float = WAIT, interval: float = 0.02) -> bool:
    """Poll `condition` until it holds (True) or `timeout` seconds pass (False, after one last look)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return condition()
