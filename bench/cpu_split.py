#!/usr/bin/env python
"""Where each server's CPU goes per request under wrk: the kernel, the Python interpreter, native code.

Each server runs pinned to one CPU with wrk on the other, exactly as bench/run.py runs them; while wrk
loads it, `perf record` samples that CPU. Every sample taken on one of the server's threads is charged
to the binary it was in (the kernel, libpython, uvloop, httptools, a server's own compiled core, libc);
the shares are then scaled to the server's CPU µs per request measured from /proc over the same load.
This answers what bench/run.py's single CPU figure cannot: how much of a request is Python, and how
much of it every server pays alike (the kernel's reads and writes).

    python bench/cpu_split.py                                 # kestrelpy, granian, uvicorn; plaintext
    python bench/cpu_split.py --servers kestrelpy,granian --workloads plaintext,conn1000 --rounds 3

Needs Linux, `perf` (Debian: linux-perf) allowed to sample a CPU (root, or kernel.perf_event_paranoid
at most 0), wrk and taskset.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.append(str(REPO_ROOT))
from bench import run  # noqa: E402

# The components a sample is charged to, in report order, by the binary's file name.
COMPONENTS = ("kernel", "Python interpreter", "uvloop", "httptools", "server's native core", "libc, loader")
SAMPLE_FREQUENCY_HZ = 999
WARMUP_S = 2
SAMPLE_DELAY_S = 1  # wrk's connections are all open and busy by then


def component_of(dso: str) -> str:
    """The component a binary belongs to ('other' for anything not listed)."""
    name = dso.rsplit("/", 1)[-1]
    if name.startswith("[kernel") or name == "[vdso]":
        return "kernel"
    if name.startswith(("libpython", "python3")) or name.startswith("[JIT]") or name.startswith("perf-"):
        return "Python interpreter"
    if name.startswith("_asyncio."):
        return "Python interpreter"  # asyncio's C tasks and futures: CPython's own extension
    if name.startswith("loop.cpython"):
        return "uvloop"
    if name.startswith("parser.cpython"):
        return "httptools"
    if name.startswith("_granian."):
        return "server's native core"
    if name.startswith(("libc.", "libc-", "ld-linux", "libm.", "libpthread")):
        return "libc, loader"
    return "other"


def parse_samples(perf_script_output: str, threads: set[int]) -> Counter[str]:
    """Samples per component from `perf script -F tid,ip,dso` lines, counting only the given threads."""
    counts: Counter[str] = Counter()
    for line in perf_script_output.splitlines():
        fields = line.split(None, 2)
        if len(fields) < 3 or not fields[0].isdigit() or int(fields[0]) not in threads:
            continue
        counts[component_of(fields[2].strip().strip("()"))] += 1
    return counts


def thread_ids(pids: Iterable[int]) -> set[int]:
    """Every thread of the given processes (a server's Rust or worker threads count as its own)."""
    tids: set[int] = set()
    for pid in pids:
        try:
            tids.update(int(task.name) for task in Path(f"/proc/{pid}/task").iterdir())
        except OSError:
            continue
    return tids


@dataclass
class Split:
    server: str
    workload: str
    requests_per_s: float
    cpu_us_per_request: float
    shares: dict[str, float]  # component -> share of the server's samples

    def microseconds(self, component: str) -> float:
        return self.shares.get(component, 0.0) * self.cpu_us_per_request


def record_cpu(cpu: int, seconds: float, output: Path) -> None:
    subprocess.run(
        ["perf", "record", "-q", "-C", str(cpu), "-F", str(SAMPLE_FREQUENCY_HZ), "-o", str(output), "--",
         "sleep", str(seconds)],
        check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=seconds + 30,
    )  # fmt: skip


def perf_script(data: Path) -> str:
    done = subprocess.run(
        ["perf", "script", "-i", str(data), "-F", "tid,ip,dso"],
        check=True, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    return done.stdout


def measure(server: str, workload: str, duration_s: int, cpus: tuple[int, int], tmp: Path) -> Split | None:
    spec, load = run.SERVERS[server], run.WORKLOADS[workload]
    running = run.start_server(spec, load, cpus[0], tmp)
    try:
        run.wait_until_ready(running, load)
        script = run.compose_script(load, tmp)
        connections = load.connections or 64
        run.run_wrk(running.port, script, connections, WARMUP_S, cpus[1])
        pid = running.process.pid
        threads = thread_ids(run.process_tree(pid))
        data = tmp / f"{server}-{workload}.perf"
        sampler = threading.Timer(SAMPLE_DELAY_S, record_cpu, (cpus[0], duration_s - 2 * SAMPLE_DELAY_S, data))
        before = run.tree_cpu_seconds(pid)
        sampler.start()
        wrk = run.run_wrk(running.port, script, connections, duration_s, cpus[1])
        cpu_used = run.tree_cpu_seconds(pid) - before
        sampler.join()
    except (run.ServerStartError, run.WrkError, subprocess.SubprocessError) as exc:
        run.log(f"  {server} {workload}: {exc}")
        return None
    finally:
        run.stop_server(running)
    counts = parse_samples(perf_script(data), threads)
    total = sum(counts.values())
    if not total or not wrk.requests:
        run.log(f"  {server} {workload}: no samples or no responses")
        return None
    shares = {component: count / total for component, count in counts.items()}
    return Split(server, workload, wrk.requests_per_s, cpu_used * 1e6 / wrk.requests, shares)


def median_split(splits: Sequence[Split]) -> Split:
    """Medians over rounds of the CPU per request and of each component's share."""
    components = {c for s in splits for c in s.shares}
    return Split(
        splits[0].server,
        splits[0].workload,
        statistics.median(s.requests_per_s for s in splits),
        statistics.median(s.cpu_us_per_request for s in splits),
        {c: statistics.median(s.shares.get(c, 0.0) for s in splits) for c in components},
    )


def render(splits: Sequence[Split], rounds: int) -> str:
    columns = [*COMPONENTS, "other"]
    lines = [
        f"CPU µs per request by component (median of {rounds} rounds; shares from perf samples of the server's",
        "threads, scaled to its CPU per request from /proc)",
        "",
        "| workload | server | req/s | CPU µs/req | " + " | ".join(columns) + " |",
        "| --- | --- | ---: | ---: | " + " | ".join("---:" for _ in columns) + " |",
    ]
    for s in splits:
        cells = " | ".join(f"{s.microseconds(c):.1f}" for c in columns)
        lines.append(f"| {s.workload} | {s.server} | {s.requests_per_s:,.0f} | {s.cpu_us_per_request:.1f} | {cells} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    servers = ",".join(("kestrelpy", "granian", "uvicorn"))
    parser.add_argument("--servers", default=servers, type=lambda v: run.parse_list(v, run.SERVERS, "server"))
    parser.add_argument("--workloads", default="plaintext", type=lambda v: run.parse_list(v, run.WORKLOADS, "workload"))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=8, help="seconds of load per run (sampled: all but 2)")
    args = parser.parse_args(argv)
    for tool in ("perf", "wrk", "taskset"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} not found")
    server_cpu, client_cpu = run.choose_cpus()
    if server_cpu is None or client_cpu is None:
        raise SystemExit("needs two CPUs to pin the server and wrk apart")
    run.raise_open_file_limit(2 * max(run.WORKLOADS[w].connections or 64 for w in args.workloads) + 64)
    results: dict[tuple[str, str], list[Split]] = {}
    with tempfile.TemporaryDirectory(prefix="kestrel-cpu-split-") as tmp:
        for round_no, workload, server in run.plan(args.rounds, args.workloads, args.servers):
            split = measure(server, workload, args.duration, (server_cpu, client_cpu), Path(tmp))
            if split is not None:
                results.setdefault((workload, server), []).append(split)
                run.log(
                    f"round {round_no} {workload} {server}: {split.requests_per_s:,.0f} req/s, "
                    f"{split.cpu_us_per_request:.1f} µs/req, Python {split.microseconds('Python interpreter'):.1f}"
                )
    print(render([median_split(v) for v in results.values()], args.rounds))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
