"""A status that is not three digits (RFC 9112 section 4) never reaches the wire: the app's `send` raises
and the request is answered as an app error, a 500, over HTTP/1.1 and HTTP/2 alike."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest

from tests.support.live_server import LiveServer
from tests.support.waiting import WAIT

BAD_STATUSES = (42, 1000, -200)


async def app(scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
    """Answers with the status its path names: /42, /1000, /-200, /204 ..."""
    if scope["type"] != "http":
        return
    status = int(scope["path"][1:])
    await send({"type": "http.response.start", "status": status, "headers": []})
    await send({"type": "http.response.body", "body": b""})


@pytest.mark.parametrize("status", BAD_STATUSES)
def test_a_status_outside_100_to_999_is_answered_500(running_server: Callable[..., LiveServer], status: int) -> None:
    live = running_server(app)
    with httpx.Client(timeout=WAIT) as client:
        response = client.get(f"http://127.0.0.1:{live.port}/{status}")
        assert response.status_code == 500
        assert response.content == b"Internal Server Error"
        assert client.get(f"http://127.0.0.1:{live.port}/204").status_code == 204  # the server carries on


@pytest.mark.parametrize("status", BAD_STATUSES)
def test_over_http2_too(serve_app: Callable[..., LiveServer], status: int) -> None:
    live = serve_app(app)
    with httpx.Client(http1=False, http2=True, timeout=WAIT) as client:  # prior knowledge (h2c)
        response = client.get(f"http://127.0.0.1:{live.port}/{status}")
        assert response.http_version == "HTTP/2"
        assert response.status_code == 500
        assert client.get(f"http://127.0.0.1:{live.port}/299").status_code == 299
