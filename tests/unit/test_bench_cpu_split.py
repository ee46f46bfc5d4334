"""bench/cpu_split.py's accounting of perf samples, on lines recorded from `perf script -F tid,ip,dso`."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.cpu_split import component_of, parse_samples

# One line of each (thread, binary) pair from a real sample of CPU 0 while granian served plaintext:
# threads 4720, 4723 and 4724 were granian's; 4556 was another program on the same CPU, 0 the idle task.
RECORDED = (Path(__file__).parent.parent / "fixtures" / "bench" / "perf_script_granian.txt").read_text()


@pytest.mark.parametrize(
    ("dso", "component"),
    [
        ("[kernel.kallsyms]", "kernel"),
        ("[vdso]", "kernel"),
        ("/root/.pyenv/versions/3.12.1/lib/libpython3.12.so.1.0", "Python interpreter"),
        ("/usr/bin/python3.11", "Python interpreter"),  # Debian links libpython into the executable
        ("/usr/lib/python3.12/lib-dynload/_asyncio.cpython-312-x86_64-linux-gnu.so", "Python interpreter"),
        ("/v/site-packages/uvloop/loop.cpython-312-x86_64-linux-gnu.so", "uvloop"),
        ("/v/site-packages/httptools/parser/parser.cpython-312-x86_64-linux-gnu.so", "httptools"),
        ("/v/site-packages/granian/_granian.cpython-312-x86_64-linux-gnu.so", "server's native core"),
        ("/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2", "libc, loader"),
        ("/usr/lib/x86_64-linux-gnu/libssl.so.3", "other"),
    ],
)
def test_each_binary_is_charged_to_its_component(dso: str, component: str) -> None:
    assert component_of(dso) == component


def test_only_the_servers_threads_are_counted() -> None:
    counts = parse_samples(RECORDED, {4720, 4723, 4724})
    assert counts == {"kernel": 3, "server's native core": 2, "libc, loader": 2, "Python interpreter": 1, "uvloop": 1}
