"""Snapshots on the supervisor link, and the supervisor's sum of them.

A worker sends its whole snapshot (totals since it started, not changes) as one line on its channel,
`metrics {json}`, with every ping and once more as it exits. Sending totals makes a lost or repeated line
harmless: the supervisor keeps each worker's latest one. The sum a scrape sees is every live worker's
latest snapshot plus the counters and histograms of the workers that have exited, which are folded in
as each one goes, so counters never go backwards across restarts and recycles. Gauges are summed over
live workers only: an exited worker has no open connection. Counts a worker made after its last line
are lost only if it is killed (a crash, or SIGKILL past its deadline): at most one ping interval's worth.
"""

from __future__ import annotations

import json
from typing import Any

from kestrelpy.metrics import instruments as inst
from kestrelpy.metrics.recorder import Snapshot, Value

PREFIX = "metrics "


def encode(snapshot: Snapshot) -> str:
    """One line: {"instrument": [[attribute values..., value], ...], ...}."""
    return json.dumps({name: [[*key, value] for key, value in series.items()] for name, series in snapshot.items()})


def decode(text: str) -> Snapshot | None:
    """A snapshot from `encode`, or None for anything else (a line cut short, an unknown shape)."""
    try:
        raw = json.loads(text)
        snapshot: Snapshot = {}
        for name, rows in raw.items():
            instrument = inst.BY_NAME[name]
            width = len(instrument.attributes)
            table = snapshot[name] = {}
            for row in rows:
                *key, value = row
                if len(key) != width or not all(isinstance(part, str) for part in key):
                    return None
                table[tuple(key)] = _checked(instrument, value)
    except (ValueError, TypeError, KeyError, AttributeError):
        return None
    return snapshot


def _checked(instrument: inst.Instrument, value: Any) -> Value:
    if instrument.kind == "histogram":
        if not isinstance(value, list) or len(value) != len(instrument.bounds) + 2:
            raise ValueError("not a histogram series")
        return [float(part) for part in value]
    return float(value)


def merge(into: Snapshot, other: Snapshot, *, gauges: bool = True) -> None:
    """Add `other` into `into`: counters, histograms (bucket by bucket) and, unless told not to, gauges."""
    for name, table in other.items():
        if not gauges and inst.BY_NAME[name].kind == "updown":
            continue
        target = into.setdefault(name, {})
        for key, value in table.items():
            held = target.get(key)
            if isinstance(value, list):
                target[key] = (
                    list(value) if not isinstance(held, list) else [a + b for a, b in zip(held, value, strict=True)]
                )
            else:
                target[key] = value + (held if isinstance(held, (int, float)) else 0)


class Aggregate:
    """The supervisor's view: each live worker's latest snapshot, what exited workers had counted, and
    the supervisor's own counters."""

    def __init__(self) -> None:
        self._live: dict[int, Snapshot] = {}
        self._exited: Snapshot = {}
        self.restarts = 0
        self.recycles = 0

    def update(self, worker: int, line: str) -> None:
        snapshot = decode(line)
        if snapshot is not None:
            self._live[worker] = snapshot

    def worker_exited(self, worker: int) -> None:
        snapshot = self._live.pop(worker, None)
        if snapshot is not None:
            merge(self._exited, snapshot, gauges=False)

    def total(self, *, queued: int = 0) -> Snapshot:
        """The whole server; `queued` is read from the listening sockets the supervisor holds."""
        total: Snapshot = {}
        merge(total, self._exited)
        for snapshot in self._live.values():
            merge(total, snapshot)
        total[inst.QUEUED_CONNECTIONS.name] = {(): queued}
        total[inst.WORKER_RESTARTS.name] = {(): self.restarts}
        total[inst.WORKER_RECYCLES.name] = {(): self.recycles}
        return total
