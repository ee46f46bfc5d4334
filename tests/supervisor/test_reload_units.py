"""A SIGHUP reload's parts that need no worker: what it decides to do for each kind of change, and how a
running worker is told about new listeners (descriptors over its channel on POSIX, shared-socket blobs
inside the line on Windows, encoded and decoded here on every OS)."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from kestrelpy import platform
from kestrelpy.cli import build_parser, config_from
from kestrelpy.config import Config, TlsOptions
from kestrelpy.config_reload import Reloaded, reload_config
from kestrelpy.sockets import bind_endpoints, close_sockets
from kestrelpy.supervisor import (
    Exported,
    ListenerChange,
    decode_listener_change,
    encode_listener_change,
    hand_over,
    open_handed,
)


def config(*argv: str) -> Config:
    return config_from(build_parser().parse_args(["main:app", *argv]), {})


def payload(line: bytes) -> str:
    command, _, rest = line.decode("ascii").rstrip("\n").partition(" ")
    assert command == "listeners"
    return rest


# -- the channel line -----------------------------------------------------------------------------


def test_a_listener_change_is_one_ascii_line_that_comes_back_whole() -> None:
    change = ListenerChange(
        {"urls": "http://127.0.0.1:8001", "port": 8001},
        stop=(("127.0.0.1", 8000),),
        change=("/run/app.sock", ("::1", 8443, 0, 0)),
        add=(("passed", 0), ("passed", 1)),
    )
    line = encode_listener_change(change)
    assert line.isascii() and line.endswith(b"\n") and line.count(b"\n") == 1
    assert decode_listener_change(payload(line)) == change


@pytest.mark.parametrize("garbage", ["", "not base64!", "aGVsbG8=", "gASVBQAAAAAAAACMAXiULg=="])
def test_a_line_that_is_not_a_listener_change_is_refused(garbage: str) -> None:
    with pytest.raises(ValueError, match="not a listener change"):
        decode_listener_change(garbage)


def test_new_sockets_reach_a_running_worker_as_descriptors_sent_with_the_line() -> None:
    supervisor, worker = socket.socketpair()
    listener = socket.create_server(("127.0.0.1", 0))
    with supervisor, worker, listener:
        exported, fds = hand_over([listener], pid=0, share=False)
        assert exported == (("passed", 0),) and fds == [listener.fileno()]
        line = encode_listener_change(ListenerChange({}, add=exported))
        socket.send_fds(supervisor, [line], fds)
        data, passed, _, _ = socket.recv_fds(worker, 65536, 8)
        (adopted,) = open_handed(decode_listener_change(payload(data)).add, passed)
        with adopted:
            assert adopted.fileno() != listener.fileno()  # a descriptor of the worker's own
            assert adopted.getsockname() == listener.getsockname()
            with socket.create_connection(listener.getsockname(), timeout=5):
                accepted, _ = adopted.accept()  # the same listening socket: it takes the connection
                accepted.close()


def test_on_windows_new_sockets_travel_inside_the_line_as_shared_blobs() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    with listener:
        exported, fds = hand_over([listener], pid=4242, share=True)
        assert fds == [] and exported == (platform.export_socket(listener, 4242),)
    blob = b"\x00WSAPROTOCOL_INFOW\n\xff" * 20  # what socket.share() returns: bytes, any of them
    line = encode_listener_change(ListenerChange({}, add=(("share", blob),)))
    assert line.count(b"\n") == 1
    opened: list[Exported] = []

    def fromshare(item: Exported) -> socket.socket:
        opened.append(item)
        return socket.socket()

    (sock,) = open_handed(decode_listener_change(payload(line)).add, [], fromshare)
    sock.close()
    assert opened == [("share", blob)]


# -- what a reload decides --------------------------------------------------------------------------


@pytest.fixture
def running(tmp_path: Path) -> Iterator[tuple[Config, list[socket.socket]]]:
    """A running configuration with a plain and a TLS endpoint, and its listening sockets."""
    ca = trustme.CA()
    for name in ("first", "second"):
        ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(str(tmp_path / f"{name}.pem"))
    plain, secure = (_free_port() for _ in range(2))
    base = config(
        "--urls", f"http://127.0.0.1:{plain};https://127.0.0.1:{secure}", "--ssl-certfile", str(tmp_path / "first.pem")
    )
    sockets = bind_endpoints(base.endpoints(), base.backlog)
    yield base, sockets
    close_sockets(sockets)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def reloaded(running: tuple[Config, list[socket.socket]], new: Config) -> Reloaded:
    result = reload_config(running[0], running[1], lambda: new)
    assert result is not None
    return result


def test_only_a_new_worker_count_adds_or_stops_workers(running: tuple[Config, list[socket.socket]]) -> None:
    result = reloaded(running, running[0].replace(workers=3))
    assert (result.how, result.count_changed, result.settings) == ("count", True, ())


def test_only_endpoints_change_the_listeners_in_place(
    running: tuple[Config, list[socket.socket]], tmp_path: Path
) -> None:
    path = str(tmp_path / "added.sock")
    result = reloaded(running, running[0].replace(binds=(f"unix:{path}",), workers=4))
    try:
        assert (result.how, result.changed, result.stopped) == ("listeners", (), ())
        assert [sock.getsockname() for sock in result.added] == [path]
        assert result.endpoint_settings()["binds"] == (f"unix:{path}",)
    finally:
        result.abandon()
    assert result.added == [] and running[1][0].fileno() != -1  # abandoning closes only what it bound


def test_a_new_default_certificate_changes_the_tls_endpoint_and_not_the_plain_one(
    running: tuple[Config, list[socket.socket]], tmp_path: Path
) -> None:
    base, sockets = running
    result = reloaded(running, base.replace(tls=TlsOptions(ssl_certfile=str(tmp_path / "second.pem"))))
    assert result.how == "listeners"
    assert result.changed == (sockets[1].getsockname(),)


def test_a_removed_endpoint_is_closed_only_once_the_reload_is_committed(
    running: tuple[Config, list[socket.socket]],
) -> None:
    base, sockets = running
    plain_url = base.urls.split(";")[0]
    result = reloaded(running, base.replace(urls=plain_url))
    assert result.how == "listeners" and result.stopped == (sockets[1].getsockname(),)
    assert sockets[1].fileno() != -1
    result.commit()
    assert sockets[1].fileno() == -1 and sockets[0].fileno() != -1


@pytest.mark.parametrize(
    ("changes", "settings"),
    [({}, ()), ({"server_header": False}, ("server_header",)), ({"workers": 2, "root_path": "/x"}, ("root_path",))],
    ids=["nothing", "one-setting", "setting-and-count"],
)
def test_any_other_change_or_none_at_all_replaces_the_workers(
    running: tuple[Config, list[socket.socket]], changes: dict[str, object], settings: tuple[str, ...]
) -> None:
    result = reloaded(running, running[0].replace(**changes))
    assert (result.how, result.settings) == ("replace", settings)
