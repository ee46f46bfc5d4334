#!/usr/bin/env python
"""In-process cost of kestrelpy's HTTP/2 connection code: µs and Python calls per request, no sockets.

One Http2Connection is fed, through bench/micro.py's fake transport on a uvloop loop, batches of
concurrent streams as h2load sends them (`-m 10`: ten requests in one read), the app served as the
server serves it (proxy headers on; the fake peer is a trusted loopback one). The client's frames are
made beforehand by an h2 client (so its cost is not counted); the server's output is counted and
dropped, the client having opened its windows to the maximum.

    python bench/http2_micro.py                          # both workloads, µs per request
    python bench/http2_micro.py --profile plaintext      # cProfile: calls per request, top functions
    python bench/http2_micro.py --tree /tmp/base         # import kestrelpy from another checkout
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pickle
import pstats
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import h2.config
import h2.connection
import h2.settings
from hyperframe.frame import SettingsFrame

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.append(str(REPO_ROOT))
from bench.micro import FakeTransport, as_served, import_tree  # noqa: E402

BATCH = 10  # concurrent streams per read, as h2load -m 10
MAX_WINDOW = 2**31 - 1
WARMUP_BATCHES = 200
ECHO_BODY = b"x" * 1024
MAX_SPINS = 10_000
APPS = {"plaintext": "plaintext", "echo": "echo"}


def client_frames(workload: str, batches: int) -> tuple[bytes, list[bytes]]:
    """The client's opening (preface, SETTINGS, windows, the ACK of the server's SETTINGS) and one read's
    bytes per batch of BATCH requests."""
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
    client.local_settings = h2.settings.Settings(
        client=True, initial_values={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: MAX_WINDOW}
    )
    client.initiate_connection()
    client.increment_flow_control_window(MAX_WINDOW - 65535)
    client.outbound_flow_control_window = MAX_WINDOW  # (the server acknowledges the body as it is read)
    opening = client.data_to_send() + SettingsFrame(0, flags=["ACK"]).serialize()
    method = b"POST" if workload == "echo" else b"GET"
    reads = []
    for _ in range(batches):
        for _ in range(BATCH):
            sid = client.get_next_available_stream_id()
            headers = [
                (b":method", method),
                (b":scheme", b"http"),
                (b":authority", b"127.0.0.1:8000"),
                (b":path", b"/"),
                (b"user-agent", b"h2load nghttp2/1.52.0"),
            ]
            if workload == "echo":
                headers.append((b"content-length", b"1024"))
                client.send_headers(sid, headers)
                client.send_data(sid, ECHO_BODY, end_stream=True)
            else:
                client.send_headers(sid, headers, end_stream=True)
        client.streams.clear()  # (the responses are never read back: h2 need not track the streams)
        reads.append(client.data_to_send())
    return opening, reads


def cached_client_frames(workload: str, batches: int) -> tuple[bytes, list[bytes]]:
    """client_frames, kept in a temporary file: a run under callgrind then counts only the server."""
    path = Path(tempfile.gettempdir()) / f"kestrelpy-h2micro-{workload}-{batches}.pickle"
    try:
        with path.open("rb") as file:
            return cast("tuple[bytes, list[bytes]]", pickle.load(file))
    except FileNotFoundError:
        frames = client_frames(workload, batches)
        with path.open("wb") as file:
            pickle.dump(frames, file)
        return frames


async def run(
    workload: str, batches: int, profile: cProfile.Profile | None, warmup: int = WARMUP_BATCHES
) -> tuple[float, int]:
    """Seconds per request over `batches` batches after a warm-up; and the bytes written."""
    from bench import apps
    from kestrelpy.config import Config
    from kestrelpy.heartbeat import date_line
    from kestrelpy.protocols.http2 import Http2Connection, Http2Service
    from kestrelpy.state import ServerState

    app: Any = getattr(apps, APPS[workload])
    config = Config(app=app, access_log=False)
    state = ServerState(config, as_served(app, config), asyncio.get_running_loop(), access_log=False)
    state.date_line = date_line(time.time())
    service = Http2Service(config.http2_limits, True, ())
    conn = Http2Connection(state, service, "http", None)
    transport = FakeTransport()
    opening, reads = cached_client_frames(workload, warmup + batches)
    conn.connection_made(transport)  # type: ignore[arg-type]
    conn.data_received(opening)
    receive = conn.data_received
    for i, data in enumerate(reads):
        if i == warmup:
            started = time.perf_counter()
            if profile is not None:
                profile.enable()
        target = state.requests_served + BATCH
        receive(data)
        spins = 0
        while state.requests_served < target or conn._send_scheduled:
            spins += 1
            if spins > MAX_SPINS:
                raise SystemExit(f"{workload}: responses did not complete (a stalled connection?)")
            await asyncio.sleep(0)
    elapsed = time.perf_counter() - started
    if profile is not None:
        profile.disable()
    if transport.closing:
        raise SystemExit(f"the connection closed during {workload}: a connection error?")
    return elapsed / (batches * BATCH), transport.bytes_out


def event_loop() -> asyncio.AbstractEventLoop:
    import uvloop

    return uvloop.new_event_loop()


def calls_per_request(profile: cProfile.Profile, requests: int, top: int) -> None:
    stats = pstats.Stats(profile)
    total_calls = sum(entry[1] for entry in stats.stats.values())  # type: ignore[attr-defined]
    print(f"{total_calls / requests:.0f} Python calls per request (cProfile)")
    stats.sort_stats("tottime").print_stats(top)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("workloads", nargs="*", default=list(APPS), help="plaintext, echo")
    parser.add_argument("--batches", type=int, default=2000, help=f"batches of {BATCH} requests measured")
    parser.add_argument("--warmup", type=int, default=WARMUP_BATCHES, help="batches run before the measure")
    parser.add_argument("--repeats", type=int, default=5, help="runs; the median is reported")
    parser.add_argument("--profile", action="store_true", help="one cProfile run per workload instead")
    parser.add_argument("--top", type=int, default=25, help="functions listed with --profile")
    parser.add_argument("--tree", type=Path, help="import kestrelpy from this checkout")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.tree is not None:
        import_tree(args.tree)
    for workload in args.workloads:
        if args.profile:
            profile = cProfile.Profile()
            loop = event_loop()
            loop.run_until_complete(run(workload, args.batches, profile, args.warmup))
            loop.close()
            print(f"== {workload}")
            calls_per_request(profile, args.batches * BATCH, args.top)
            continue
        times = []
        for _ in range(args.repeats):
            loop = event_loop()
            seconds, _out = loop.run_until_complete(run(workload, args.batches, None, args.warmup))
            loop.close()
            times.append(seconds * 1e6)
        print(
            f"{workload}: {statistics.median(times):.1f} µs per request (median of {args.repeats}: "
            + ", ".join(f"{t:.1f}" for t in times)
            + ")"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
