"""Scraping the metrics listener and reading the answer with prometheus_client's own parser."""

from __future__ import annotations

import math
import socket
from dataclasses import dataclass

from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from tests.support.waiting import WAIT, wait_until


@dataclass
class Scrape:
    status: int
    headers: str
    body: str

    @property
    def families(self) -> dict[str, Metric]:
        return {family.name: family for family in text_string_to_metric_families(self.body)}

    def value(self, sample: str, **labels: str) -> float:
        """The one sample named `sample` whose labels are exactly `labels` (0 when there is none)."""
        found = [
            s.value
            for family in self.families.values()
            for s in family.samples
            if s.name == sample and s.labels == labels
        ]
        assert len(found) <= 1, (sample, labels, found)
        return found[0] if found else 0.0

    def total(self, sample: str, **labels: str) -> float:
        """The sum of every `sample` whose labels include `labels`."""
        return sum(
            s.value
            for family in self.families.values()
            for s in family.samples
            if s.name == sample and labels.items() <= s.labels.items()
        )


def request(port: int, head: bytes, timeout: float = WAIT) -> tuple[int, str, str]:
    """One request on a fresh connection; the listener closes after its answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(head)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    raw = b"".join(chunks).decode()
    head_text, _, body = raw.partition("\r\n\r\n")
    return int(head_text.split(" ", 2)[1]), head_text, body


def scrape(port: int, path: str = "/metrics") -> Scrape:
    return Scrape(*request(port, f"GET {path} HTTP/1.1\r\nHost: metrics\r\n\r\n".encode()))


def scrape_until(port: int, sample: str, wanted: float, timeout: float = WAIT, **labels: str) -> Scrape:
    """Scrape until the sum of `sample` over series matching `labels` is `wanted` (workers report once
    a second); fails with the last scrape's value otherwise."""
    last: list[Scrape] = []

    def reached() -> bool:
        last[:] = [scrape(port)]
        return last[0].total(sample, **labels) == wanted

    assert wait_until(reached, timeout, interval=0.1), (sample, labels, last[0].total(sample, **labels), wanted)
    return last[0]


def check_histograms(result: Scrape) -> int:
    """Every histogram's buckets never decrease and end in +Inf == _count; returns how many series."""
    series = 0
    for family in result.families.values():
        if family.type != "histogram":
            continue
        by_series: dict[tuple[tuple[str, str], ...], list[tuple[float, float]]] = {}
        counts: dict[tuple[tuple[str, str], ...], float] = {}
        for s in family.samples:
            key = tuple(sorted((k, v) for k, v in s.labels.items() if k != "le"))
            if s.name.endswith("_bucket"):
                by_series.setdefault(key, []).append((float(s.labels["le"]), s.value))
            elif s.name.endswith("_count"):
                counts[key] = s.value
        for key, buckets in by_series.items():
            buckets.sort()
            values = [value for _, value in buckets]
            assert values == sorted(values), (family.name, key, buckets)
            assert math.isinf(buckets[-1][0]) and values[-1] == counts[key], (family.name, key, buckets)
            series += 1
    return series
