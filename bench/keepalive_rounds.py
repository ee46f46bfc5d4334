#!/usr/bin/env python
"""A fixed number of plaintext GETs over N keep-alive connections, for a server run under valgrind.

wrk runs for a time, so under callgrind (about a hundred times slower) it measures whatever number of
requests fits; this client sends exactly `--requests`, in rounds: one request on every connection, then
every answer read, as wrk's connections keep the server's reads spread over all of them. `--before`
runs once every connection is open and has had one answer (the warm-up), `--after` once the measured
requests are answered: with callgrind_control they bound what is counted.

    valgrind --tool=callgrind --cache-sim=yes --LL=1048576,8,64 python -m kestrelpy \\
        bench.apps:plaintext --port 8000 --no-access-log &
    python bench/keepalive_rounds.py --port 8000 --connections 1000 --requests 20000 \\
        --before "callgrind_control -z $!" --after "callgrind_control -d $!"
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import time
from collections.abc import Sequence

ANSWER_END = b"Hello, world!"  # the plaintext app's body ends every answer


def request(host: str, port: int) -> bytes:
    return b"GET / HTTP/1.1\r\nHost: %s:%d\r\n\r\n" % (host.encode(), port)


def one_round(socks: Sequence[socket.socket], data: bytes) -> None:
    """A request on each connection, then each answer read whole."""
    for sock in socks:
        sock.sendall(data)
    for sock in socks:
        received = b""
        while not received.endswith(ANSWER_END):
            chunk = sock.recv(4096)
            if not chunk:
                raise SystemExit("the server closed a connection")
            received += chunk


def run_hook(command: str | None) -> None:
    if command:
        subprocess.run(command, shell=True, check=True, stdout=subprocess.DEVNULL)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--requests", type=int, default=20_000, help="measured requests, after the warm-up round")
    parser.add_argument("--before", help="shell command run after the warm-up round")
    parser.add_argument("--after", help="shell command run after the measured requests")
    args = parser.parse_args(argv)
    data = request(args.host, args.port)
    socks = [socket.create_connection((args.host, args.port)) for _ in range(args.connections)]
    for sock in socks:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    one_round(socks, data)
    run_hook(args.before)
    started = time.monotonic()
    done = 0
    while done < args.requests:
        group = socks[: min(len(socks), args.requests - done)]
        one_round(group, data)
        done += len(group)
    elapsed = time.monotonic() - started
    run_hook(args.after)
    for sock in socks:
        sock.close()
    print(f"{done} requests over {len(socks)} connections in {elapsed:.1f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
