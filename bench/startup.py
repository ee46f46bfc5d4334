#!/usr/bin/env python
"""What the startup guard costs an ordinary start: launch to first 200 response, with and without it.

Each launch runs `python -c WRAPPER APP --port N` from the repository root, where WRAPPER calls
`kestrelpy.cli.main` exactly as `python -m kestrelpy` does. For the "off" launches the wrapper first replaces
`kestrelpy.server._warn_predicted_failures` with a no-op, so the guard's modules are never imported. The
switch is the environment variable below, read only by this wrapper; kestrelpy itself has no such setting.
Both variants go through the same wrapper, so the only difference between them is the guard.

Launches alternate on/off (the pair order flips every round) so that drift on a shared machine hits both
alike. A launch is timed from just before the process is spawned until a `GET /` answers 200.

    python bench/startup.py                      # 40 launches per variant
    python bench/startup.py --runs 100 --app bench.apps:plaintext
    python bench/startup.py --in-process 30      # also: the guard's own import + predict() time, in-process
    python bench/startup.py --cached-bytecode    # reuse compiled modules, as an installed package does

Without `--cached-bytecode` the children inherit this environment as it is; with PYTHONDONTWRITEBYTECODE set
(as in some CI and container setups) every launch then compiles every module it imports from source, which
makes each imported line cost far more than it does for an installed package with its .pyc files.

The `--in-process` mode starts fresh interpreters that import the server, then time `import kestrelpy.guard`
plus one `predict()` call on the endpoint a default start binds; it isolates the guard's cost from the
noise of process start-up.
"""

from __future__ import annotations

import argparse
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
SWITCH = "STARTUP_BENCH_GUARD"  # deliberately not KESTRELPY_*: the CLI reads those as settings

WRAPPER = f"""\
import os, sys
if os.environ.get({SWITCH!r}) == "off":
    import kestrelpy.server
    kestrelpy.server._warn_predicted_failures = lambda endpoints: None
from kestrelpy.cli import main
sys.exit(main(sys.argv[1:]))
"""

IN_PROCESS = """\
import sys, time
import kestrelpy.cli, kestrelpy.server
from kestrelpy.endpoints import tcp_endpoint
endpoints = [tcp_endpoint("127.0.0.1", int(sys.argv[1]))]
t0 = time.perf_counter()
from kestrelpy import guard
t1 = time.perf_counter()
findings = guard.predict(endpoints)
t2 = time.perf_counter()
print((t1 - t0) * 1000, (t2 - t1) * 1000, len(findings))
"""

REQUEST = b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def answers_200(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=1.0) as conn:
            conn.sendall(REQUEST)
            data = b""
            while b"\r\n" not in data:
                chunk = conn.recv(4096)
                if not chunk:
                    return False
                data += chunk
    except OSError:
        return False
    return data.startswith(b"HTTP/1.1 200")


def child_env(pycache: str | None) -> dict[str, str]:
    env = dict(os.environ)
    if pycache is not None:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = pycache  # keeps the compiled files out of the source tree
    return env


def launch(python: str, app: str, guard: bool, timeout: float, pycache: str | None = None) -> float:
    """Milliseconds from spawning the server to its first 200 response."""
    port = free_port()
    env = child_env(pycache)
    env[SWITCH] = "on" if guard else "off"
    argv = [python, "-c", WRAPPER, app, "--port", str(port), "--log-level", "warning"]
    start = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=REPO_ROOT, env=env, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = start + timeout
        while True:
            if answers_200(port):
                return (time.perf_counter() - start) * 1000
            if proc.poll() is not None:
                err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
                raise SystemExit(f"server exited with {proc.returncode} before answering:\n{err}")
            if time.perf_counter() > deadline:
                raise SystemExit(f"no 200 response within {timeout} s")
            time.sleep(0.0005)
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stderr:
            proc.stderr.close()


def describe(label: str, values: Sequence[float]) -> str:
    q = statistics.quantiles(values, n=4)
    middle = statistics.median(values)
    return f"{label:<12} median {middle:7.1f} ms   p25 {q[0]:7.1f}   p75 {q[2]:7.1f}   n={len(values)}"


def median_difference_interval(on: Sequence[float], off: Sequence[float], rounds: int = 2000) -> tuple[float, float]:
    """A bootstrap 95% interval for median(on) - median(off)."""
    rng = random.Random(12345)
    diffs = sorted(
        statistics.median(rng.choices(on, k=len(on))) - statistics.median(rng.choices(off, k=len(off)))
        for _ in range(rounds)
    )
    return diffs[int(rounds * 0.025)], diffs[int(rounds * 0.975) - 1]


def in_process(python: str, runs: int, pycache: str | None) -> None:
    imports: list[float] = []
    calls: list[float] = []
    for _ in range(runs):
        argv = [python, "-c", IN_PROCESS, str(free_port())]
        env = child_env(pycache)
        out = subprocess.run(argv, cwd=REPO_ROOT, env=env, capture_output=True, text=True, check=True).stdout.split()
        imports.append(float(out[0]))
        calls.append(float(out[1]))
    print(describe("import guard", imports))
    print(describe("predict()", calls) + "   (first call: includes the modules it loads)")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=40, help="launches per variant (default 40)")
    parser.add_argument("--app", default="bench.apps:plaintext", help="the ASGI app (default bench.apps:plaintext)")
    parser.add_argument("--python", default=sys.executable, help="interpreter with kestrelpy installed")
    parser.add_argument("--warmup", type=int, default=4, help="untimed launches first (default 4)")
    parser.add_argument("--timeout", type=float, default=20.0, help="seconds to wait for one server")
    parser.add_argument("--in-process", type=int, default=0, metavar="N", help="also time import+predict N times")
    parser.add_argument(
        "--cached-bytecode", action="store_true", help="let the children reuse compiled modules (a temporary cache)"
    )
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="kestrelpy-startup-pyc-") as cache:
        return measure(args, cache if args.cached_bytecode else None)


def measure(args: argparse.Namespace, pycache: str | None) -> int:
    for i in range(max(args.warmup, 2)):  # at least one launch of each kind, which also fills the cache
        launch(args.python, args.app, i % 2 == 0, args.timeout, pycache)
    results: dict[bool, list[float]] = {True: [], False: []}
    for i in range(args.runs):
        order = (True, False) if i % 2 == 0 else (False, True)
        for guard in order:
            results[guard].append(launch(args.python, args.app, guard, args.timeout, pycache))
        if sys.stderr.isatty():
            print(f"\r{i + 1}/{args.runs}", end="", file=sys.stderr, flush=True)
    if sys.stderr.isatty():
        print(file=sys.stderr)

    on, off = results[True], results[False]
    flag = os.environ.get("PYTHONDONTWRITEBYTECODE", "")
    bytecode = "cached bytecode" if pycache else f"PYTHONDONTWRITEBYTECODE={flag}"
    print(f"launch -> first 200 ({args.app}, {args.runs} interleaved launches per variant, {bytecode})")
    print(describe("guard on", on))
    print(describe("guard off", off))
    low, high = median_difference_interval(on, off)
    diff = statistics.median(on) - statistics.median(off)
    print(f"difference   {diff:+7.1f} ms   (bootstrap 95% interval {low:+.1f} .. {high:+.1f} ms)")
    paired = [a - b for a, b in zip(on, off, strict=True)]
    print(f"paired       median of per-round differences {statistics.median(paired):+7.1f} ms")
    if args.in_process:
        in_process(args.python, args.in_process, pycache)
    return 0


if __name__ == "__main__":
    sys.exit(main())
