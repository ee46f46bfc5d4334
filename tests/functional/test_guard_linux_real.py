"""The startup guard against the real Linux kernel.

Each privileged scenario runs in a child process inside a fresh network namespace (`unshare --net`), where
the child may set net.ipv4.ip_unprivileged_port_start without touching the host's value, then drops to uid
65534 and compares the guard's prediction with a real bind on loopback. These need root (CI runs as root)
and skip with the reason when namespaces are not permitted. The TIME_WAIT case and the "address not on
this host" cases need no privileges; those only ever try binds, and never send anything.
The authbind case also takes a private mount namespace, so its rules directory never replaces the host's
/etc/authbind.
"""

from __future__ import annotations

import errno
import itertools
import json
import os
import shutil
import site
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

import kestrelpy
from kestrelpy.endpoints import TcpEndpoint
from kestrelpy.guard import check, explain, predict

# The child: `setup` runs as root inside the new network namespace and then execs the rest of its argv;
# `probe` predicts and really binds each (host, port) and prints the results as JSON; `holder` and
# `inherit` are the scenarios that need a second process in the same namespace.
CHILD = r"""
import fcntl, json, os, socket, struct, subprocess, sys, time
from kestrelpy.endpoints import FdEndpoint, TcpEndpoint
from kestrelpy.guard import explain, predict

def lo_up():
    s = socket.socket()
    req = struct.pack("16sh", b"lo", 0)
    flags = struct.unpack("16sh", fcntl.ioctl(s, 0x8913, req))[1]      # SIOCGIFFLAGS
    fcntl.ioctl(s, 0x8914, struct.pack("16sh", b"lo", flags | 1))       # SIOCSIFFLAGS, IFF_UP
    s.close()

def real_bind(host, port, reuse=True):
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(family, socket.SOCK_STREAM)
    if reuse:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind((host, port))
        s.listen()
        return None, None
    except OSError as exc:
        return exc.errno, explain(exc, TcpEndpoint(host, port)).code
    finally:
        s.close()

def probe(cases):
    out = []
    for host, port in cases:
        ep = TcpEndpoint(host, port)
        predicted = [f.code for f in predict([ep])]
        errno, explained = real_bind(host, port)
        out.append({"host": host, "port": port, "predicted": predicted, "errno": errno,
                    "explained": explained, "euid": os.geteuid()})
    return out

NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
mode, arg = sys.argv[1], json.loads(sys.argv[2])
rest = sys.argv[3:]
if mode == "setup":
    if arg.get("lo", True):
        lo_up()
    if "threshold" in arg:
        with open("/proc/sys/net/ipv4/ip_unprivileged_port_start", "w") as f:
            f.write(str(arg["threshold"]))
    for source, target in arg.get("bind_mounts", []):  # only ever inside a private mount namespace
        subprocess.run(["mount", "--bind", source, target], check=True)
    os.execvp(rest[0], rest)
elif mode == "probe":
    print(json.dumps(probe([tuple(c) for c in arg["cases"]])))
elif mode == "holder":
    # uid 65534 listens on 127.0.0.1:PORT; each probe command (a uid) predicts, binds and explains.
    ready_r, ready_w = os.pipe()
    code = ("import os,socket,sys;s=socket.socket();s.bind(('127.0.0.1',%d));s.listen();"
            "os.write(%d,b'x');sys.stdin.read()" % (arg["port"], ready_w))
    holder = subprocess.Popen([*NOBODY, sys.executable, "-c", code], stdin=subprocess.PIPE, pass_fds=[ready_w])
    os.close(ready_w)
    os.read(ready_r, 1)
    results = {"holder_pid": holder.pid, "views": {}}
    try:
        for uid in arg["uids"]:
            argv = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", sys.executable, "-c",
                    CHILD_SOURCE, "view", json.dumps({"port": arg["port"]})]
            done = subprocess.run(argv, capture_output=True, text=True, timeout=20)
            results["views"][str(uid)] = json.loads(done.stdout) if done.returncode == 0 else done.stderr
    finally:
        holder.kill()  # by its own handle (pid), never by name
        holder.wait()
    print(json.dumps(results))
elif mode == "view":
    ep = TcpEndpoint("127.0.0.1", arg["port"])
    (finding,) = predict([ep]) or [None]
    errno, _ = real_bind("127.0.0.1", arg["port"])
    s = socket.socket()
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", arg["port"]))
        explained = None
    except OSError as exc:
        explained = explain(exc, ep)
    finally:
        s.close()
    print(json.dumps({"predicted": finding.code if finding else None,
                      "predicted_summary": finding.summary if finding else "",
                      "errno": errno,
                      "explained": explained.code if explained else None,
                      "explained_text": explained.render() if explained else ""}))
elif mode == "inherit":
    # root binds a privileged port, then a uid 65534 child inherits the listening socket as a descriptor.
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", arg["port"]))
    s.listen()
    fd = s.fileno()
    code = ("import json,os;from kestrelpy.endpoints import FdEndpoint,TcpEndpoint;from kestrelpy.guard import predict;"
            "print(json.dumps({'fd':[f.code for f in predict([FdEndpoint(%d)])],"
            "'tcp':[f.code for f in predict([TcpEndpoint('127.0.0.1',%d)])],'euid':os.geteuid()}))" % (fd, arg["port"]))
    done = subprocess.run([*NOBODY, sys.executable, "-c", code], capture_output=True, text=True, pass_fds=[fd],
                          timeout=20)
    print(done.stdout if done.returncode == 0 else json.dumps({"error": done.stderr}))
"""
CHILD_PROGRAM = "CHILD_SOURCE = " + repr(CHILD) + "\n" + CHILD

NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
AMBIENT = [*NOBODY, "--inh-caps=+net_bind_service", "--ambient-caps=+net_bind_service"]


def _unprivileged_python() -> tuple[str, dict[str, str]] | str:
    """An interpreter uid 65534 can run with kestrelpy importable, or why there is none.

    The test interpreter may live where uid 65534 cannot enter (a pyenv under /root); then the system
    interpreter of the same version is used, with the project and our site-packages on PYTHONPATH.
    """
    project = str(Path(kestrelpy.__file__).resolve().parents[1])
    paths = [project, *site.getsitepackages(), os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p)}
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    for exe in dict.fromkeys([sys.executable, f"/usr/bin/python{version}", f"/usr/local/bin/python{version}"]):
        if not os.path.exists(exe):
            continue
        check = [*NOBODY, "/bin/sh", "-c", 'exec "$0" -c "import kestrelpy.guard"', exe]
        try:
            done = subprocess.run(check, env=env, capture_output=True, timeout=20)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if done.returncode == 0:
            return exe, env
    return f"no Python {version} interpreter that uid 65534 may run and import kestrelpy with"


def _py(mode: str, arg: dict[str, Any]) -> list[str]:
    assert isinstance(CHILD_PY, tuple)
    return [CHILD_PY[0], "-c", CHILD_PROGRAM, mode, json.dumps(arg)]


def _namespaces_usable() -> str | None:
    """None when the privileged scenarios can run here, else the reason they cannot."""
    if os.name != "posix" or not sys.platform.startswith("linux"):
        return "Linux only"
    if os.geteuid() != 0:
        return "needs root to create network namespaces and switch uid (CI runs as root)"
    for tool in ("unshare", "setpriv"):
        if shutil.which(tool) is None:
            return f"`{tool}` (util-linux) is not installed"
    try:
        done = subprocess.run(["unshare", "--net", "true"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unshare failed: {exc}"
    if done.returncode != 0:
        return f"network namespaces are not permitted here: {done.stderr.strip()}"
    return None


REASON = _namespaces_usable()
CHILD_PY = _unprivileged_python() if REASON is None else REASON
if isinstance(CHILD_PY, str):
    REASON = CHILD_PY
needs_netns = pytest.mark.skipif(REASON is not None, reason=REASON or "")


def _run(argv: list[str]) -> Any:
    assert isinstance(CHILD_PY, tuple)
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30, env=CHILD_PY[1])
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _in_netns(setup: dict[str, Any], *prefix_and_child: str) -> Any:
    return _run(["unshare", "--net", "--", *_py("setup", setup), *prefix_and_child])


CASES_80 = [["127.0.0.1", 79], ["127.0.0.1", 80], ["::1", 79], ["::1", 80], ["127.0.0.1", 443]]


def _host_threshold() -> str:
    with open("/proc/sys/net/ipv4/ip_unprivileged_port_start") as f:
        return f.read()


@needs_netns
def test_prediction_matches_real_bind_around_a_lowered_threshold() -> None:
    before = _host_threshold()
    results = _in_netns({"threshold": 80}, *NOBODY, *_py("probe", {"cases": CASES_80}))
    assert _host_threshold() == before  # only the private namespace changed
    for r in results:
        assert r["euid"] == 65534
        privileged = r["port"] < 80
        assert (r["errno"] == 13) is privileged, r
        assert (r["predicted"] == ["KP-LINUX-PRIVILEGED-PORT"]) is privileged, r
        assert r["explained"] == ("KP-LINUX-PRIVILEGED-PORT" if privileged else None), r


@needs_netns
def test_prediction_matches_real_bind_at_the_default_threshold() -> None:
    cases = [["127.0.0.1", 80], ["::1", 1023], ["127.0.0.1", 1024], ["::1", 1024]]
    results = _in_netns({}, *NOBODY, *_py("probe", {"cases": cases}))
    for r in results:
        privileged = r["port"] < 1024
        assert (r["errno"] == 13) is privileged, r
        assert r["predicted"] == (["KP-LINUX-PRIVILEGED-PORT"] if privileged else []), r


@needs_netns
def test_ambient_capability_is_honoured() -> None:
    results = _in_netns({}, *AMBIENT, *_py("probe", {"cases": [["127.0.0.1", 80], ["::1", 80]]}))
    assert [(r["euid"], r["predicted"], r["errno"]) for r in results] == [(65534, [], None)] * 2


@needs_netns
def test_user_namespace_root_without_the_network_namespace() -> None:
    # uid 65534 becomes root of a new user namespace but stays in a network namespace owned by the parent.
    trap = _in_netns(
        {}, *NOBODY, "unshare", "--user", "--map-root-user", "--", *_py("probe", {"cases": [["127.0.0.1", 80]]})
    )
    if trap[0]["euid"] != 0:
        pytest.skip("unprivileged user namespaces are disabled here")
    assert trap == [
        {
            "host": "127.0.0.1",
            "port": 80,
            "predicted": ["KP-LINUX-USERNS-NOT-OWNER"],
            "errno": 13,
            "explained": "KP-LINUX-USERNS-NOT-OWNER",
            "euid": 0,
        }
    ]
    # The same user with its own network namespace owns it, and the capability then counts.
    owned = _run(
        [*NOBODY, "unshare", "--user", "--map-root-user", "--net", "--", *_py("probe", {"cases": [["127.0.0.1", 80]]})]
    )
    assert [(r["predicted"], r["errno"]) for r in owned] == [([], None)]


@needs_netns
def test_port_holder_is_named_when_visible_and_only_the_user_otherwise() -> None:
    result = _in_netns({}, *_py("holder", {"port": 18080, "uids": [0, 65534, 1000]}))
    pid = str(result["holder_pid"])
    views = result["views"]
    for uid in ("0", "65534", "1000"):
        view = views[uid]
        assert isinstance(view, dict), view
        assert view["errno"] == 98
        assert view["predicted"] == view["explained"] == "KP-PORT-IN-USE"
    assert f"pid {pid}" in views["0"]["predicted_summary"]  # root sees every process
    assert f"pid {pid}" in views["65534"]["explained_text"]  # the owner sees its own process
    hidden = views["1000"]["explained_text"]
    assert pid not in hidden and "nobody" in hidden and "ss -ltnp" in hidden


@needs_netns
def test_inherited_socket_skips_the_privilege_probe() -> None:
    result = _in_netns({}, *_py("inherit", {"port": 80}))
    # The descriptor is accepted as is; the same address as a TCP endpoint would need the privilege (and
    # is, of course, also held by the socket the parent passed down).
    assert result == {"fd": [], "tcp": ["KP-LINUX-PRIVILEGED-PORT", "KP-PORT-IN-USE"], "euid": 65534}


def test_time_wait_left_by_a_server_without_so_reuseaddr() -> None:
    if not sys.platform.startswith("linux"):
        pytest.skip("reads /proc/net/tcp")
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))  # no SO_REUSEADDR, like a foreign server
    listener.listen()
    port = listener.getsockname()[1]
    client = socket.create_connection(("127.0.0.1", port))
    accepted, _ = listener.accept()
    accepted.close()  # the server side closes first, so its end goes to TIME_WAIT on `port`
    client.recv(1)
    client.close()
    listener.close()
    time.sleep(0.05)
    ep = TcpEndpoint("127.0.0.1", port)
    # the cheap pre-start prediction only asks the kernel for listeners; `kestrelpy check` sees TIME_WAIT
    assert predict([ep]) == []
    assert [(f.code, f.severity) for f in check([ep]).findings] == [("KP-PORT-TIME-WAIT", "warning")]
    probe = socket.socket()
    try:
        with pytest.raises(OSError) as info:
            probe.bind(("127.0.0.1", port))
    finally:
        probe.close()
    finding = explain(info.value, ep)
    assert finding.code == "KP-PORT-TIME-WAIT"
    assert any("TIME_WAIT" in fact for fact in finding.facts)


AUTHBIND_DIR = "/etc/authbind"


def _authbind_usable() -> str | None:
    """None when the authbind scenario can run here, else the reason it cannot."""
    if REASON is not None:
        return REASON
    if shutil.which("authbind") is None or not os.path.isdir(AUTHBIND_DIR):
        return "authbind is not installed (Debian package `authbind`)"
    if shutil.which("mount") is None:
        return "`mount` (util-linux) is not installed"
    done = subprocess.run(["unshare", "--mount", "--net", "true"], capture_output=True, text=True, timeout=10)
    if done.returncode != 0:
        return f"mount namespaces are not permitted here: {done.stderr.strip()}"
    return None


def _authbind_state() -> tuple[list[tuple[str, int, int]], bool]:
    """The host's authbind rules (path, mode, owner) and whether anything is mounted over them."""
    rules = []
    for root, _dirs, files in os.walk(AUTHBIND_DIR):
        for name in files:
            st = os.stat(os.path.join(root, name))
            rules.append((os.path.join(root, name), st.st_mode, st.st_uid))
    mounted = any(line.split()[4] == AUTHBIND_DIR for line in Path("/proc/self/mountinfo").read_text().splitlines())
    return sorted(rules), mounted


AUTHBIND_REASON = _authbind_usable()


@pytest.mark.skipif(AUTHBIND_REASON is not None, reason=AUTHBIND_REASON or "")
def test_authbind_refusal_and_permission() -> None:
    # A private rules directory lets uid 65534 bind port 81 and nothing else; it is bind-mounted over
    # /etc/authbind inside a new mount namespace, so the host's rules stay as they are.
    before = _authbind_state()
    rules = Path(tempfile.mkdtemp(prefix="kestrelpy-authbind-"))
    try:
        for sub in ("byport", "byaddr", "byuid"):
            (rules / sub).mkdir()
        allowed = rules / "byport" / "81"
        allowed.touch()
        os.chown(allowed, 65534, 65534)
        os.chmod(allowed, 0o500)  # authbind's helper asks access(X_OK) as the calling user
        for path in (rules, rules / "byport", rules / "byaddr", rules / "byuid"):
            os.chmod(path, 0o755)
        cases = {"cases": [["127.0.0.1", 80], ["127.0.0.1", 81]]}
        argv = ["unshare", "--mount", "--net", "--", *_py("setup", {"bind_mounts": [[str(rules), AUTHBIND_DIR]]})]
        results = _run([*argv, *NOBODY, "authbind", *_py("probe", cases)])
    finally:
        shutil.rmtree(rules, ignore_errors=True)
    assert _authbind_state() == before  # nothing changed or stayed mounted on the host
    refused, permitted = results
    assert refused["euid"] == 65534
    # authbind decides low ports itself, so nothing is predicted; its refusal is EPERM, not EACCES.
    assert (refused["predicted"], refused["errno"], refused["explained"]) == ([], 1, "KP-LINUX-AUTHBIND-DENIED")
    assert (permitted["predicted"], permitted["errno"], permitted["explained"]) == ([], None, None)


# --- An address this host does not have (no privileges needed; bind attempts only) -----------------

ELSEWHERE_V4 = "192.0.2.1"  # TEST-NET-1 (RFC 5737): assigned to no host by design
ELSEWHERE_V6 = "2001:db8::1"  # the IPv6 documentation prefix (RFC 3849)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _bind_error(host: str, port: int) -> OSError | None:
    """What a real bind (no listen, closed at once) to (host, port) raised, or None when it worked."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        sock = socket.socket(family, socket.SOCK_STREAM)
    except OSError as exc:
        return exc
    try:
        sock.bind((host, port))
    except OSError as exc:
        return exc
    finally:
        sock.close()
    return None


def _ipv6_usable() -> bool:
    return socket.has_ipv6 and _bind_error("::1", 0) is None


def _a_local_ipv4_address() -> str | None:
    """A non-loopback IPv4 address of this host, read from the kernel's routing table (no traffic)."""
    try:
        lines = Path("/proc/net/fib_trie").read_text().splitlines()
    except OSError:
        return None
    for above, line in itertools.pairwise(lines):
        address = above.strip().removeprefix("|-- ")
        if line.strip() == "/32 host LOCAL" and not address.startswith("127."):
            return address
    return None


@pytest.mark.parametrize("host", [ELSEWHERE_V4, ELSEWHERE_V6])
def test_address_not_on_this_host_is_predicted_and_the_bind_agrees(host: str) -> None:
    if not sys.platform.startswith("linux"):
        pytest.skip("Linux errno values")
    if ":" in host and not _ipv6_usable():
        pytest.skip("IPv6 is not available here")
    port = _free_port()
    error = _bind_error(host, port)
    if error is None:
        pytest.skip(f"{host} is assigned to an interface of this host")
    assert error.errno == errno.EADDRNOTAVAIL, error
    ep = TcpEndpoint(host, port)
    predicted = predict([ep])
    assert [(f.code, f.severity) for f in predicted] == [("KP-ADDR-NOT-AVAILABLE", "error")]
    assert [f.code for f in check([ep]).findings] == ["KP-ADDR-NOT-AVAILABLE"]
    assert explain(error, ep).code == "KP-ADDR-NOT-AVAILABLE"


def test_loopback_wildcard_and_own_addresses_give_no_such_finding() -> None:
    if not sys.platform.startswith("linux"):
        pytest.skip("reads /proc/net/fib_trie")
    hosts = ["127.0.0.1", "0.0.0.0", "localhost"]
    if _ipv6_usable():
        hosts += ["::1", "::"]
    own = _a_local_ipv4_address()
    if own is not None:
        hosts.append(own)
    port = _free_port()
    for host in hosts:
        ep = TcpEndpoint(host, port)
        codes = [f.code for f in predict([ep])] + [f.code for f in check([ep]).findings]
        assert "KP-ADDR-NOT-AVAILABLE" not in codes, (host, codes)
    if own is not None:
        assert _bind_error(own, 0) is None  # the address really is this host's


def _kestrelpy(*argv: str) -> subprocess.CompletedProcess[str]:
    project = str(Path(kestrelpy.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (project, os.environ.get("PYTHONPATH")) if p)}
    return subprocess.run(
        [sys.executable, "-m", "kestrelpy", *argv], capture_output=True, text=True, env=env, timeout=30
    )


def test_check_command_reports_an_address_not_on_this_host() -> None:
    if not sys.platform.startswith("linux"):
        pytest.skip("Linux errno values")
    port = _free_port()
    if _bind_error(ELSEWHERE_V4, port) is None:
        pytest.skip(f"{ELSEWHERE_V4} is assigned to an interface of this host")
    done = _kestrelpy("check", "--host", ELSEWHERE_V4, "--port", str(port))
    assert done.returncode == 1, done.stdout + done.stderr
    assert "[KP-ADDR-NOT-AVAILABLE]" in done.stdout
    assert "No problems found" not in done.stdout
    assert "Traceback" not in done.stdout + done.stderr
    clear = _kestrelpy("check", "--host", "127.0.0.1", "--port", str(port))
    assert clear.returncode == 0, clear.stdout + clear.stderr
    assert "KP-ADDR-NOT-AVAILABLE" not in clear.stdout


def test_failed_start_on_an_address_not_on_this_host(tmp_path: Path) -> None:
    if not sys.platform.startswith("linux"):
        pytest.skip("Linux errno values")
    port = _free_port()
    if _bind_error(ELSEWHERE_V4, port) is None:
        pytest.skip(f"{ELSEWHERE_V4} is assigned to an interface of this host")
    (tmp_path / "addr_app.py").write_text("async def app(scope, receive, send):\n    pass\n", encoding="utf-8")
    done = _kestrelpy(
        "addr_app:app", "--app-dir", str(tmp_path), "--host", ELSEWHERE_V4, "--port", str(port), "--lifespan", "off"
    )
    assert done.returncode == 1, done.stderr
    assert f"predicted: KP-ADDR-NOT-AVAILABLE on {ELSEWHERE_V4}:{port}" in done.stderr
    assert f"kestrelpy cannot listen on {ELSEWHERE_V4}:{port} [KP-ADDR-NOT-AVAILABLE]" in done.stderr
    assert "Traceback" not in done.stdout + done.stderr
