"""The pure parts of WebSocket support: which requests are upgrades, handshake checks, the options."""

from __future__ import annotations

import subprocess
import sys

import pytest

from kestrelpy.cli import build_parser, config_from
from kestrelpy.config import Config, Limits
from kestrelpy.errors import ConfigError
from kestrelpy.protocols.websocket import (
    MissingLibrary,
    WebSocketUpgrade,
    asks_for_websocket,
    handshake_error,
    offered_subprotocols,
    upgrade_handler,
)

KEY = b"dGhlIHNhbXBsZSBub25jZQ=="


def handshake(**changes: bytes | None) -> list[tuple[bytes, bytes]]:
    fields = {
        b"host": b"example",
        b"upgrade": b"websocket",
        b"connection": b"Upgrade",
        b"sec-websocket-key": KEY,
        b"sec-websocket-version": b"13",
    }
    for name, value in changes.items():
        key = name.replace("_", "-").encode()
        if value is None:
            fields.pop(key)
        else:
            fields[key] = value
    return list(fields.items())


@pytest.mark.parametrize(
    ("value", "expected"),
    [(b"websocket", True), (b"WebSocket", True), (b"h2c, websocket", True), (b"h2c", False), (b"", False)],
)
def test_asks_for_websocket(value: bytes, expected: bool) -> None:
    assert asks_for_websocket([(b"host", b"x"), (b"upgrade", value)]) is expected


def test_no_upgrade_field_is_not_websocket() -> None:
    assert not asks_for_websocket([(b"host", b"x"), (b"connection", b"upgrade")])


def test_valid_handshake_has_no_error() -> None:
    assert handshake_error(handshake()) is None


@pytest.mark.parametrize(
    "changes",
    [
        {"sec_websocket_key": None},
        {"sec_websocket_key": b"a2V5"},  # decodes to 3 bytes, not 16
        {"sec_websocket_key": b"not base64!!"},
        {"sec_websocket_key": b"AAAAAAAAAAAAAAAAAAAAAAAAAAAA"},  # 21 bytes
    ],
)
def test_bad_key_is_400(changes: dict[str, bytes | None]) -> None:
    error = handshake_error(handshake(**changes))
    assert error is not None and error.status == 400


def test_two_keys_is_400() -> None:
    error = handshake_error([*handshake(), (b"sec-websocket-key", KEY)])
    assert error is not None and error.status == 400


@pytest.mark.parametrize("version", [None, b"8", b"14", b"13, 8"])
def test_other_versions_get_426_naming_13(version: bytes | None) -> None:
    error = handshake_error(handshake(sec_websocket_version=version))
    assert error is not None
    assert error.status == 426
    assert (b"sec-websocket-version", b"13") in error.headers
    assert (b"upgrade", b"websocket") in error.headers  # RFC 9110 section 15.5.22


def test_offered_subprotocols_in_order_across_fields() -> None:
    headers = [(b"sec-websocket-protocol", b"chat, v2.json"), (b"host", b"x"), (b"sec-websocket-protocol", b" mqtt ")]
    assert offered_subprotocols(headers) == ["chat", "v2.json", "mqtt"]
    assert offered_subprotocols([(b"host", b"x")]) == []


def test_options_and_their_flags() -> None:
    config = Config(app="a:b")
    assert (config.ws, config.ws_max_size, config.ws_ping_interval, config.ws_ping_timeout) == (
        "auto",
        16 * 1024 * 1024,
        20.0,
        20.0,
    )
    assert config.ws_per_message_deflate is True
    assert config.limits.max_upgraded_connections == 0
    argv = ["a:b", "--ws", "none", "--ws-max-size", "1024", "--ws-ping-interval", "5", "--no-ws-per-message-deflate"]
    env = {"KESTRELPY_LIMIT_UPGRADED_CONNECTIONS": "7", "KESTRELPY_WS_PING_TIMEOUT": "2.5"}
    parsed = config_from(build_parser().parse_args(argv), env)
    assert (parsed.ws, parsed.ws_max_size, parsed.ws_ping_interval, parsed.ws_ping_timeout) == ("none", 1024, 5.0, 2.5)
    assert parsed.ws_per_message_deflate is False
    assert parsed.limits.max_upgraded_connections == 7
    assert "--limit-upgraded-connections" in build_parser().format_help()


@pytest.mark.parametrize(
    "changes",
    [{"ws": "wsproto"}, {"ws_max_size": -1}, {"ws_ping_interval": -1.0}, {"ws_ping_timeout": -0.5}],
)
def test_invalid_options_are_refused(changes: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        Config(app="a:b", **changes)  # type: ignore[arg-type]


def test_negative_upgraded_limit_is_refused() -> None:
    with pytest.raises(ConfigError, match="--limit-upgraded-connections"):
        Limits(max_upgraded_connections=-1)


def test_handler_follows_the_ws_option(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("websockets")
    assert upgrade_handler(Config(app="a:b", ws="none")) is None
    handler = upgrade_handler(Config(app="a:b", limits=Limits(max_upgraded_connections=3)))
    assert isinstance(handler, WebSocketUpgrade)
    assert handler.settings.max_upgraded == 3
    monkeypatch.setitem(sys.modules, "websockets", None)  # the extra is not installed
    assert isinstance(upgrade_handler(Config(app="a:b")), MissingLibrary)
    with pytest.raises(ConfigError, match="websockets is not installed"):
        upgrade_handler(Config(app="a:b", ws="websockets"))


def test_the_library_is_imported_only_when_a_websocket_arrives() -> None:
    # It costs a worker ~3 MiB and ~20 ms: a server that never upgrades should not pay for it.
    code = (
        "import sys\n"
        "from kestrelpy.config import Config\n"
        "from kestrelpy.protocols.websocket import WebSocketUpgrade, upgrade_handler\n"
        "assert isinstance(upgrade_handler(Config(app='x:y', ws='auto')), WebSocketUpgrade)\n"
        "assert 'websockets' not in sys.modules, 'imported at start'\n"
        "upgrade_handler(Config(app='x:y', ws='websockets'))\n"
        "assert 'websockets.server' in sys.modules, 'not imported when asked for'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
