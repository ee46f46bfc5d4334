"""The TOML config file: every flag has a key, values are parsed as the flag's are, precedence is
CLI > environment > file > default, and a bad file is reported with its path, line and a suggestion."""

from __future__ import annotations

from pathlib import Path

import pytest

from kestrelpy import config_file
from kestrelpy.cli import build_parser, config_from, resolve
from kestrelpy.config import flag_name, options
from kestrelpy.errors import ConfigError


def write(tmp_path: Path, text: str, name: str = "kestrelpy.toml") -> config_file.FileValues:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return config_file.read(path)


def test_every_flag_has_the_key_of_its_name() -> None:
    keys = config_file.keys()
    assert len(keys) == len(list(options()))
    for key, (_owner, f) in keys.items():
        assert "--" + key.replace("_", "-") == flag_name(f)
    assert {"timeout_keep_alive", "limit_request_body", "ssl_certfile", "header", "bind", "port"} <= set(keys)


def test_values_are_parsed_as_the_flags_are(tmp_path: Path) -> None:
    file = write(
        tmp_path,
        'app = "main:app"\nport = 9001\ntimeout_keep_alive = 7\nlimit_request_body = 100\naccess_log = false\n'
        'header = ["X-One: 1", "X-Two:2"]\nuds_mode = "660"\nhttp = "h11"\n',
    )
    config = config_from(build_parser().parse_args([]), {}, file)
    assert config.app == "main:app"
    assert config.port == 9001
    assert config.limits.keep_alive_timeout == 7.0
    assert config.limits.max_request_body_size == 100
    assert config.access_log is False
    assert config.headers == (("X-One", "1"), ("X-Two", "2"))
    assert config.uds_mode == 0o660
    assert config.http == "h11"


def test_cli_beats_environment_beats_file_beats_default(tmp_path: Path) -> None:
    file = write(tmp_path, "port = 9001\nbacklog = 10\nworkers = 3\nroot_path = '/file'\n")
    args = build_parser().parse_args(["app:cli", "--port", "9002"])
    environ = {"KESTRELPY_PORT": "9003", "KESTRELPY_BACKLOG": "20"}
    config, sources = resolve(args, environ, file)
    assert (config.port, config.backlog, config.workers, config.root_path) == (9002, 20, 3, "/file")
    assert config.timeout_graceful_shutdown == 30.0
    assert sources["port"] == ("cli", "--port")
    assert sources["backlog"] == ("env", "KESTRELPY_BACKLOG")
    assert sources["workers"] == ("file", f"{tmp_path / 'kestrelpy.toml'}:3")
    assert sources["timeout_graceful_shutdown"] == ("default", "")
    assert sources["app"] == ("cli", "APP")
    assert resolve(args, {"WEB_CONCURRENCY": "2"}, file)[0].workers == 2  # the environment beats the file


def test_the_app_on_the_command_line_beats_the_file(tmp_path: Path) -> None:
    file = write(tmp_path, 'app = "file:app"\n')
    assert config_from(build_parser().parse_args(["cli:app"]), {}, file).app == "cli:app"
    assert config_from(build_parser().parse_args([]), {}, file).app == "file:app"


def test_kestrelpy_toml_comes_before_pyproject(tmp_path: Path) -> None:
    assert config_file.discover(tmp_path) is None
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    assert config_file.discover(tmp_path) is None  # no [tool.kestrelpy] table
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'x'\n\n[tool.kestrelpy]\nport = 9004\n")
    assert config_file.discover(tmp_path) == tmp_path / "pyproject.toml"
    found = config_file.read(tmp_path / "pyproject.toml")
    assert found.values == {"port": 9004} and found.lines == {"port": 5}
    (tmp_path / "kestrelpy.toml").write_text("port = 9005\n")
    assert config_file.discover(tmp_path) == tmp_path / "kestrelpy.toml"


def test_an_unknown_key_names_file_line_and_the_nearest_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        write(tmp_path, "port = 1\n\ntimeout_keepalive = 3\n")
    assert str(caught.value) == (
        f"{tmp_path / 'kestrelpy.toml'}:3: unknown key `timeout_keepalive`; did you mean `timeout_keep_alive`?"
    )


def test_an_unknown_key_in_pyproject_is_found_below_its_table(tmp_path: Path) -> None:
    text = "[project]\nname = 'x'\nprot = 1\n\n[tool.kestrelpy]\nprot = 2\n"
    with pytest.raises(ConfigError, match=r"pyproject\.toml:6: unknown key `prot`; did you mean `port`\?"):
        write(tmp_path, text, "pyproject.toml")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('port = "80"', r"kestrelpy\.toml:1: port must be an integer, not a string \('80'\)"),
        ("access_log = 1", r"kestrelpy\.toml:1: access_log must be true or false, not an integer"),
        ("timeout_keep_alive = true", r"timeout_keep_alive must be a number, not a boolean"),
        ('http = "spdy"', r"kestrelpy\.toml:1: http must be one of auto, httptools, h11, not 'spdy'"),
        ('header = ["nocolon"]', r"kestrelpy\.toml:1: header: expected NAME:VALUE, got 'nocolon'"),
        ("bind = [1]", r"bind must be an array of strings, not an array"),
        ("app = 3", r'app must be a string, as in app = "module:attribute"'),
        ('uds_mode = "999"', r"kestrelpy\.toml:1: uds_mode: "),
    ],
)
def test_a_value_of_the_wrong_type_names_key_and_file(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        write(tmp_path, text + "\n")


def test_an_out_of_range_value_reuses_the_flag_message_with_file_and_key(tmp_path: Path) -> None:
    file = write(tmp_path, "backlog = 1\nport = 70000\n")
    with pytest.raises(ConfigError) as caught:
        config_from(build_parser().parse_args([]), {}, file)
    assert str(caught.value) == (
        f"{tmp_path / 'kestrelpy.toml'}:2: port: --port must be between 0 and 65535, not 70000"
    )
    nested = write(tmp_path, "limit_request_line = 3\n")
    with pytest.raises(ConfigError, match=r"kestrelpy\.toml:1: limit_request_line: --limit-request-line must be"):
        config_from(build_parser().parse_args([]), {}, nested)


def test_a_value_given_on_the_command_line_is_not_blamed_on_the_file(tmp_path: Path) -> None:
    file = write(tmp_path, "port = 80\n")
    with pytest.raises(ConfigError) as caught:
        config_from(build_parser().parse_args(["--port", "70000"]), {}, file)
    assert str(caught.value) == "--port must be between 0 and 65535, not 70000"


def test_a_syntax_error_names_file_line_and_column(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"kestrelpy\.toml:2:8: not valid TOML: "):
        write(tmp_path, "port = 1\nhost = \n")


def test_the_effective_values_are_written_as_the_file_spells_them() -> None:
    assert config_file.file_form("uds_mode", 0o660) == "660"
    assert config_file.file_form("header", (("X-A", "1"),)) == ["X-A:1"]
    sni = (("a.example", "/a.pem", "/a.key"), ("*", "/any.pem", ""))
    assert config_file.file_form("ssl_sni", sni) == ["a.example=/a.pem:/a.key", "*=/any.pem"]
