"""HTTP/2 pieces that need no socket: the flags and their validation, which protocols a listener speaks,
whether HTTP/2 is served at all, and the header-block budget of the frame buffer."""

from __future__ import annotations

import dataclasses
import sys

import h2.exceptions
import pytest
from hyperframe.frame import ContinuationFrame, HeadersFrame

from kestrelpy.cli import build_parser, config_from
from kestrelpy.config import Config, Http2Limits
from kestrelpy.endpoints import tcp_endpoint
from kestrelpy.errors import ConfigError
from kestrelpy.protocols.http2 import HeaderBlockBuffer
from kestrelpy.server import http2_service, listener_protocols


def parse(argv: list[str], env: dict[str, str] | None = None) -> Config:
    return config_from(build_parser().parse_args(["app:app", *argv]), env or {})


def test_http2_is_on_by_default_with_kestrels_limits() -> None:
    limits = parse([]).http2_limits
    assert limits.http2 is True
    assert (limits.http2_max_concurrent_streams, limits.http2_header_table_size) == (100, 4096)
    assert (limits.http2_max_frame_size, limits.http2_max_request_header_field_size) == (16384, 16384)
    assert limits.http2_initial_connection_window_size == 1024 * 1024
    assert limits.http2_initial_stream_window_size == 768 * 1024
    assert limits.http2_keep_alive_ping_delay == 0  # off


def test_no_http2_flag_and_environment() -> None:
    assert parse(["--no-http2"]).http2_limits.http2 is False
    assert parse([], {"KESTRELPY_HTTP2": "false"}).http2_limits.http2 is False
    assert parse(["--http2-max-concurrent-streams", "7"]).http2_limits.http2_max_concurrent_streams == 7


@pytest.mark.parametrize(
    ("changes", "flag"),
    [
        ({"http2_max_concurrent_streams": 0}, "--http2-max-concurrent-streams"),
        ({"http2_max_frame_size": 1000}, "--http2-max-frame-size"),
        ({"http2_max_frame_size": 2**24}, "--http2-max-frame-size"),
        ({"http2_initial_stream_window_size": 2**31}, "--http2-initial-stream-window-size"),
        ({"http2_initial_connection_window_size": 100}, "--http2-initial-connection-window-size"),
        ({"http2_header_table_size": -1}, "--http2-header-table-size"),
        ({"http2_keep_alive_ping_timeout": 0}, "--http2-keep-alive-ping-timeout"),
    ],
)
def test_out_of_range_settings_are_refused_naming_the_flag(changes: dict[str, int], flag: str) -> None:
    with pytest.raises(ConfigError, match=flag):
        Http2Limits(**changes)  # type: ignore[arg-type]


def test_listeners_offer_what_their_endpoint_asks_for_h2_first() -> None:
    both, only_1, only_2 = (tcp_endpoint("127.0.0.1", 8443, tls=True) for _ in range(3))
    only_1 = dataclasses.replace(only_1, protocols="http1")
    only_2 = dataclasses.replace(only_2, protocols="http2")
    assert listener_protocols(both, True) == ("h2", "http/1.1")
    assert listener_protocols(None, True) == ("h2", "http/1.1")
    assert listener_protocols(only_1, True) == ("http/1.1",)
    assert listener_protocols(only_2, True) == ("h2",)
    assert listener_protocols(both, False) == ("http/1.1",)  # --no-http2, or h2 not installed


def test_an_http2_only_endpoint_without_http2_is_refused_naming_it() -> None:
    endpoint = dataclasses.replace(tcp_endpoint("127.0.0.1", 8443, tls=True), protocols="http2")
    with pytest.raises(ConfigError, match=r"127\.0\.0\.1:8443 serves only HTTP/2.*kestrelpy\[http2\]"):
        listener_protocols(endpoint, False)


def test_no_service_when_switched_off_or_h2_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    assert http2_service(Config(app="a:b", http2_limits=Http2Limits(http2=False))) is None
    assert http2_service(Config(app="a:b")) is not None
    monkeypatch.setitem(sys.modules, "kestrelpy.protocols.http2", None)  # as if h2 could not be imported
    assert http2_service(Config(app="a:b")) is None


def headers_frame(size: int, end: bool) -> bytes:
    frame = HeadersFrame(1)
    frame.data = b"\x00" * size
    if end:
        frame.flags.add("END_HEADERS")
    return frame.serialize()


def continuation(size: int, end: bool = False) -> bytes:
    frame = ContinuationFrame(1)
    frame.data = b"\x00" * size
    if end:
        frame.flags.add("END_HEADERS")
    return frame.serialize()


def frames(buffer: HeaderBlockBuffer) -> list[object]:
    return list(buffer)


def test_header_block_is_refused_once_its_frames_pass_the_limit() -> None:
    buffer = HeaderBlockBuffer(limit=10_000)
    buffer.max_frame_size = 16384
    buffer.add_data(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + headers_frame(4000, end=False) + continuation(4000))
    assert frames(buffer) == [] and buffer.started
    buffer.add_data(continuation(4000))
    with pytest.raises(h2.exceptions.DenialOfServiceError):
        frames(buffer)


def test_header_block_within_the_limit_passes_and_the_count_starts_again() -> None:
    buffer = HeaderBlockBuffer(limit=10_000)
    buffer.max_frame_size = 16384
    buffer.add_data(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + headers_frame(6000, end=False) + continuation(3000, end=True))
    assert len(frames(buffer)) == 1 and not buffer.started
    buffer.add_data(headers_frame(6000, end=False) + continuation(3000, end=True))  # a new block: 9000 again
    assert len(frames(buffer)) == 1
    buffer.add_data(headers_frame(12_000, end=True))  # a block in one frame is h2's and HPACK's to judge
    assert len(frames(buffer)) == 1
