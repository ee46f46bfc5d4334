#!/usr/bin/env python
"""Benchmark kestrelpy against other ASGI servers with wrk on loopback.

Every (server, workload) pair gets a fresh server process. Servers are
interleaved inside each round (A B C A B C ...) so that slow drift of the
shared machine hits all of them alike; the report gives medians over rounds
and the median of the per-round ratios to uvicorn (httptools + uvloop).

    python bench/run.py --quick
    python bench/run.py --rounds 3 --duration 5 --servers all --markdown bench/out/report.md
    python bench/run.py --tls --servers kestrelpy,uvicorn,granian --workloads plaintext,close
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import http.client
import ipaddress
import json
import os
import platform
import resource
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
LUA_DIR = REPO_ROOT / "bench" / "lua"
OUT_DIR = REPO_ROOT / "bench" / "out"
HOST = "127.0.0.1"
BASELINE = "uvicorn"
RESULT_MARKER = "BENCH_RESULT "
READY_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 5.0
BAD_ANSWER_GRACE_S = 1.0
# Share of a pinned CPU taken by unrelated processes above which a run is flagged as disturbed.
DISTURBED_LOAD = 0.10
# wrk gives up on a single response after this long and counts a timeout error.
WRK_TIMEOUT = "5s"
# Extra time allowed for a wrk process beyond its -d before we kill it.
WRK_GRACE_S = 20.0
CLK_TCK = os.sysconf("SC_CLK_TCK")


# --------------------------------------------------------------------------- TLS


@dataclass(frozen=True)
class TlsFiles:
    """One self-signed certificate for 127.0.0.1 and its key, as PEM files (the key in PKCS#8, which
    granian requires)."""

    certfile: Path
    keyfile: Path


def make_certificate(directory: Path) -> TlsFiles:
    """A fresh ECDSA P-256 certificate for the run: made with the cryptography package when it is
    installed, else with `openssl req`. Every server gets the same one, so they do the same handshake."""
    files = TlsFiles(directory / "bench-cert.pem", directory / "bench-key.pem")
    try:
        write_certificate_with_cryptography(files)
    except ImportError:
        subprocess.run(
            [
                "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                "-keyout", str(files.keyfile), "-out", str(files.certfile),
            ],
            check=True, capture_output=True,
        )  # fmt: skip
    return files


def write_certificate_with_cryptography(files: TlsFiles) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, HOST)])
    now = dt.datetime.now(dt.timezone.utc)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(HOST))]), critical=False)
        .sign(key, hashes.SHA256())
    )
    files.certfile.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    pkcs8 = serialization.PrivateFormat.PKCS8
    files.keyfile.write_bytes(key.private_bytes(serialization.Encoding.PEM, pkcs8, serialization.NoEncryption()))


def client_context() -> ssl.SSLContext:
    """The probes' client side: the certificate is self-signed and made for this run, so it is not checked."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


# --------------------------------------------------------------------------- servers


@dataclass(frozen=True)
class Server:
    name: str
    package: str  # the Python package whose version the report shows ("" for none)
    build_args: Callable[[str, int], list[str]]  # (app target, port) -> args after `python`
    # (port, scratch directory) -> the whole command, for a server that is not a Python module
    command: Callable[[int, Path], list[str]] | None = None
    workloads: frozenset[str] | None = None  # the workloads it can serve; None: all of them
    # (certificate, key) -> the flags that serve HTTPS with them; None: no TLS in the comparison
    tls_args: Callable[[TlsFiles], list[str]] | None = None

    def supports(self, workload: str, tls: bool = False) -> bool:
        return (self.workloads is None or workload in self.workloads) and (not tls or self.tls_args is not None)

    def argv(self, app: str, port: int, scratch: Path, tls: TlsFiles | None = None) -> list[str]:
        if self.command is not None:
            return self.command(port, scratch)
        extra = self.tls_args(tls) if tls is not None and self.tls_args is not None else []
        return [sys.executable, *self.build_args(app, port), *extra]


def uvicorn_style_tls(tls: TlsFiles) -> list[str]:
    # kestrelpy: an endpoint given by --host/--port serves HTTPS once a certificate is configured.
    return ["--ssl-certfile", str(tls.certfile), "--ssl-keyfile", str(tls.keyfile)]


def granian_tls(tls: TlsFiles) -> list[str]:
    return ["--ssl-certificate", str(tls.certfile), "--ssl-keyfile", str(tls.keyfile)]


def hypercorn_tls(tls: TlsFiles) -> list[str]:
    return ["--certfile", str(tls.certfile), "--keyfile", str(tls.keyfile)]


def kestrelpy_args(http: str | None, *flags: str) -> Callable[[str, int], list[str]]:
    def build(app: str, port: int) -> list[str]:
        extra = ["--http", http] if http else []
        return ["-m", "kestrelpy", app, "--host", HOST, "--port", str(port), "--no-access-log", *extra, *flags]

    return build


def kestrelpy_from_tree(tree: Path, http: str | None) -> Callable[[str, int], list[str]]:
    """kestrelpy imported from another checkout (the apps still come from this one's bench/)."""
    start = f"import sys; sys.path.insert(0, {str(tree.resolve())!r}); from kestrelpy.cli import main; sys.exit(main())"

    def build(app: str, port: int) -> list[str]:
        return ["-c", start, *kestrelpy_args(http)(app, port)[2:]]

    return build


def add_baseline_tree(tree: Path) -> None:
    """Register kestrelpy-base and kestrelpy-base-h11, served from `tree`, for a before/after in one run."""
    if not (tree / "kestrelpy" / "__init__.py").is_file():
        raise SystemExit(f"--baseline-tree: no kestrelpy package in {tree}")
    for name, parser in (("kestrelpy-base", None), ("kestrelpy-base-h11", "h11")):
        SERVERS[name] = Server(name, "kestrelpy", kestrelpy_from_tree(tree, parser), tls_args=uvicorn_style_tls)


def uvicorn_args(http: str) -> Callable[[str, int], list[str]]:
    def build(app: str, port: int) -> list[str]:
        return [
            "-m", "uvicorn", app, "--host", HOST, "--port", str(port),
            "--no-access-log", "--loop", "uvloop", "--http", http,
        ]  # fmt: skip

    return build


def hypercorn_args(app: str, port: int) -> list[str]:
    # Hypercorn's access log is off unless --access-logfile is given.
    return ["-m", "hypercorn", app, "--bind", f"{HOST}:{port}", "--worker-class", "uvloop"]


def granian_args(app: str, port: int) -> list[str]:
    return [
        "-m", "granian", "--interface", "asgi", "--host", HOST, "--port", str(port),
        "--workers", "1", "--loop", "uvloop", "--no-access-log", app,
    ]  # fmt: skip


def raw_args(app: str, port: int) -> list[str]:
    # Always the fixed plaintext answer, whatever the app.
    return ["-m", "bench.raw_server", "--host", HOST, "--port", str(port)]


NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
NGINX_CONFIG = """\
daemon off;
master_process off;
worker_processes 1;
pid {scratch}/nginx.pid;
error_log {scratch}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {scratch}/client_body;
    proxy_temp_path {scratch}/proxy;
    fastcgi_temp_path {scratch}/fastcgi;
    uwsgi_temp_path {scratch}/uwsgi;
    scgi_temp_path {scratch}/scgi;
    keepalive_requests 100000000;
    keepalive_timeout 120s;
    server {{
        listen {host}:{port} backlog=2048;
        default_type text/plain;
        location / {{ return 200 "Hello, world!"; }}
    }}
}}
"""


def nginx_command(port: int, scratch: Path) -> list[str]:
    """nginx in the foreground as one process, from a config written for this run (stopped by PID)."""
    prefix = scratch / f"nginx-{port}"
    prefix.mkdir(parents=True, exist_ok=True)
    config = prefix / "nginx.conf"
    config.write_text(NGINX_CONFIG.format(scratch=prefix, host=HOST, port=port))
    return [NGINX, "-p", str(prefix), "-e", str(prefix / "error.log"), "-c", str(config)]


# The ceiling: no parsing or ASGI at all, only for the workloads that are plain GETs.
LIMIT_WORKLOADS = frozenset({"plaintext", "pipelined", "conn1000"})

SERVERS: dict[str, Server] = {
    s.name: s
    for s in (
        Server("kestrelpy", "kestrelpy", kestrelpy_args(None), tls_args=uvicorn_style_tls),
        Server("kestrelpy-h11", "kestrelpy", kestrelpy_args("h11"), tls_args=uvicorn_style_tls),
        # the cost of metrics: the same server with its Prometheus listener on (an ephemeral port)
        Server(
            "kestrelpy-metrics",
            "kestrelpy",
            kestrelpy_args(None, "--metrics-bind", f"{HOST}:0"),
            tls_args=uvicorn_style_tls,
        ),
        Server("uvicorn", "uvicorn", uvicorn_args("httptools"), tls_args=uvicorn_style_tls),
        Server("uvicorn-h11", "uvicorn", uvicorn_args("h11"), tls_args=uvicorn_style_tls),
        Server("hypercorn", "hypercorn", hypercorn_args, tls_args=hypercorn_tls),
        Server("granian", "granian", granian_args, tls_args=granian_tls),
        Server("raw", "", raw_args, workloads=LIMIT_WORKLOADS),
        # build_args is unused for nginx: `command` gives the whole argv.
        Server("nginx", "", raw_args, command=nginx_command, workloads=LIMIT_WORKLOADS),
    )
}
DEFAULT_SERVERS = ("kestrelpy", "uvicorn")


# --------------------------------------------------------------------------- workloads


@dataclass(frozen=True)
class Workload:
    name: str
    app: str  # an attribute of bench.apps, or a whole "module:attribute" target
    script: str  # file in bench/lua, run together with report.lua
    connections: int | None  # None: use --connections
    probe: Callable[[int, bool], str | None]  # (port, over TLS) -> problem with the response, or None
    # wrk's latency histogram is unusable with pipelining: it records one sample per batch and its
    # coordinated-omission correction, calibrated on per-response counts, files samples below the
    # histogram minimum, so the percentiles come out as 0. Report "n/a" rather than a fake number.
    latency_is_meaningful: bool = True


ECHO_PROBE_BODY = b"kestrel-bench-probe" * 8


BodyCheck = Callable[[bytes, str], bool]  # (body, content-type) -> looks right


def response_problem(
    port: int,
    tls: bool,
    method: str,
    body: bytes | None,
    check: BodyCheck,
    path: str = "/",
    content_type: str = "application/octet-stream",
) -> str | None:
    """Return why one real request does not look right, or None when it does."""
    conn = (
        http.client.HTTPSConnection(HOST, port, timeout=2, context=client_context())
        if tls
        else http.client.HTTPConnection(HOST, port, timeout=2)
    )
    try:
        headers = {"Content-Type": content_type} if body is not None else {}
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        payload = response.read()
        if response.status != 200:
            return f"status {response.status}"
        if response.getheader("content-length") is None:
            return "no content-length header"
        if not check(payload, response.getheader("content-type") or ""):
            return f"unexpected body {payload[:60]!r}"
        return None
    finally:
        conn.close()


def is_valid_json(payload: bytes) -> bool:
    try:
        json.loads(payload)
    except ValueError:
        return False
    return True


def probe_plaintext(port: int, tls: bool) -> str | None:
    return response_problem(port, tls, "GET", None, lambda b, ct: b == b"Hello, world!" and "text/plain" in ct)


def probe_json(port: int, tls: bool) -> str | None:
    return response_problem(port, tls, "GET", None, lambda b, ct: is_valid_json(b) and "json" in ct)


def probe_echo(port: int, tls: bool) -> str | None:
    return response_problem(port, tls, "POST", ECHO_PROBE_BODY, lambda b, ct: b == ECHO_PROBE_BODY)


FASTAPI_APP = "bench.fastapi_app:app"
FASTAPI_ITEM = b'{"name": "kestrel", "price": 12.5, "quantity": 3, "tags": ["bird", "fast"]}'  # as fastapi_post.lua


def probe_fastapi_post(port: int, tls: bool) -> str | None:
    def check(body: bytes, content_type: str) -> bool:
        return is_valid_json(body) and json.loads(body).get("total") == 37.5

    return response_problem(port, tls, "POST", FASTAPI_ITEM, check, "/items", "application/json")


def probe_fastapi_get(port: int, tls: bool) -> str | None:
    def check(body: bytes, content_type: str) -> bool:
        return is_valid_json(body) and json.loads(body) == {"item_id": 42, "q": "kestrel"}

    return response_problem(port, tls, "GET", None, check, "/items/42?q=kestrel")


WORKLOADS: dict[str, Workload] = {
    w.name: w
    for w in (
        Workload("plaintext", "plaintext", "get.lua", None, probe_plaintext),
        Workload("json", "json", "get.lua", None, probe_json),
        Workload("echo", "echo", "post_1k.lua", None, probe_echo),
        Workload("pipelined", "plaintext", "pipeline_16.lua", None, probe_plaintext, False),
        Workload("conn1000", "plaintext", "get.lua", 1000, probe_plaintext),
        Workload("close", "plaintext", "close.lua", None, probe_plaintext),
        Workload("fastapi-post", FASTAPI_APP, "fastapi_post.lua", None, probe_fastapi_post),
        Workload("fastapi-get", FASTAPI_APP, "fastapi_get.lua", None, probe_fastapi_get),
    )
}


# --------------------------------------------------------------------------- /proc accounting


@dataclass(frozen=True)
class ProcId:
    """A PID plus its start time, so a recycled PID is never mistaken for ours."""

    pid: int
    start_ticks: int


def read_stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # comm (field 2) may contain spaces and parentheses; everything after the last ')' is regular.
    return raw.rpartition(")")[2].split()


def process_tree(root: int) -> list[int]:
    """PIDs of root and all of its descendants (servers may fork workers)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        fields = read_stat_fields(int(entry.name))
        if fields is not None:
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    tree, pending = [], [root]
    while pending:
        pid = pending.pop()
        tree.append(pid)
        pending.extend(children.get(pid, []))
    return tree


def tree_identities(root: int) -> list[ProcId]:
    ids = []
    for pid in process_tree(root):
        fields = read_stat_fields(pid)
        if fields is not None:
            ids.append(ProcId(pid, int(fields[19])))
    return ids


def tree_cpu_seconds(root: int) -> float:
    """utime+stime of the tree, plus cutime+cstime so reaped children are not lost."""
    return sum(tree_user_system_seconds(root))


def tree_user_system_seconds(root: int) -> tuple[float, float]:
    """(user, system) CPU seconds of the tree, reaped children included: the system part is the kernel's
    work for the server (its reads and writes, which on loopback include delivering to the client)."""
    user = system = 0
    for pid in process_tree(root):
        fields = read_stat_fields(pid)
        if fields is not None:
            # After the comm: index 11..14 are utime, stime, cutime, cstime.
            user += int(fields[11]) + int(fields[13])
            system += int(fields[12]) + int(fields[14])
    return user / CLK_TCK, system / CLK_TCK


def tree_peak_rss_kib(root: int) -> int:
    total = 0
    for pid in process_tree(root):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1])
    return total


def cpu_busy_seconds(cpu: int) -> float:
    """user + nice + system time of one CPU. Interrupt time is left out: loopback traffic is
    processed in softirq context and is part of the benchmark, not a disturbance."""
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith(f"cpu{cpu} "):
            user, nice, system = (int(v) for v in line.split()[1:4])
            return (user + nice + system) / CLK_TCK
    return 0.0


def is_alive(proc_id: ProcId) -> bool:
    fields = read_stat_fields(proc_id.pid)
    return fields is not None and int(fields[19]) == proc_id.start_ticks and fields[0] != "Z"


# --------------------------------------------------------------------------- server lifecycle


@dataclass
class RunningServer:
    process: subprocess.Popen[bytes]
    port: int
    log_path: Path
    tls: bool = False

    def last_log_line(self) -> str:
        """The server's last words, usually the exception that stopped it."""
        try:
            lines = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return lines[-1].strip() if lines else "(no output)"

    def keep_log(self, name: str) -> Path:
        """Copy the log out of the temporary directory so a failure can be investigated."""
        target = OUT_DIR / "logs" / f"{name}.log"
        target.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(OSError):
            shutil.copyfile(self.log_path, target)
        return target


class ServerStartError(Exception):
    pass


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def pinned(cpu: int | None, argv: list[str]) -> list[str]:
    return ["taskset", "-c", str(cpu), *argv] if cpu is not None else argv


def start_server(
    server: Server, workload: Workload, cpu: int | None, log_dir: Path, tls: TlsFiles | None = None
) -> RunningServer:
    port = free_port()
    target = workload.app if ":" in workload.app else f"bench.apps:{workload.app}"
    argv = pinned(cpu, server.argv(target, port, log_dir, tls))
    log_path = log_dir / f"{server.name}-{workload.name}-{port}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(argv, cwd=REPO_ROOT, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    return RunningServer(process, port, log_path, tls is not None)


def wait_until_ready(running: RunningServer, workload: Workload) -> None:
    """Poll a TCP connect plus a real request until the answer is correct (bounded)."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    last_problem = "never accepted a connection"
    first_bad_answer: float | None = None
    while time.monotonic() < deadline:
        code = running.process.poll()
        if code is not None:
            raise ServerStartError(f"exited with code {code}: {running.last_log_line()}")
        try:
            problem = workload.probe(running.port, running.tls)
        except (OSError, http.client.HTTPException) as exc:
            last_problem = f"{type(exc).__name__}: {exc}"
        else:
            if problem is None:
                return
            # Tolerate a brief bad patch while the app starts up, but do not wait out the
            # full timeout for a server that answers wrongly.
            first_bad_answer = first_bad_answer or time.monotonic()
            if time.monotonic() - first_bad_answer > BAD_ANSWER_GRACE_S:
                raise ServerStartError(f"wrong answer to a probe request: {problem}")
        time.sleep(0.05)
    raise ServerStartError(f"not ready after {READY_TIMEOUT_S:.0f}s ({last_problem})")


def terminate(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM by PID, SIGKILL if it has not exited after STOP_TIMEOUT_S."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def stop_server(running: RunningServer) -> None:
    """SIGTERM by PID, SIGKILL after a timeout; then reap any forked worker left behind."""
    process = running.process
    family = tree_identities(process.pid)
    terminate(process)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    leftovers = [p for p in family if p.pid != process.pid]
    while leftovers and time.monotonic() < deadline:
        leftovers = [p for p in leftovers if is_alive(p)]
        time.sleep(0.05)
    for proc_id in leftovers:
        if is_alive(proc_id):
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc_id.pid, signal.SIGKILL)


# --------------------------------------------------------------------------- wrk


@dataclass
class WrkResult:
    requests: int
    duration_s: float
    p50_ms: float
    p99_ms: float
    errors: dict[str, int]
    client_cpu_share: float = 0.0  # wrk's CPU time / wall time; near 1.0 means the client is the bottleneck

    @property
    def requests_per_s(self) -> float:
        return self.requests / self.duration_s if self.duration_s else 0.0


class WrkError(Exception):
    pass


def compose_script(workload: Workload, script_dir: Path) -> Path:
    """wrk takes one script, so each workload script gets the reporting hook appended."""
    path = script_dir / f"{workload.name}.lua"
    if not path.exists():
        body = (LUA_DIR / workload.script).read_text() + "\n" + (LUA_DIR / "report.lua").read_text()
        path.write_text(body)
    return path


def run_wrk(
    port: int, script: Path, connections: int, duration_s: int, cpu: int | None, tls: bool = False
) -> WrkResult:
    scheme = "https" if tls else "http"  # wrk does not check the server's certificate
    argv = pinned(cpu, [
        "wrk", "-t1", f"-c{connections}", f"-d{duration_s}s", "--timeout", WRK_TIMEOUT,
        "-s", str(script), f"{scheme}://{HOST}:{port}/",
    ])  # fmt: skip
    cpu_before = children_cpu_seconds()
    started = time.monotonic()
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=duration_s + WRK_GRACE_S)
    except subprocess.TimeoutExpired as exc:
        raise WrkError(f"wrk did not finish within {duration_s + WRK_GRACE_S:.0f}s") from exc
    if done.returncode != 0:
        raise WrkError(f"wrk exited {done.returncode}: {done.stderr.strip() or done.stdout.strip()}")
    result = parse_wrk_output(done.stdout)
    # wrk is the only child reaped in this window (servers are reaped in stop_server).
    result.client_cpu_share = (children_cpu_seconds() - cpu_before) / (time.monotonic() - started)
    return result


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def parse_wrk_output(stdout: str) -> WrkResult:
    for line in stdout.splitlines():
        if line.startswith(RESULT_MARKER):
            data = json.loads(line[len(RESULT_MARKER) :])
            return WrkResult(
                requests=data["requests"],
                duration_s=data["duration_us"] / 1e6,
                p50_ms=data["latency_us"]["p50"] / 1000,
                p99_ms=data["latency_us"]["p99"] / 1000,
                errors=data["errors"],
            )
    raise WrkError(f"no result line in wrk output: {stdout.strip()[-200:]}")


# --------------------------------------------------------------------------- one measurement


@dataclass
class Measurement:
    server: str
    workload: str
    round: int
    error: str | None = None
    requests: int = 0
    requests_per_s: float = 0.0
    p50_ms: float | None = None
    p99_ms: float | None = None
    cpu_us_per_request: float = 0.0
    system_us_per_request: float = 0.0  # of which in the kernel
    server_cpu_share: float = 0.0  # of one CPU, during the measured run
    client_cpu_share: float = 0.0
    other_load: float = 0.0  # CPU share used by other processes on the pinned CPUs
    peak_rss_kib: int = 0
    errors: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True)
class Settings:
    rounds: int
    duration_s: int
    warmup_s: int
    connections: int
    server_cpu: int | None
    client_cpu: int | None
    retries: int  # extra attempts for a run disturbed by unrelated load
    tls: bool = False  # serve and load over HTTPS, with a certificate made for the run


def measure(
    server: Server, workload: Workload, round_no: int, settings: Settings, tmp: Path, tls: TlsFiles | None
) -> Measurement:
    result = Measurement(server.name, workload.name, round_no)
    running = start_server(server, workload, settings.server_cpu, tmp, tls)
    try:
        wait_until_ready(running, workload)
        load_and_record(running, workload, settings, compose_script(workload, tmp), result)
    except ServerStartError as exc:
        result.error = f"failed to start: {exc}"
    except WrkError as exc:
        result.error = str(exc)
    finally:
        stop_server(running)
    if result.error:
        log_copy = running.keep_log(f"{server.name}-{workload.name}-r{round_no}")
        result.error += f" (server log: {log_copy.relative_to(REPO_ROOT)})"
    return result


def load_and_record(
    running: RunningServer, workload: Workload, settings: Settings, script: Path, result: Measurement
) -> None:
    """Warm up, then run the measured load and fill in result."""
    connections = workload.connections or settings.connections
    if settings.warmup_s > 0:
        run_wrk(running.port, script, connections, settings.warmup_s, settings.client_cpu, running.tls)
    pid = running.process.pid
    pinned_cpus = [c for c in (settings.server_cpu, settings.client_cpu) if c is not None]
    busy_before = [cpu_busy_seconds(c) for c in pinned_cpus]
    user_before, system_before = tree_user_system_seconds(pid)
    wrk = run_wrk(running.port, script, connections, settings.duration_s, settings.client_cpu, running.tls)
    user_after, system_after = tree_user_system_seconds(pid)
    system_used = system_after - system_before
    cpu_used = user_after - user_before + system_used
    busy = [cpu_busy_seconds(c) - before for c, before in zip(pinned_cpus, busy_before, strict=True)]
    result.peak_rss_kib = tree_peak_rss_kib(pid)
    if running.process.poll() is not None:
        result.error = f"server died during the run: {running.last_log_line()}"
    elif wrk.requests == 0:
        result.error = f"no responses (wrk errors: {wrk.errors})"
    result.requests = wrk.requests
    result.requests_per_s = wrk.requests_per_s
    if workload.latency_is_meaningful:
        result.p50_ms, result.p99_ms = wrk.p50_ms, wrk.p99_ms
    result.errors = wrk.errors
    result.cpu_us_per_request = cpu_used * 1e6 / wrk.requests if wrk.requests else 0.0
    result.system_us_per_request = system_used * 1e6 / wrk.requests if wrk.requests else 0.0
    seconds = wrk.duration_s or settings.duration_s
    result.server_cpu_share = cpu_used / seconds
    result.client_cpu_share = wrk.client_cpu_share
    if len(busy) == 2:
        # Whatever else ran on the two pinned CPUs; high values mean a disturbed run.
        other = (busy[0] - cpu_used, busy[1] - wrk.client_cpu_share * seconds)
        result.other_load = max(0.0, *other) / seconds


# --------------------------------------------------------------------------- report


def fmt_number(value: float, digits: int = 0) -> str:
    return f"{value:,.{digits}f}"


def disturbance_note(runs: list[Measurement]) -> str:
    worst = max(m.other_load for m in runs)
    return f"other load on pinned CPUs up to {worst:.0%}" if worst >= DISTURBED_LOAD else ""


def cpu_shares(runs: list[Measurement]) -> str:
    server = statistics.median(m.server_cpu_share for m in runs)
    client = statistics.median(m.client_cpu_share for m in runs)
    return f"{server:.0%} / {client:.0%}"


def median_ms(values: list[float | None]) -> str:
    known = [v for v in values if v is not None]
    return fmt_number(statistics.median(known), 2) if known else "n/a"


def per_round_ratios(runs: list[Measurement], baseline: list[Measurement]) -> list[float]:
    """This server's req/s over the baseline's, for every round where both succeeded."""
    base = {m.round: m.requests_per_s for m in baseline if m.ok and m.requests_per_s}
    return [m.requests_per_s / base[m.round] for m in runs if m.ok and m.round in base]


def per_round_cpu_ratios(runs: list[Measurement], baseline: list[Measurement]) -> list[float]:
    """The baseline's CPU per request over this server's: >1 means cheaper than the baseline.

    Unlike req/s, CPU time per request hardly moves when other processes steal the CPU.
    """
    base = {m.round: m.cpu_us_per_request for m in baseline if m.ok and m.cpu_us_per_request}
    return [base[m.round] / m.cpu_us_per_request for m in runs if m.ok and m.round in base and m.cpu_us_per_request]


def median_ratio(ratios: list[float]) -> str:
    return f"{statistics.median(ratios):.2f}x" if ratios else "n/a"


def table_row(name: str, runs: list[Measurement], baseline: list[Measurement]) -> str:
    good = [m for m in runs if m.ok]
    if not good:
        status, reason = ("failed", runs[0].error or "") if runs else ("not run", "")
        return f"| {name} | {status} | | | | | | | | | 0/{len(runs)} | {shorten(reason, 90)} |"
    errors = sum(sum(m.errors.values()) for m in good)
    cells = [
        name,
        fmt_number(statistics.median(m.requests_per_s for m in good)),
        median_ratio(per_round_ratios(good, baseline)),
        median_ratio(per_round_cpu_ratios(good, baseline)),
        median_ms([m.p50_ms for m in good]),
        median_ms([m.p99_ms for m in good]),
        fmt_number(statistics.median(m.cpu_us_per_request for m in good), 1),
        cpu_shares(good),
        fmt_number(max(m.peak_rss_kib for m in good) / 1024, 1),
        str(errors),
        f"{len(good)}/{len(runs)}",
        disturbance_note(good),
    ]
    return "| " + " | ".join(cells) + " |"


def shorten(text: str, limit: int) -> str:
    text = text.replace("|", "/").replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def render_tables(
    results: list[Measurement], servers: Sequence[str], workloads: Sequence[str], tls: bool = False
) -> str:
    lines: list[str] = []
    columns = ["server", "req/s", f"vs {BASELINE} (req/s)", f"vs {BASELINE} (CPU)", "p50 ms", "p99 ms"]
    columns += ["CPU µs/req", "CPU srv / wrk"]
    columns += ["peak RSS MiB", "errors", "rounds", "note"]
    header = "| " + " | ".join(columns) + " |"
    for workload in workloads:
        title = ("TLS, " if tls else "") + workload_title(workload)
        lines += [f"### {title}", "", header, "|" + "---|" * len(columns)]
        baseline = [m for m in results if m.workload == workload and m.server == BASELINE]
        for server in servers:
            if SERVERS[server].supports(workload, tls):
                runs = [m for m in results if m.workload == workload and m.server == server]
                lines.append(table_row(server, runs, baseline))
        lines.append("")
    return "\n".join(lines)


def workload_title(name: str) -> str:
    return {
        "plaintext": "plaintext: GET, 13-byte text/plain body",
        "json": "json: GET, small JSON body serialised per request",
        "echo": "echo: POST 1 KiB body, echoed back",
        "pipelined": "pipelined: plaintext, 16 requests per write",
        "conn1000": "conn1000: plaintext, 1000 keep-alive connections",
        "close": "close: plaintext, one request per connection (req/s = new connections/s)",
        "fastapi-post": "fastapi-post: FastAPI, POST /items, 76-byte JSON body into a pydantic model",
        "fastapi-get": "fastapi-get: FastAPI, GET /items/{item_id} with a query parameter",
    }.get(name, name)


def render_failures(results: list[Measurement]) -> str:
    failed = [m for m in results if not m.ok]
    if not failed:
        return ""
    lines = ["", "### Failed runs", ""]
    lines += [f"- {m.server}, {m.workload}, round {m.round}: {shorten(m.error or '', 400)}" for m in failed]
    return "\n".join(lines) + "\n"


def package_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def nginx_version() -> str:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        done = subprocess.run([NGINX, "-v"], capture_output=True, text=True, timeout=5)
        return (done.stderr or done.stdout).strip().removeprefix("nginx version: ").replace("/", " ")
    return "nginx (version unknown)"


def wrk_version() -> str:
    done = subprocess.run(["wrk", "-v"], capture_output=True, text=True, timeout=5)
    first = (done.stdout or done.stderr).splitlines()
    return first[0].split(" Copyright")[0] if first else "unknown"


def render_header(servers: Sequence[str], settings: Settings, workloads: Sequence[str]) -> str:
    packages = sorted({SERVERS[s].package for s in servers} - {""})
    versions = ", ".join(f"{p} {package_version(p)}" for p in packages)
    if "nginx" in servers:
        versions += f", {nginx_version()}"
    versions += f"; httptools {package_version('httptools')}, h11 {package_version('h11')}"
    versions += f", uvloop {package_version('uvloop')}"
    conns = ", ".join(f"{w}: {WORKLOADS[w].connections or settings.connections}" for w in workloads)
    pinning = (
        f"server on CPU {settings.server_cpu}, wrk on CPU {settings.client_cpu}"
        if settings.server_cpu is not None
        else "no CPU pinning"
    )
    return "\n".join([
        "# kestrelpy benchmark",
        "",
        f"- date: {dt.datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"- machine: {os.cpu_count()} CPUs, {cpu_model()}, Linux {platform.release()}",
        f"- Python {platform.python_version()} ({platform.python_implementation()})",
        f"- packages: {versions}",
        f"- client: {wrk_version()}, 1 thread, {pinning}",
        *([f"- over TLS: one self-signed ECDSA P-256 certificate for every server; Python's ssl: {ssl.OPENSSL_VERSION}"]
          if settings.tls else []),
        f"- {settings.rounds} round(s) of {settings.duration_s} s per run after a {settings.warmup_s} s"
        f" warm-up; connections per workload: {conns}",
        "- figures are medians over rounds; ratios are medians of per-round ratios to"
        f" {BASELINE} (httptools + uvloop): req/s over {BASELINE}'s req/s, and {BASELINE}'s"
        " CPU µs/request over the server's (above 1 is better for both); peak RSS is the largest"
        " VmHWM over rounds, summed over the server's process tree",
        "",
    ])  # fmt: skip


# --------------------------------------------------------------------------- driver


def raise_open_file_limit(needed: int) -> None:
    """1000 connections need >1000 descriptors in both wrk and the server; children inherit this."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    if target < needed:
        log(f"warning: open file limit {target} is below the {needed} descriptors some workloads need")


def choose_cpus() -> tuple[int | None, int | None]:
    """Server on the first allowed CPU, wrk on the second, when taskset and two CPUs exist."""
    allowed = sorted(os.sched_getaffinity(0))
    if shutil.which("taskset") is None or len(allowed) < 2:
        log("warning: cannot pin server and client to separate CPUs; running unpinned")
        return None, None
    return allowed[0], allowed[1]


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def plan(
    rounds: int, workloads: Sequence[str], servers: Sequence[str], tls: bool = False
) -> Iterator[tuple[int, str, str]]:
    """Interleave servers inside each workload and round: A B C, A B C, ..."""
    for round_no in range(1, rounds + 1):
        for workload in workloads:
            for server in servers:
                if SERVERS[server].supports(workload, tls):
                    yield round_no, workload, server


def describe(m: Measurement) -> str:
    if not m.ok:
        return f"FAILED: {shorten(m.error or '', 200)}"
    errors = sum(m.errors.values())
    text = (
        f"{m.requests_per_s:,.0f} req/s, p50 {median_ms([m.p50_ms])} ms, p99 {median_ms([m.p99_ms])} ms, "
        f"{m.cpu_us_per_request:.1f} µs CPU/req ({m.system_us_per_request:.1f} in the kernel), "
        f"CPU srv/wrk {cpu_shares([m])}, "
        f"RSS {m.peak_rss_kib / 1024:.1f} MiB, other load {m.other_load:.0%}"
    )
    return text + (f", {errors} errors" if errors else "")


def measure_least_disturbed(
    server: Server, workload: Workload, round_no: int, settings: Settings, tmp: Path, tls: TlsFiles | None = None
) -> Measurement:
    """Repeat a run disturbed by unrelated load (up to --retries times); keep the calmest."""
    attempts = [measure(server, workload, round_no, settings, tmp, tls)]
    while len(attempts) <= settings.retries and attempts[-1].ok and attempts[-1].other_load >= DISTURBED_LOAD:
        log(f"  {server.name} {workload.name}: {attempts[-1].other_load:.0%} other load, measuring again")
        attempts.append(measure(server, workload, round_no, settings, tmp, tls))
    return min(attempts, key=lambda m: (not m.ok, m.other_load))


def run_all(
    servers: Sequence[str], workloads: Sequence[str], settings: Settings, deadline: float
) -> tuple[list[Measurement], str | None]:
    results: list[Measurement] = []
    steps = list(plan(settings.rounds, workloads, servers, settings.tls))
    with tempfile.TemporaryDirectory(prefix="kestrel-bench-") as tmp:
        certificate = make_certificate(Path(tmp)) if settings.tls else None
        try:
            for index, (round_no, workload, server) in enumerate(steps, 1):
                if time.monotonic() > deadline:
                    return results, "overall time limit reached; the report is partial"
                label = f"[{index}/{len(steps)}] round {round_no} {workload:<9} {server:<14}"
                m = measure_least_disturbed(
                    SERVERS[server], WORKLOADS[workload], round_no, settings, Path(tmp), certificate
                )
                results.append(m)
                log(f"{label} {describe(m)}")
        except KeyboardInterrupt:
            return results, "interrupted; the report is partial"
    return results, None


def estimated_seconds(steps: int, settings: Settings) -> float:
    return steps * (settings.duration_s + settings.warmup_s + 1.5)


def parse_list(value: str, known: Collection[str], what: str) -> list[str]:
    if value == "all":
        return list(known)
    names = [v.strip() for v in value.split(",") if v.strip()]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown {what}: {', '.join(unknown)} (known: {', '.join(known)})")
    return names


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 round of 2 s runs: a smoke test")
    parser.add_argument("--rounds", type=int, help="rounds of interleaved runs (default 3)")
    parser.add_argument("--duration", type=int, help="seconds measured per run (default 10)")
    parser.add_argument("--warmup", type=int, help="seconds of discarded load before each run (default 1)")
    parser.add_argument("--connections", type=int, default=64, help="wrk connections (conn1000 uses 1000)")
    parser.add_argument(
        "--servers",
        default=",".join(DEFAULT_SERVERS),
        type=lambda v: parse_list(v, SERVERS, "server"),
        help=f"comma-separated, or 'all' (known: {', '.join(SERVERS)})",
    )
    parser.add_argument(
        "--workloads",
        default="all",
        type=lambda v: parse_list(v, WORKLOADS, "workload"),
        help=f"comma-separated, or 'all' (known: {', '.join(WORKLOADS)})",
    )
    parser.add_argument(
        "--retries",
        type=int,
        default=1,
        help=f"repeat a run when other processes took >={DISTURBED_LOAD * 100:.0f}%% of a pinned CPU (default 1)",
    )
    parser.add_argument(
        "--baseline-tree",
        type=Path,
        help="also run kestrelpy from this checkout, as kestrelpy-base(-h11): before/after in one run",
    )
    parser.add_argument(
        "--tls", action="store_true", help="serve and load every server over HTTPS (a certificate made for the run)"
    )
    parser.add_argument(
        "--http2", action="store_true", help="the HTTP/2 table instead, driven by h2load (options: --http2 --help)"
    )
    parser.add_argument("--markdown", type=Path, help="also write the report, with a machine header, here")
    parser.add_argument("--raw-json", action="store_true", help="save every run's numbers under bench/out/")
    parser.add_argument("--time-limit", type=float, help="overall limit in seconds (default: 2x estimate)")
    return parser


def settings_from(args: argparse.Namespace) -> Settings:
    rounds = args.rounds or (1 if args.quick else 3)
    duration = args.duration or (2 if args.quick else 10)
    warmup = args.warmup if args.warmup is not None else 1
    if rounds < 1 or duration < 1 or warmup < 0 or args.connections < 1:
        raise SystemExit("rounds, duration and connections must be positive; warmup must not be negative")
    server_cpu, client_cpu = choose_cpus()
    return Settings(rounds, duration, warmup, args.connections, server_cpu, client_cpu, args.retries, args.tls)


def save_raw(results: list[Measurement]) -> Path:
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    path = OUT_DIR / f"raw-{dt.datetime.now():%Y%m%d-%H%M%S}.json"
    path.write_text(json.dumps([asdict(m) for m in results], indent=2))
    return path


def register_baseline_tree(argv: Sequence[str] | None) -> None:
    """Offer the kestrelpy-base servers when argv has --baseline-tree: before --servers is checked."""
    early = argparse.ArgumentParser(add_help=False)
    early.add_argument("--baseline-tree", type=Path)
    known, _ = early.parse_known_args(argv)
    if known.baseline_tree is not None:
        add_baseline_tree(known.baseline_tree)


def main(argv: Sequence[str] | None = None) -> int:
    given = list(sys.argv[1:] if argv is None else argv)
    if "--http2" in given:
        # The HTTP/2 table has its own runner (h2load instead of wrk), built on this module's parts.
        sys.path.append(str(REPO_ROOT))
        from bench.http2 import main as http2_main

        return http2_main([a for a in given if a != "--http2"])
    register_baseline_tree(argv)
    args = build_parser().parse_args(argv)
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (apt-get install wrk)")
    settings = settings_from(args)
    servers, workloads = args.servers, args.workloads
    most_connections = max((WORKLOADS[w].connections or settings.connections) for w in workloads)
    raise_open_file_limit(needed=2 * most_connections)

    steps = len(list(plan(settings.rounds, workloads, servers, args.tls)))
    estimate = estimated_seconds(steps, settings)
    limit = args.time_limit or 2 * estimate + 60
    log(f"{steps} runs, about {estimate / 60:.1f} min (hard limit {limit / 60:.1f} min)")
    results, note = run_all(servers, workloads, settings, time.monotonic() + limit)

    tables = render_tables(results, servers, workloads, args.tls)
    failures = render_failures(results)
    footer = f"\n> {note}\n" if note else ""
    print(tables + failures + footer)
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        header = render_header(servers, settings, workloads)
        args.markdown.write_text(header + "\n" + tables + failures + footer)
        log(f"report written to {args.markdown}")
    if args.raw_json:
        log(f"raw results written to {save_raw(results)}")
    return 0 if results and all(m.ok for m in results) and note is None else 1


if __name__ == "__main__":
    sys.exit(main())
