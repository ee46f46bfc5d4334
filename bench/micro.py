#!/usr/bin/env python
"""In-process cost of kestrelpy's connection code: µs per request, no sockets.

Requests are fed to one kestrelpy connection through a fake transport on a uvloop
loop, with the app served as the server serves it (proxy headers on by default).
What is left out is the kernel and the event loop's socket I/O, so the figure is
the Python cost per request that the wrk runs carry on top of those.

    python bench/micro.py                                  # both parsers, every workload
    python bench/micro.py --http h11 --workloads plaintext
    python bench/micro.py --tree /tmp/other-checkout       # import kestrelpy from there
    python bench/micro.py --compare . /tmp/other-checkout  # interleaved, with ratios
    python bench/micro.py --metrics                         # with the metrics counting (--metrics-bind)
    python bench/micro.py --workloads plaintext --connections 1000  # requests spread over 1000 connections
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.append(str(REPO_ROOT))  # last: --tree decides where kestrelpy comes from
from bench.run import parse_list  # noqa: E402

PARSERS = ("httptools", "h11")
GET = b"GET / HTTP/1.1\r\nHost: 127.0.0.1:8000\r\nUser-Agent: micro\r\nAccept: */*\r\n\r\n"
POST_BODY = b"x" * 1024
PIPELINE_DEPTH = 16
WARMUP_REQUESTS = 2000
MAX_SPINS = 10_000  # loop iterations to wait for one feed's responses before giving up
SUBPROCESS_TIMEOUT_S = 600.0


def post_head(content_type: bytes, length: int) -> bytes:
    return b"POST / HTTP/1.1\r\nHost: 127.0.0.1:8000\r\nContent-Type: %s\r\nContent-Length: %d\r\n\r\n" % (
        content_type,
        length,
    )


def json_body(size: int) -> bytes:
    """A JSON document of about `size` bytes: a list of small objects, as an API client would send."""
    item = b'{"id": 12345, "name": "kestrel", "tags": ["a", "b"], "ok": true}'
    count = max(1, size // (len(item) + 2))
    return b"[" + b", ".join([item] * count) + b"]"


JSON_1K = json_body(1024)
JSON_16K = json_body(16 * 1024)


@dataclass(frozen=True)
class Workload:
    name: str
    app: str  # attribute of bench.apps
    reads: tuple[bytes, ...]  # fed one data_received call each, the loop run once between them
    requests: int  # requests in `reads`
    default_n: int  # requests per repeat with httptools; h11 is several times slower and gets a fifth


def same_read(head: bytes, body: bytes) -> tuple[bytes, ...]:
    return (head + body,)


def body_after_head(head: bytes, body: bytes) -> tuple[bytes, ...]:
    """The head in one read and its body in the next: what a client that writes them separately (or a
    body larger than one segment) produces, and the path where the app has to wait for its body."""
    return (head, body)


WORKLOADS: dict[str, Workload] = {
    w.name: w
    for w in (
        Workload("plaintext", "plaintext", (GET,), 1, 100_000),
        Workload("json", "json", (GET,), 1, 100_000),
        Workload("pipelined", "plaintext", (GET * PIPELINE_DEPTH,), PIPELINE_DEPTH, 160_000),
        Workload("echo", "echo", same_read(post_head(b"application/octet-stream", 1024), POST_BODY), 1, 50_000),
        Workload("json1k", "echo", same_read(post_head(b"application/json", len(JSON_1K)), JSON_1K), 1, 50_000),
        Workload("json16k", "echo", same_read(post_head(b"application/json", len(JSON_16K)), JSON_16K), 1, 20_000),
        Workload(
            "json1k-split", "echo", body_after_head(post_head(b"application/json", len(JSON_1K)), JSON_1K), 1, 50_000
        ),
        Workload(
            "json16k-split",
            "echo",
            body_after_head(post_head(b"application/json", len(JSON_16K)), JSON_16K),
            1,
            20_000,
        ),
    )
}


class FakeTransport:
    """Just enough of asyncio.Transport for the connection; counts what it is given."""

    def __init__(self) -> None:
        self.bytes_out = 0
        self.closing = False

    def write(self, data: bytes) -> None:
        self.bytes_out += len(data)

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.closing = True

    def can_write_eof(self) -> bool:
        return False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8000), "peername": ("127.0.0.1", 50000)}.get(name, default)

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0


def import_tree(tree: Path) -> None:
    """Import kestrelpy from `tree` (a checkout's root), never from the installed package."""
    sys.path.insert(0, str(tree.resolve()))
    for name in [m for m in sys.modules if m == "kestrelpy" or m.startswith("kestrelpy.")]:
        del sys.modules[name]
    import kestrelpy

    origin = Path(kestrelpy.__file__).resolve().parent.parent
    if origin != tree.resolve():
        raise SystemExit(f"kestrelpy was imported from {origin}, not from {tree}")


async def run_once(
    http: str, workload: Workload, n: int, proxy_headers: bool, metrics: bool = False, connections: int = 1
) -> float:
    """Seconds per request over n requests on `connections` warmed-up connections, taken in turn (as a
    server with that many busy keep-alive connections reads them: each read finds another connection's
    objects, most of them out of the CPU's caches once there are many)."""
    from bench import apps
    from kestrelpy.config import Config
    from kestrelpy.heartbeat import date_line
    from kestrelpy.server import connection_class
    from kestrelpy.state import ServerState

    app = getattr(apps, workload.app)
    config = Config(app=app, access_log=False, http=http, proxy_headers=proxy_headers)
    if metrics:  # counted as with --metrics-bind; no listener is needed to count
        config = config.replace(metrics_bind="127.0.0.1:9100")
    state = ServerState(config, as_served(app, config), asyncio.get_running_loop(), access_log=False)
    state.date_line = date_line(time.time())
    conns, transports = [], []
    for _ in range(connections):
        conn = connection_class(http)(state)
        transport = FakeTransport()
        conn.connection_made(transport)  # type: ignore[arg-type]
        conns.append(conn)
        transports.append(transport)
    feed = feeder(conns, state, workload)
    await feed(max(connections, WARMUP_REQUESTS // workload.requests))  # every connection has served one
    started = time.perf_counter()
    await feed(max(1, n // workload.requests))
    elapsed = time.perf_counter() - started
    if any(transport.closing for transport in transports):
        raise SystemExit(f"a connection closed during {workload.name} ({http}): a rejected request?")
    return elapsed / (max(1, n // workload.requests) * workload.requests)


def as_served(app: Any, config: Any) -> Any:
    """The app as the measured tree's server calls it. The server reads forwarded headers itself (its
    ServerState holds the verdicts per peer); a tree from before that wrapped the app in a middleware,
    and is measured so, which keeps --compare with such a tree fair."""
    from kestrelpy.state import ServerState

    if not config.proxy_headers or "forwarded_verdicts" in ServerState.__slots__:
        return app
    from kestrelpy.proxy import ProxyHeadersMiddleware, parse_trusted

    return ProxyHeadersMiddleware(app, parse_trusted(config.forwarded_allow_ips))


def feeder(conns: Sequence[Any], state: Any, workload: Workload) -> Callable[[int], Any]:
    """feed(k): send the workload's bytes k times, each time waiting until all its responses are out;
    each time to the next connection."""
    reads, per_feed = workload.reads, workload.requests
    first, rest = reads[0], reads[1:]
    receivers = [conn.data_received for conn in conns]
    turn = 0

    async def feed(k: int) -> None:
        nonlocal turn
        for _ in range(k):
            receive = receivers[turn]
            turn = turn + 1 if turn + 1 < len(receivers) else 0
            target = state.requests_served + per_feed
            receive(first)
            for data in rest:  # the loop runs once between reads, as it would between two segments
                await asyncio.sleep(0)
                receive(data)
            # Responses that need the loop (a queued pipelined request, an app waiting for its body)
            # finish after a few loop iterations; an eager app has already answered.
            spins = 0
            while state.requests_served < target:
                spins += 1
                if spins > MAX_SPINS:
                    raise SystemExit(f"{workload.name}: responses did not complete (a stalled connection?)")
                await asyncio.sleep(0)

    return feed


def requests_per_repeat(args: argparse.Namespace, http: str, workload: Workload) -> int:
    if args.n:
        return int(args.n)
    return workload.default_n if http == "httptools" else workload.default_n // 5


def measure(
    http: str,
    workload: Workload,
    n: int,
    repeats: int,
    proxy_headers: bool,
    metrics: bool = False,
    connections: int = 1,
) -> list[float]:
    """µs per request of every repeat, each on a fresh loop and connections."""
    import uvloop

    return [uvloop.run(run_once(http, workload, n, proxy_headers, metrics, connections)) * 1e6 for _ in range(repeats)]


# --------------------------------------------------------------------------- comparing trees


class ChildFailed(Exception):
    pass


def run_child(
    tree: Path, http: str, workload: str, n: int, repeats: int, proxy_headers: bool, connections: int
) -> list[float]:
    argv = [
        sys.executable, str(Path(__file__).resolve()), "--tree", str(tree), "--http", http,
        "--workloads", workload, "-n", str(n), "--repeats", str(repeats), "--json",
        "--connections", str(connections), *([] if proxy_headers else ["--no-proxy-headers"]),
    ]  # fmt: skip
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}  # leave the compared trees as they are
    done = subprocess.run(argv, capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT_S, env=env, check=False)
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines()
        raise ChildFailed(lines[-1] if lines else f"exit code {done.returncode}")
    return list(json.loads(done.stdout)[http][workload])


def compare(trees: Sequence[Path], parsers: Sequence[str], workloads: Sequence[str], args: argparse.Namespace) -> int:
    """Every tree in its own process, interleaved round by round; medians and ratios to the first tree.
    A tree that fails a workload gets "failed" in its cell (with the reason below the table); the
    others go on."""
    samples: dict[tuple[Path, str, str], list[float]] = {}
    failures: dict[tuple[Path, str, str], str] = {}
    for round_no in range(1, args.rounds + 1):
        for http in parsers:
            for workload in workloads:
                n = requests_per_repeat(args, http, WORKLOADS[workload])
                for tree in trees:
                    key = (tree, http, workload)
                    if key in failures:
                        continue
                    try:
                        got = run_child(tree, http, workload, n, args.repeats, args.proxy_headers, args.connections)
                    except ChildFailed as exc:
                        failures[key] = str(exc)
                        log(f"round {round_no} {http:<9} {workload:<9} {tree}: failed: {exc}")
                        continue
                    samples.setdefault(key, []).extend(got)
                    log(f"round {round_no} {http:<9} {workload:<9} {tree}: {statistics.median(got):.2f} µs/req")
    print(comparison_table(trees, parsers, workloads, samples))
    for (tree, http, workload), reason in failures.items():
        print(f"\n{tree} failed {http} {workload}: {reason}")
    return 1 if failures else 0


def comparison_table(
    trees: Sequence[Path],
    parsers: Sequence[str],
    workloads: Sequence[str],
    samples: dict[tuple[Path, str, str], list[float]],
) -> str:
    names = [t.name for t in trees] if len({t.name for t in trees}) == len(trees) else [str(t) for t in trees]
    header = ["parser", "workload", *(f"{name} µs/req" for name in names)]
    header += [f"{name} vs {names[0]}" for name in names[1:]]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for http in parsers:
        for workload in workloads:
            runs = [samples.get((t, http, workload)) for t in trees]
            medians = [statistics.median(r) if r else None for r in runs]
            cells = [http, workload, *(f"{m:.2f}" if m is not None else "failed" for m in medians)]
            first = medians[0]
            # above 1: faster than the first tree
            cells += [f"{first / m:.2f}x" if first is not None and m is not None else "n/a" for m in medians[1:]]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# --------------------------------------------------------------------------- command line


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--http", default="all", type=lambda v: parse_list(v, PARSERS, "parser"), help="httptools, h11 or all"
    )
    parser.add_argument(
        "--workloads",
        default="all",
        type=lambda v: parse_list(v, list(WORKLOADS), "workload"),
        help=f"comma-separated, or all ({', '.join(WORKLOADS)})",
    )
    parser.add_argument("-n", type=int, help="requests per repeat (default per workload)")
    parser.add_argument("--repeats", type=int, default=5, help="repeats per figure; the median is reported")
    parser.add_argument(
        "--no-proxy-headers",
        dest="proxy_headers",
        action="store_false",
        help="forwarded headers ignored, as by the server flag of that name",
    )
    parser.add_argument("--metrics", action="store_true", help="count metrics, as --metrics-bind does")
    parser.add_argument(
        "--connections", type=int, default=1, help="connections the requests are spread over, in turn (default 1)"
    )
    parser.add_argument("--tree", type=Path, help="import kestrelpy from this checkout instead")
    parser.add_argument("--compare", type=Path, nargs="+", metavar="TREE", help="compare checkouts, interleaved")
    parser.add_argument("--rounds", type=int, default=3, help="with --compare: interleaved rounds (default 3)")
    parser.add_argument("--json", action="store_true", help="print every repeat as JSON")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.compare:
        return compare(args.compare, args.http, args.workloads, args)
    sys.path.insert(0, str(REPO_ROOT))  # bench.apps, and kestrelpy unless --tree says otherwise
    if args.tree:
        import_tree(args.tree)
    results: dict[str, dict[str, list[float]]] = {}
    for http in args.http:
        for name in args.workloads:
            workload = WORKLOADS[name]
            n = requests_per_repeat(args, http, workload)
            runs = measure(http, workload, n, args.repeats, args.proxy_headers, args.metrics, args.connections)
            results.setdefault(http, {})[name] = runs
            if not args.json:
                spread = f"{min(runs):.2f} to {max(runs):.2f}"
                print(f"{http:<9} {name:<9} {statistics.median(runs):6.2f} µs/request (range {spread})")
    if args.json:
        print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
