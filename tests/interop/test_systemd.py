"""systemd socket activation for real: systemd-socket-activate binds a privileged port as root and
hands it to kestrelpy running as uid 65534 (nobody), which needs no flag to find it."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from tests.support.interop import APP, APP_DIR, ROOT, Process, http_get, require_tool

NOBODY = 65534


def unit(name: str) -> dict[str, dict[str, list[str]]]:
    """A systemd unit file as {section: {key: [values]}} (keys may repeat)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for raw in (ROOT / "deploy" / name).read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        key, sep, value = line.partition("=")
        assert sep, f"{name}: not KEY=VALUE: {raw!r}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def test_unit_files_describe_activation_on_port_80_for_an_unprivileged_service() -> None:
    socket_unit, service = unit("kestrelpy.socket"), unit("kestrelpy.service")
    assert socket_unit["Socket"]["ListenStream"] == ["80"]
    assert service["Unit"]["Requires"] == ["kestrelpy.socket"]
    unprivileged = service["Service"].get("DynamicUser") == ["yes"] or service["Service"].get("User", ["root"]) != [
        "root"
    ]
    assert unprivileged
    assert service["Service"]["CapabilityBoundingSet"] == [""]  # no CAP_NET_BIND_SERVICE: systemd bound port 80
    exec_start = service["Service"]["ExecStart"][0].split()
    assert exec_start[0].endswith("/kestrelpy")
    assert not {"--port", "--host", "--bind", "--uds", "--urls"} & set(exec_start)  # LISTEN_FDS says where


def privileged_free_port(preferred: int) -> int:
    for port in (preferred, *range(980, 700, -1)):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    pytest.skip("no free port below 1024 on 127.0.0.1")


def python_for_nobody(setpriv: str) -> tuple[str, dict[str, str]]:
    """An interpreter uid 65534 can run, with this checkout and its dependencies importable."""
    paths = [str(ROOT), sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": os.pathsep.join(dict.fromkeys(paths)), "PYTHONDONTWRITEBYTECODE": "1"}
    ours = f"{sys.version_info[0]}.{sys.version_info[1]}"
    for candidate in dict.fromkeys([os.path.realpath(sys.executable), sys.executable, f"/usr/bin/python{ours}"]):
        probe = subprocess.run(
            [
                setpriv,
                f"--reuid={NOBODY}",
                f"--regid={NOBODY}",
                "--clear-groups",
                candidate,
                "-c",
                "import sys, kestrelpy.cli; print('%d.%d' % sys.version_info[:2])",
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        if probe.returncode == 0 and probe.stdout.strip() == ours:
            return candidate, env
    pytest.skip(f"no Python {ours} that uid {NOBODY} may run with this checkout importable")


@pytest.mark.skipif(os.geteuid() != 0, reason="binding a privileged port and switching to uid 65534 needs root")
def test_socket_activation_privileged_port_unprivileged_server() -> None:
    activate = require_tool("systemd-socket-activate", "systemd")
    setpriv = require_tool("setpriv", "util-linux")
    python, env = python_for_nobody(setpriv)
    socket_unit, service = unit("kestrelpy.socket"), unit("kestrelpy.service")
    port = privileged_free_port(int(socket_unit["Socket"]["ListenStream"][0]))  # 80 unless it is taken
    fdname = socket_unit["Socket"]["FileDescriptorName"][0]
    options = service["Service"]["ExecStart"][0].split()[2:]  # the unit's flags, after the binary and app
    argv = [
        activate,
        "--listen",
        f"127.0.0.1:{port}",
        f"--fdname={fdname}",
        *(f"--setenv={k}={v}" for k, v in env.items()),
        setpriv,
        f"--reuid={NOBODY}",
        f"--regid={NOBODY}",
        "--clear-groups",
        python,
        "-m",
        "kestrelpy",
        APP,
        "--app-dir",
        APP_DIR,
        *options,
    ]
    with Process(argv, env=env, cwd="/") as activator:
        activator.wait_for(rf"Listening on 127\.0\.0\.1:{port} as 3", timeout=10)
        # The first connection makes systemd-socket-activate start kestrelpy; it waits in the backlog.
        status, _, body = http_get(("127.0.0.1", port), "/whoami", timeout=20)
        seen = json.loads(body)
        assert status == 200
        assert seen["uid"] == NOBODY and seen["server"] == ["127.0.0.1", port]
        assert seen["listen_env"] == []  # LISTEN_FDS, LISTEN_PID and LISTEN_FDNAMES were unset
        activator.wait_for(rf"Listening on http://127\.0\.0\.1:{port}\b")
        status_file = Path(f"/proc/{seen['pid']}/status").read_text()
        assert f"Uid:\t{NOBODY}\t{NOBODY}" in status_file
        assert "CapEff:\t0000000000000000" in status_file
        for _ in range(3):
            assert http_get(("127.0.0.1", port), "/")[2] == b"ok"
        assert activator.stop() == 0
        assert "Traceback" not in activator.output
