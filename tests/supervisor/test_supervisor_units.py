"""The supervisor's pure parts: options, file filters, the socket hand-over, exit descriptions."""

from __future__ import annotations

import signal
import socket
import sys
from pathlib import Path

import pytest

from kestrelpy import platform
from kestrelpy.cli import build_parser, config_from
from kestrelpy.config import Config
from kestrelpy.errors import ConfigError
from kestrelpy.reload import SourceFilter, watch_for_changes


def config(*argv: str, **environ: str) -> Config:
    return config_from(build_parser().parse_args(["main:app", *argv]), environ)


def test_web_concurrency_is_the_worker_count_unless_a_flag_or_kestrelpy_variable_says_otherwise() -> None:
    assert config().workers == 1
    assert config(WEB_CONCURRENCY="4").workers == 4
    assert config("--workers", "2", WEB_CONCURRENCY="4").workers == 2
    assert config(WEB_CONCURRENCY="4", KESTRELPY_WORKERS="3").workers == 3
    with pytest.raises(ConfigError, match="WEB_CONCURRENCY"):
        config(WEB_CONCURRENCY="many")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (("--workers", "0"), "--workers must be between 1 and 512"),
        (("--timeout-worker-healthcheck", "0"), "--timeout-worker-healthcheck must be greater than 0"),
        (("--limit-max-requests", "-1"), "must not be negative"),
        (("--limit-worker-memory", "-5"), "--limit-worker-memory must not be negative"),
    ],
)
def test_process_options_are_validated_when_the_config_is_built(argv: tuple[str, ...], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        config(*argv)


def test_the_supervisor_runs_only_when_something_needs_it() -> None:
    assert not config().multiprocess
    assert config("--workers", "2").multiprocess
    assert config("--reload").multiprocess
    assert config("--limit-max-requests", "100").multiprocess
    assert config("--limit-worker-memory", "512").multiprocess
    cfg = config("--reload-dir", "src", "--reload-dir", "lib", "--reload-include", "*.toml")
    assert cfg.reload_dirs == ("src", "lib")
    assert cfg.reload_includes == ("*.toml",)


def test_reload_filter_matches_includes_and_skips_excludes_below_the_watched_directory(tmp_path: Path) -> None:
    root = tmp_path / ".hidden-parent" / "project"  # a dot above the root must not hide the project
    watch = SourceFilter([root], includes=(), excludes=("migrations",))
    assert watch.matches(str(root / "app.py"))
    assert watch.matches(str(root / "pkg" / "views.py"))
    assert not watch.matches(str(root / "README.md"))
    assert not watch.matches(str(root / "pkg" / "__pycache__" / "views.py"))
    assert not watch.matches(str(root / ".venv" / "lib" / "x.py"))
    assert not watch.matches(str(root / "app.pyc"))
    assert not watch.matches(str(root / "pkg" / "migrations" / "0001.py"))
    templates = SourceFilter([root], includes=("*.py", "*.html"), excludes=())
    assert templates.matches(str(root / "templates" / "index.html"))


def test_reload_without_watchfiles_says_what_to_install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "watchfiles", None)  # what `import watchfiles` sees when it is absent
    with pytest.raises(ConfigError, match=r"pip install 'kestrelpy\[reload\]'"):
        watch_for_changes([str(tmp_path)], (), ())


def test_reload_dir_must_exist(tmp_path: Path) -> None:
    pytest.importorskip("watchfiles")
    with pytest.raises(ConfigError, match="is not a directory"):
        watch_for_changes([str(tmp_path / "missing")], (), ())


@pytest.mark.skipif(platform.IS_WINDOWS, reason="the POSIX hand-over passes descriptors")
def test_socket_hand_over_round_trip_keeps_the_listening_socket() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    with listener:
        exported = platform.export_socket(listener, pid=0)
        assert exported == ("fd", listener.fileno())
        adopted = platform.import_socket(exported)
        try:
            assert adopted.getsockname() == listener.getsockname()
        finally:
            adopted.detach()  # the same descriptor: leave closing it to `listener`
    with pytest.raises(ValueError, match="unknown socket hand-over"):
        platform.import_socket(("pigeon", 1))


def test_exit_descriptions_name_the_signal() -> None:
    assert platform.describe_exit(3) == "exited with code 3"
    assert platform.describe_exit(-signal.SIGKILL) == "was killed by SIGKILL"


def test_supervisor_signal_roles() -> None:
    roles = platform.supervisor_signals()
    assert roles[signal.SIGINT] == "stop"
    if not platform.IS_WINDOWS:
        assert roles[signal.SIGTERM] == "stop"
        assert roles[signal.SIGHUP] == "roll"
        assert roles[signal.SIGTTIN] == "add"
        assert roles[signal.SIGTTOU] == "remove"


def test_resident_memory_is_plausible() -> None:
    rss = platform.resident_memory()
    if sys.platform.startswith("linux"):
        assert rss is not None and 5 * 1024 * 1024 < rss < 4 * 1024**3
