"""The access log over real sockets: one line per finished exchange, in each --access-log-format."""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable
from typing import Any

import pytest

from kestrelpy.config import Config
from kestrelpy.errors import ConfigError
from tests.support.manual_clock import ManualClock
from tests.support.waiting import WAIT

Start = Callable[..., Any]

# nginx's `combined`: $remote_addr - $remote_user [$time_local] "$request" $status $body_bytes_sent
# "$http_referer" "$http_user_agent", each quoted value with `"` escaped (so [^"]* holds).
COMBINED = re.compile(
    r"^(?P<addr>\S+) - (?P<user>\S+) \[(?P<time>\d{2}/[A-Z][a-z]{2}/\d{4}:\d{2}:\d{2}:\d{2} [+-]\d{4})\] "
    r'"(?P<request>[^"]*)" (?P<status>\d{3}) (?P<bytes>\d+) "(?P<referer>[^"]*)" "(?P<agent>[^"]*)"$'
)
COMMON = re.compile(COMBINED.pattern.removesuffix(r' "(?P<referer>[^"]*)" "(?P<agent>[^"]*)"$') + "$")
NGINX_COMBINED_LINE = '203.0.113.7 - - [03/Dec/2026:09:19:50 +0000] "GET /index.html HTTP/1.1" 200 612 "-" "curl/8.5.0"'
JSON_KEYS = {
    "time",
    "client",
    "method",
    "path",
    "query",
    "protocol",
    "status",
    "bytes",
    "duration_ms",
    "referer",
    "user_agent",
}


async def hello_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"x-trace", b"t-42")]})
    await send({"type": "http.response.body", "body": b"hello", "more_body": True})
    await send({"type": "http.response.body", "body": b" world"})


async def fails_after_start(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200})
    await send({"type": "http.response.body", "body": b"partial", "more_body": True})
    raise RuntimeError("crash mid-body")


async def waits_for_the_client_to_leave(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200})
    await send({"type": "http.response.body", "body": b"partial", "more_body": True})
    while (await receive())["type"] != "http.disconnect":
        pass


def access_lines(caplog: pytest.LogCaptureFixture, count: int = 1, wait: float = 5.0) -> list[str]:
    """The access log so far, waiting for `count` lines: an aborted exchange is logged once the app ends,
    which may be just after the client sees the connection go."""
    deadline = time.monotonic() + wait
    while True:
        lines = [r.getMessage() for r in caplog.records if r.name == "kestrelpy.access"]
        if len(lines) >= count or time.monotonic() > deadline:
            return lines
        time.sleep(0.01)


@pytest.fixture(autouse=True)
def capture_access(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="kestrelpy.access")


def test_the_combined_pattern_matches_what_nginx_writes() -> None:
    assert COMBINED.match(NGINX_COMBINED_LINE)
    assert COMMON.match(NGINX_COMBINED_LINE.rsplit(' "-"', 1)[0])


def test_common_line(running_server: Start, raw_client: Start, caplog: pytest.LogCaptureFixture) -> None:
    live = running_server(hello_app, access_log=True, access_log_format="common")
    assert raw_client(live.port).request("GET", "/a?b=1").body == b"hello world"
    (line,) = access_lines(caplog)
    match = COMMON.match(line)
    assert match, line
    assert (match["addr"], match["user"], match["request"], match["status"], match["bytes"]) == (
        "127.0.0.1",
        "-",
        "GET /a?b=1 HTTP/1.1",
        "200",
        "11",
    )


def test_combined_line(running_server: Start, raw_client: Start, caplog: pytest.LogCaptureFixture) -> None:
    live = running_server(hello_app, access_log=True, access_log_format="combined")
    client = raw_client(live.port)
    client.request("GET", "/c", headers='User-Agent: probe/1.0 "quoted"\r\nReferer: http://r.example/\r\n')
    client.request("HEAD", "/h")
    lines = access_lines(caplog, 2)
    match = COMBINED.match(lines[0])
    assert match, lines[0]
    assert (match["request"], match["status"], match["bytes"]) == ("GET /c HTTP/1.1", "200", "11")
    assert (match["referer"], match["agent"]) == ("http://r.example/", "probe/1.0 \\x22quoted\\x22")
    head = COMBINED.match(lines[1])
    assert head, lines[1]
    assert (head["request"], head["bytes"], head["referer"], head["agent"]) == ("HEAD /h HTTP/1.1", "0", "-", "-")


def test_json_line(running_server: Start, raw_client: Start, caplog: pytest.LogCaptureFixture) -> None:
    live = running_server(hello_app, access_log=True, access_log_format="json")
    raw_client(live.port).request("POST", "/j?x=y", headers="User-Agent: probe\r\n", body=b"data")
    (line,) = access_lines(caplog)
    record = json.loads(line)
    assert set(record) == JSON_KEYS
    assert (record["client"], record["method"], record["path"], record["query"], record["protocol"]) == (
        "127.0.0.1",
        "POST",
        "/j",
        "x=y",
        "HTTP/1.1",
    )
    assert (record["status"], record["bytes"], record["user_agent"], record["referer"]) == (200, 11, "probe", None)
    assert isinstance(record["duration_ms"], float) and record["duration_ms"] >= 0


def test_template_with_request_and_response_headers(
    running_server: Start, raw_client: Start, caplog: pytest.LogCaptureFixture
) -> None:
    template = "{method} {path} {status} {bytes} id={header:X-Request-Id} trace={response_header:x-trace} {aborted}"
    live = running_server(hello_app, access_log=True, access_log_format=template)
    raw_client(live.port).request("GET", "/t", headers="X-Request-Id: r\x9b-1\r\n")
    assert access_lines(caplog) == ["GET /t 200 11 id=r\\x9b-1 trace=t-42 -"]


@pytest.mark.parametrize("fmt", ["default", "json"])
def test_a_refused_request_is_logged_with_its_cause(
    running_server: Start, raw_client: Start, caplog: pytest.LogCaptureFixture, fmt: str
) -> None:
    live = running_server(hello_app, access_log=True, access_log_format=fmt)
    client = raw_client(live.port)
    client.send(b"GET / HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n")
    assert client.read_response().status == 431
    (line,) = access_lines(caplog)
    if fmt == "json":
        record = json.loads(line)
        assert (record["status"], record["rejected"], record["client"]) == (431, "HEADERS_TOO_LARGE", "127.0.0.1")
        assert record["bytes"] > 0
    else:
        assert line == f'127.0.0.1:{client.local_port} - "-" 431 rejected: HEADERS_TOO_LARGE'


def test_an_app_failing_after_the_start_is_logged_as_aborted(
    running_server: Start, raw_client: Start, caplog: pytest.LogCaptureFixture
) -> None:
    live = running_server(fails_after_start, access_log=True, access_log_format="json")
    client = raw_client(live.port)
    assert not client.request().complete
    (line,) = access_lines(caplog)
    record = json.loads(line)
    assert (record["status"], record["bytes"], record["aborted"]) == (200, 7, "APP_ERROR")


async def fails_before_start(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "http":
        raise RuntimeError("crash before the response")


def test_the_500_for_an_app_failing_before_the_start_is_logged_whole(
    running_server: Start, raw_client: Start, caplog: pytest.LogCaptureFixture
) -> None:
    live = running_server(fails_before_start, access_log=True, access_log_format="{status} {bytes} {aborted}")
    response = raw_client(live.port).request()
    assert access_lines(caplog) == [f"500 {len(response.body)} -"]


def test_a_client_leaving_mid_response_is_logged_as_aborted(
    running_server: Start, raw_client: Start, caplog: pytest.LogCaptureFixture
) -> None:
    live = running_server(waits_for_the_client_to_leave, access_log=True)
    client = raw_client(live.port)
    client.send(b"GET /gone HTTP/1.1\r\nHost: t\r\n\r\n")
    received = b""
    while b"partial" not in received:  # the head and first chunk arrived: the app is mid-response
        received += client.sock.recv(4096)
    port = client.local_port
    client.close()
    (line,) = access_lines(caplog)
    assert line == f'127.0.0.1:{port} - "GET /gone HTTP/1.1" 200 aborted: CLIENT_GONE'


FORGED = "/x%0D%0A127.0.0.1%20-%20%22GET%20/forged%22%20200%1B%5B2J"


@pytest.mark.parametrize("fmt", ["default", "common", "combined", "json", "{path} {header:x-note}"])
def test_control_characters_never_reach_the_log(
    running_server: Start, raw_client: Start, caplog: pytest.LogCaptureFixture, fmt: str
) -> None:
    # root_path is the one way to get raw control bytes into raw_path (the parsers refuse them in a
    # target); a header value may carry DEL and obs-text bytes.
    live = running_server(hello_app, access_log=True, access_log_format=fmt, root_path="/m\r\nx\x1b[0m\x85")
    client = raw_client(live.port)
    client.send(
        f"GET {FORGED} HTTP/1.1\r\nHost: t\r\nUser-Agent: a\x9bb\xad\r\nX-Note: n\xff\r\n\r\n".encode("latin-1")
    )
    assert client.read_response().status == 200
    (line,) = access_lines(caplog)
    assert not any(ch in line for ch in "\r\n\x1b\x7f\x85\x9b\xff"), line
    root = "/m\\r\\nx\\x1b[0m\\xc2\\x85" if fmt == "default" else "/m\\x0d\\x0ax\\x1b[0m\\xc2\\x85"
    expected = {
        "default": f'"GET {root}{FORGED} HTTP/1.1" 200',
        "common": f'"GET {root}{FORGED} HTTP/1.1" 200 11',
        "combined": f'"GET {root}{FORGED} HTTP/1.1" 200 11 "-" "a\\x9bb\\xad"',
        "{path} {header:x-note}": f"{root}{FORGED} n\\xff",
    }
    if fmt in expected:
        assert line.endswith(expected[fmt]), line
    else:
        record = json.loads(line)
        assert record["path"] == "/m\r\nx\x1b[0m\xc2\x85" + FORGED  # raw_path's bytes, as latin-1
        assert record["user_agent"] == "a\x9bb\xad"


def test_an_unknown_template_field_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"--access-log-format: unknown field \{status_code\}.*\{duration_ms\}"):
        Config(app="a:b", access_log_format="{client} {status_code}")


@pytest.mark.parametrize("template", ["{header}", "{client", "{status!r}", "no fields at all", "{path:x}"])
def test_malformed_templates_are_config_errors(template: str) -> None:
    with pytest.raises(ConfigError, match="--access-log-format"):
        Config(app="a:b", access_log_format=template)


async def websocket_echo(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "websocket":
        return
    await receive()  # websocket.connect
    await send({"type": "websocket.accept"})
    while (message := await receive())["type"] == "websocket.receive":
        await send({"type": "websocket.send", "text": message.get("text")})


def test_a_websocket_session_is_logged_when_it_ends_with_its_length(
    running_server: Start, caplog: pytest.LogCaptureFixture, manual_clock: ManualClock
) -> None:
    client = pytest.importorskip("websockets.sync.client")
    live = running_server(websocket_echo, access_log=True, access_log_format="json")
    with client.connect(f"ws://127.0.0.1:{live.port}/chat", open_timeout=WAIT, close_timeout=WAIT) as ws:
        ws.send("hi")
        assert ws.recv(timeout=WAIT) == "hi"
        assert access_lines(caplog, wait=0.2) == []  # nothing while the session is open
        manual_clock.beat(2.5)
    (line,) = access_lines(caplog)
    record = json.loads(line)
    assert (record["status"], record["path"], record["websocket"]) == (101, "/chat", True)
    assert record["duration_ms"] == 2500.0
