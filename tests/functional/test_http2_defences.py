"""HTTP/2 defences over real sockets, each driven frame by frame with the h2 library (and hyperframe for
frames h2 would not send): rapid reset, CONTINUATION flood, HPACK bomb, control-frame floods, a reader
that never opens its window, stream-id exhaustion, a slow body beside fast streams, and the connection's
timeouts. Timing rules run on a manual clock, beat by beat."""

from __future__ import annotations

import asyncio

import h2.connection
import h2.events
import h2.settings
import hpack
import pytest
from h2.errors import ErrorCodes
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    HeadersFrame,
    PingFrame,
    SettingsFrame,
    WindowUpdateFrame,
)

from kestrelpy.config import Http2Limits, Limits
from tests.functional.test_http2 import H2Client, echo_app
from tests.functional.test_http2 import h2_client as h2_client  # the fixture
from tests.support.gate import Gate
from tests.support.waiting import WAIT, wait_until


def quiet(client: H2Client, seconds: float = 0.3) -> list[h2.events.Event]:
    """What arrives within `seconds` (the server is expected to say nothing more)."""
    client.sock.settimeout(seconds)
    events: list[h2.events.Event] = []
    try:
        while not client.closed:
            events += client.read()
    except TimeoutError:
        pass
    client.sock.settimeout(WAIT)
    return events


def calm_goaway(client: H2Client) -> bool:
    event = client.goaway()
    return event is not None and event.error_code == ErrorCodes.ENHANCE_YOUR_CALM


def head_block(path: bytes = b"/") -> bytes:
    """A request's header block, encoded without the dynamic table (so any decoder state reads it)."""
    encoder = hpack.Encoder()
    encoder.header_table_size = 0
    fields = [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"x"), (b":path", path)]
    return encoder.encode(fields)


def test_rapid_reset_ends_the_connection_and_bounds_running_apps(serve_app, h2_client, manual_clock) -> None:
    started: list[int] = []

    async def app(scope, receive, send):  # keeps running after its client has gone, as a slow backend would
        if scope["type"] != "http":
            return
        started.append(1)
        await asyncio.sleep(3600)

    live = serve_app(app, http2_limits=Http2Limits(http2_max_concurrent_streams=10), timeout_graceful_shutdown=0.1)
    client = h2_client(live.port)
    try:
        for _ in range(200):
            sid = client.request("/", end=True)
            client.h2.reset_stream(sid, ErrorCodes.CANCEL)
            client.flush()
    except (BrokenPipeError, ConnectionResetError):
        pass  # the server has had enough
    assert calm_goaway(client)
    assert len(started) <= 10


def test_a_rapid_reset_burst_in_one_read_is_parsed_only_up_to_the_cut_off(
    serve_app, h2_client, manual_clock, monkeypatch
) -> None:
    fed: list[int] = []  # the sizes handed to h2 at once (the server runs in this process)
    receive_data = h2.connection.H2Connection.receive_data

    def recording(self: h2.connection.H2Connection, data: bytes) -> list[h2.events.Event]:
        if not self.config.client_side:
            fed.append(len(data))
        return receive_data(self, data)

    monkeypatch.setattr(h2.connection.H2Connection, "receive_data", recording)

    async def app(scope, receive, send):
        if scope["type"] == "http":
            await asyncio.sleep(3600)

    live = serve_app(app, http2_limits=Http2Limits(http2_max_concurrent_streams=10), timeout_graceful_shutdown=0.1)
    client = h2_client(live.port)
    for _ in range(10_000):  # about 300 KiB of HEADERS and RST_STREAM, written at once
        client.h2.reset_stream(client.request("/", end=True, flush=False), ErrorCodes.CANCEL)
    try:
        client.flush()
    except (BrokenPipeError, ConnectionResetError):
        pass  # cut off while still writing
    assert calm_goaway(client)
    # Thousands of frames parsed in one call would hold the loop for seconds under load; in slices, what
    # h2 parsed ends with the slice that spent the budget.
    assert max(fed) <= 16 * 1024
    assert sum(fed) <= 64 * 1024


def test_continuation_flood_is_cut_off_at_the_header_limit(serve_app, h2_client) -> None:
    live = serve_app(echo_app)
    client = h2_client(live.port)
    headers = HeadersFrame(1)
    headers.data = head_block()
    client.send_raw(headers.serialize())  # no END_HEADERS: the block goes on in CONTINUATION frames
    for _ in range(10):  # 160 KiB, far past the header limit and far below h2's own 64-frame cut-off
        continuation = ContinuationFrame(1)
        continuation.data = b"\x00" * 16384
        try:
            client.send_raw(continuation.serialize())
        except (BrokenPipeError, ConnectionResetError):
            break
    assert calm_goaway(client)


def test_hpack_bomb_counts_the_decoded_size(serve_app, h2_client) -> None:
    live = serve_app(echo_app)
    client = h2_client(live.port)
    big = (b"x-big", b"v" * 4000)
    first = client.request("/", headers=[big])  # the field enters both dynamic tables
    assert client.response(first)[0] == 200
    # Twelve one-byte references to it: 48 KB decoded from a few bytes, over the 32 KiB header limit
    # (and under the h2 library's own default of 64 KiB).
    client.request("/", headers=[big] * 12)
    event = client.goaway()
    assert event is not None and event.error_code == ErrorCodes.ENHANCE_YOUR_CALM


def flood(client: H2Client, frame: bytes, count: int) -> None:
    data = frame * count
    try:
        client.send_raw(data)
    except (BrokenPipeError, ConnectionResetError):
        pass


def ping_frame() -> PingFrame:
    ping = PingFrame(0)
    ping.opaque_data = b"12345678"
    return ping


def window_update_frame() -> WindowUpdateFrame:
    update = WindowUpdateFrame(0)
    update.window_increment = 1
    return update


@pytest.mark.parametrize(
    ("make", "count"),
    [(lambda: SettingsFrame(0), 150), (ping_frame, 1500), (window_update_frame, 1500)],
    ids=["settings", "ping", "window_update"],
)
def test_control_frame_flood_ends_the_connection(serve_app, h2_client, manual_clock, make, count) -> None:
    live = serve_app(echo_app)
    client = h2_client(live.port)
    flood(client, make().serialize(), count)
    assert calm_goaway(client)


def test_empty_data_flood_ends_the_connection(serve_app, h2_client, manual_clock) -> None:
    gate = Gate()

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        await gate.wait()

    live = serve_app(app, timeout_graceful_shutdown=0.1)
    client = h2_client(live.port)
    sid = client.request("/", method="POST", end=False)
    flood(client, DataFrame(sid).serialize(), 1500)
    assert calm_goaway(client)
    gate.open()


def test_budgets_are_per_beat_so_ordinary_pings_are_fine(serve_app, h2_client, manual_clock) -> None:
    live = serve_app(echo_app)
    client = h2_client(live.port)
    for _ in range(3):
        flood(client, ping_frame().serialize(), 600)
        assert wait_until(live.has_read_everything)
        manual_clock.beat()
    assert client.response(client.request("/"))[0] == 200
    assert not any(isinstance(e, h2.events.ConnectionTerminated) for e in client.events)


def test_zero_window_reader_holds_the_app_then_the_response_rate_resets_the_stream(
    serve_app, h2_client, manual_clock
) -> None:
    progress: list[int] = []

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for i in range(100):
            await send({"type": "http.response.body", "body": b"x" * 100_000, "more_body": True})
            progress.append(i)

    live = serve_app(app)
    client = h2_client(live.port, settings={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 0})
    sid = client.request("/")
    assert client.until(lambda e: isinstance(e, h2.events.ResponseReceived))
    for _ in range(4):  # within the grace period (5 s): the app waits, holding one message
        manual_clock.beat()
    assert not any(isinstance(e, h2.events.StreamReset) for e in quiet(client))
    assert progress == [0]  # its first message is held (not sent), and its second send waits
    for _ in range(3):
        manual_clock.beat()
    event = client.until(lambda e: isinstance(e, h2.events.StreamReset))
    assert event is not None and event.stream_id == sid and event.error_code == ErrorCodes.CANCEL
    assert len(progress) <= 1


def test_stream_ids_run_out_and_a_lower_one_is_a_connection_error(serve_app, h2_client) -> None:
    live = serve_app(echo_app)
    client = h2_client(live.port)
    last = 2**31 - 1
    assert client.response(client.request("/", stream_id=last))[0] == 200
    frame = HeadersFrame(5)
    frame.data = head_block()
    frame.flags.add("END_HEADERS")
    frame.flags.add("END_STREAM")
    client.send_raw(frame.serialize())
    event = client.goaway()
    assert event is not None and event.error_code == ErrorCodes.PROTOCOL_ERROR
    assert wait_until(lambda: live.connections() == [])  # nothing of the connection is kept


def test_slow_body_on_one_stream_does_not_stall_the_others(serve_app, h2_client) -> None:
    live = serve_app(echo_app)
    client = h2_client(live.port)
    slow = client.request("/slow", method="POST", body=b"a" * 1000, end=False)
    for i in range(5):
        status, _headers, _body = client.response(client.request(f"/fast{i}"))
        assert status == 200
    client.send_body(slow, b"b", True)
    assert client.response(slow)[0] == 200


def test_incomplete_header_block_times_out(serve_app, h2_client, manual_clock) -> None:
    live = serve_app(echo_app)
    client = h2_client(live.port)
    headers = HeadersFrame(1)
    headers.data = head_block()
    client.send_raw(headers.serialize())
    assert wait_until(live.has_read_everything)
    for _ in range(10):  # --timeout-request-headers is 10 s: not yet
        manual_clock.beat()
    assert not any(isinstance(e, h2.events.ConnectionTerminated) for e in quiet(client))
    manual_clock.beat()
    manual_clock.beat()
    event = client.goaway()
    assert event is not None and event.error_code == ErrorCodes.PROTOCOL_ERROR


def test_idle_connection_closes_after_the_keep_alive_timeout(serve_app, h2_client, manual_clock) -> None:
    live = serve_app(echo_app)
    client = h2_client(live.port)
    assert client.response(client.request("/"))[0] == 200
    for _ in range(5):
        manual_clock.beat()
    assert not any(isinstance(e, h2.events.ConnectionTerminated) for e in quiet(client))
    manual_clock.beat()
    event = client.goaway()
    assert event is not None and event.error_code == ErrorCodes.NO_ERROR
    client.until(lambda e: False)
    assert client.closed


def test_keep_alive_ping_goes_out_when_the_client_is_silent(serve_app, h2_client, manual_clock) -> None:
    live = serve_app(echo_app, http2_limits=Http2Limits(http2_keep_alive_ping_delay=2.0))
    client = h2_client(live.port)
    quiet(client)  # the client has said all it will
    assert wait_until(live.has_read_everything)
    manual_clock.beat()  # hears the client's opening frames
    assert not any(_server_ping(e) for e in quiet(client))
    manual_clock.beat()
    manual_clock.beat()
    assert client.until(_server_ping)


def _server_ping(event: h2.events.Event) -> bool:
    # h2 answers a PING itself and reports PingReceived
    return isinstance(event, h2.events.PingReceived) and event.ping_data == b"kestrel!"


def test_body_rate_applies_per_stream(serve_app, h2_client, manual_clock) -> None:
    live = serve_app(echo_app, limits=Limits(min_request_body_rate=1000.0))
    client = h2_client(live.port)
    slow = client.request("/", method="POST", body=b"a", end=False)
    fine = client.request("/", method="POST", body=b"b", end=False)
    for _ in range(7):
        client.send_body(fine, b"c" * 2000, False)
        assert wait_until(live.has_read_everything)
        manual_clock.beat()
    status, _headers, body = client.response(slow)
    assert status == 408 and body == b"The request body did not arrive in time."
    client.send_body(fine, b"", True)
    assert client.response(fine)[0] == 200


def test_unanswered_keep_alive_ping_closes_the_connection(serve_app, h2_client, manual_clock) -> None:
    limits = Http2Limits(http2_keep_alive_ping_delay=2.0, http2_keep_alive_ping_timeout=3.0)
    live = serve_app(echo_app, http2_limits=limits)
    client = h2_client(live.port)
    assert wait_until(live.has_read_everything)
    for _ in range(6):  # the PING goes out at the third beat; the client reads nothing, so never answers
        manual_clock.beat()
    assert live.connections() != []
    manual_clock.beat()
    event = client.goaway()
    assert event is not None and event.error_code == ErrorCodes.NO_ERROR
    assert any(_server_ping(e) for e in client.events)
