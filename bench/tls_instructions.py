#!/usr/bin/env python
"""CPU instructions per new TLS connection (or per request) in the server process, counted by callgrind:
a figure that does not move with the load of a shared machine, as wall-clock CPU time does.

For every server: start it under `valgrind --tool=callgrind` on `bench.apps:plaintext` over HTTPS with a
certificate made for the run (as `bench/run.py --tls` does), make a warm-up, zero the counters
(`callgrind_control -z`), make N new connections one after another, each a TLS handshake (resuming the
previous connection's session, as wrk does; `--mode full`: none), one `Connection: close` GET and the
whole answer, then dump the counters (`callgrind_control -d`) and stop the server. Reported per
connection: every instruction of the server, those inside OpenSSL's handshake (SSL_do_handshake,
inclusive), and the rest: the loop, the ssl module, the server's own code and the request. `--mode
keep-alive` counts N GETs on one TLS connection instead, `--mode plain-keep-alive` the same without TLS.

    python bench/tls_instructions.py                                    # kestrelpy and uvicorn
    python bench/tls_instructions.py --mode full --count 300
    python bench/tls_instructions.py --baseline-tree /tmp/old --servers kestrelpy,kestrelpy-base,uvicorn
"""

from __future__ import annotations

import argparse
import re
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.append(str(REPO_ROOT))
from bench.run import (  # noqa: E402  (the runner's servers, certificate and ports)
    HOST,
    SERVERS,
    TlsFiles,
    client_context,
    free_port,
    make_certificate,
    parse_list,
    register_baseline_tree,
)

WARMUP_CONNECTIONS = 50
START_TIMEOUT_S = 180.0  # a Python server starts 50-100 times slower under callgrind
CONNECTION_TIMEOUT_S = 60.0
REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
KEEP_ALIVE_REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
HANDSHAKE_FUNCTION = "SSL_do_handshake"


@dataclass
class Count:
    server: str
    connections: int
    resumed: int = 0
    total: int = 0  # instructions
    handshake: int = 0  # instructions inside SSL_do_handshake
    error: str | None = None

    def per_connection(self, value: int) -> int:
        return round(value / self.connections)


def keep_alive(port: int, context: ssl.SSLContext | None, count: int) -> tuple[int, int]:
    """`count` GETs on one connection (over TLS unless `context` is None); how many answered 200."""
    answered = 0
    with socket.create_connection((HOST, port), timeout=CONNECTION_TIMEOUT_S) as raw:
        conn = context.wrap_socket(raw, server_hostname=HOST) if context is not None else raw
        buffered = b""
        for _ in range(count):
            conn.sendall(KEEP_ALIVE_REQUEST)
            while b"\r\n\r\n" not in buffered:
                buffered += conn.recv(65536)
            head, _, buffered = buffered.partition(b"\r\n\r\n")
            length = int(re.search(rb"(?i)\r\ncontent-length: *(\d+)", head).group(1))  # type: ignore[union-attr]
            while len(buffered) < length:
                buffered += conn.recv(65536)
            buffered = buffered[length:]
            answered += head.startswith(b"HTTP/1.1 200")
    return answered, 0


def connect(port: int, context: ssl.SSLContext, count: int, resume: bool) -> tuple[int, int]:
    """`count` connections, one after another; how many answered 200 and how many resumed a session."""
    session: ssl.SSLSession | None = None
    answered = resumed = 0
    for _ in range(count):
        with (
            socket.create_connection((HOST, port), timeout=CONNECTION_TIMEOUT_S) as raw,
            context.wrap_socket(raw, server_hostname=HOST, session=session) as tls,
        ):
            tls.sendall(REQUEST)
            answer = bytearray()
            while chunk := tls.recv(65536):
                answer += chunk
            answered += answer.startswith(b"HTTP/1.1 200")
            resumed += bool(tls.session_reused)
            if resume:
                session = tls.session
    return answered, resumed


def wait_for_port(port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode}")
        try:
            socket.create_connection((HOST, port), timeout=1.0).close()
            return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"the server did not listen within {START_TIMEOUT_S:.0f} s")


def callgrind_control(option: str, pid: int) -> None:
    subprocess.run(["callgrind_control", option, str(pid)], check=True, capture_output=True, timeout=120)


def measure(name: str, count: int, mode: str, tls: TlsFiles, scratch: Path) -> Count:
    """One server under callgrind: `count` connections (MODES), or `count` requests on one connection."""
    result = Count(name, count)
    port = free_port()
    out = scratch / f"{name}-{mode}.callgrind"
    argv = SERVERS[name].argv("bench.apps:plaintext", port, scratch, None if mode == "plain-keep-alive" else tls)
    valgrind = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", *argv]
    with (scratch / f"{name}.log").open("wb") as log:
        process = subprocess.Popen(valgrind, cwd=REPO_ROOT, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    try:
        wait_for_port(port, process)
        context = client_context() if mode != "plain-keep-alive" else None
        if context is None or mode == "keep-alive":
            keep_alive(port, context, WARMUP_CONNECTIONS)
            callgrind_control("-z", process.pid)
            answered, _ = keep_alive(port, context, count)
        else:
            connect(port, context, WARMUP_CONNECTIONS, mode == "resumed")
            callgrind_control("-z", process.pid)
            answered, result.resumed = connect(port, context, count, mode == "resumed")
        callgrind_control("-d", process.pid)
        if answered != count:
            result.error = f"{count - answered} of {count} requests were not answered 200"
        result.total, result.handshake = read_dump(out.with_name(out.name + ".1"))
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        result.error = str(exc)
    finally:
        process.terminate()
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return result


def read_dump(path: Path) -> tuple[int, int]:
    """(all instructions, those inside SSL_do_handshake) of one callgrind dump."""
    text = path.read_text(errors="replace")
    summary = re.search(r"^summary:\s*(\d+)", text, re.MULTILINE)
    if summary is None:
        raise RuntimeError(f"no summary line in {path}")
    annotated = subprocess.run(
        ["callgrind_annotate", "--inclusive=yes", "--threshold=100", "--auto=no", str(path)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    handshake = 0
    for line in annotated.splitlines():
        match = re.match(r"\s*([\d,]+) \([^)]*\)\s+\S*:" + HANDSHAKE_FUNCTION + r"\b", line)
        if match:
            handshake = max(handshake, int(match.group(1).replace(",", "")))
    return int(summary.group(1)), handshake


MODES = {
    "resumed": "new connections with resumed TLS 1.3 handshakes (as wrk makes them), one `Connection: close` GET each",
    "full": "new connections with full TLS 1.3 handshakes, one `Connection: close` GET each",
    "keep-alive": "GETs on one keep-alive TLS connection",
    "plain-keep-alive": "GETs on one keep-alive plain-HTTP connection (no TLS)",
}


def report(results: list[Count], mode: str) -> str:
    baseline = next((r for r in results if r.server == "uvicorn" and not r.error), None)
    unit = "request" if mode.endswith("keep-alive") else "connection"
    lines = [
        f"### Server instructions per {unit}: {MODES[mode]}",
        "",
        f"| server | {unit}s | resumed | instructions | in SSL_do_handshake | the rest | the rest vs uvicorn |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        if r.error:
            lines.append(f"| {r.server} | failed: {r.error} | | | | | |")
            continue
        rest = r.per_connection(r.total - r.handshake)
        versus = ""
        if baseline is not None:
            base_rest = baseline.per_connection(baseline.total - baseline.handshake)
            versus = f"{rest / base_rest - 1:+.1%}" if base_rest else ""
        cells = [
            r.server,
            str(r.connections),
            str(r.resumed),
            f"{r.per_connection(r.total):,}",
            f"{r.per_connection(r.handshake):,}",
            f"{rest:,}",
            versus,
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    register_baseline_tree(argv)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--servers", default="kestrelpy,uvicorn", help="comma-separated (default kestrelpy,uvicorn)")
    parser.add_argument("--count", type=int, default=200, help="measured connections or requests (default 200)")
    parser.add_argument("--mode", choices=list(MODES), default="resumed", help="what is counted (default resumed)")
    parser.add_argument("--baseline-tree", type=Path, help="also kestrelpy-base, served from this checkout")
    args = parser.parse_args(argv)
    servers = parse_list(args.servers, [n for n, s in SERVERS.items() if s.tls_args is not None], "server")
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        raise SystemExit("valgrind is not installed (apt-get install valgrind)")
    if args.count < 1:
        raise SystemExit("--count must be positive")
    results = []
    with tempfile.TemporaryDirectory(prefix="kestrel-tls-instr-") as tmp:
        tls = make_certificate(Path(tmp))
        for name in servers:
            result = measure(name, args.count, args.mode, tls, Path(tmp))
            results.append(result)
            done = result.error or f"{result.per_connection(result.total):,} each"
            print(f"{name}: {done}", file=sys.stderr)
    print(report(results, args.mode))
    return 0 if all(r.error is None for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
