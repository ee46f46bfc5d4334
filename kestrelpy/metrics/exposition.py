"""The Prometheus text exposition format, version 0.0.4, written here rather than through prometheus_client.

Why not prometheus_client: its registry holds one process's values, so a worker's registry shows that
worker alone (the problem its multiprocess mode works around with a directory of memory-mapped files, an
environment variable and its own rules for dead workers' gauges). Here the supervisor already holds the
whole server's numbers, summed from the workers' snapshots; what is left is about sixty lines of text
formatting, and the server keeps no dependency for it. The tests read the output with
prometheus_client's own parser.
"""

from __future__ import annotations

from collections.abc import Iterator

from kestrelpy.metrics import instruments as inst
from kestrelpy.metrics.recorder import Snapshot, Value

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def render(snapshot: Snapshot) -> str:
    lines: list[str] = []
    for instrument in inst.INSTRUMENTS:
        name = instrument.prometheus_name
        lines.append(f"# HELP {name} {_escape_help(instrument.description)}")
        lines.append(f"# TYPE {name} {instrument.prometheus_type}")
        table = snapshot.get(instrument.name, {})
        if not table and not instrument.attributes:
            table = {(): 0}
        for key in sorted(table):
            labels = [(label, value) for label, value in zip(instrument.labels, key, strict=True) if value]
            lines.extend(_samples(instrument, name, labels, table[key]))
    return "\n".join(lines) + "\n"


def _samples(instrument: inst.Instrument, name: str, labels: list[tuple[str, str]], value: Value) -> Iterator[str]:
    if not isinstance(value, list):
        yield f"{name}{_labels(labels)} {_number(value)}"
        return
    cumulative = 0.0
    for bound, count in zip((*instrument.bounds, float("inf")), value[:-1], strict=True):
        cumulative += count
        le = "+Inf" if bound == float("inf") else repr(float(bound))
        yield f"{name}_bucket{_labels([*labels, ('le', le)])} {_number(cumulative)}"
    yield f"{name}_sum{_labels(labels)} {_number(value[-1])}"
    yield f"{name}_count{_labels(labels)} {_number(cumulative)}"


def _labels(labels: list[tuple[str, str]]) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{label}="{_escape_value(value)}"' for label, value in labels) + "}"


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _escape_value(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")
