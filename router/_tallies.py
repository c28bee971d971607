"""The metrics updated on every call, kept in plain Python values and handed to prometheus_client at scrape time.

prometheus_client's own `Counter` and `Histogram` take a lock per update: about 0.9 µs per counted call and 1.9 µs
per observed duration (measured on the 2-core VM). Every update here comes from the router's event loop thread, so
none needs a lock: an increment of a list item costs about 0.25 µs. A scrape runs on the metrics server's thread
and copies what it reads; it may see an observation in a histogram's sum and not yet in its buckets, which the
next scrape sets right.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator, Sequence

from prometheus_client.metrics_core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector


class Tally:
    """One histogram series: counts per bucket (upper bounds inclusive, then +Inf) and the sum observed."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value

    def buckets(self) -> list[tuple[str, int]]:
        """Cumulative counts by upper bound, as the exposition wants them."""
        counts, total, out = list(self.counts), 0, []
        for bound, count in zip((*map(_le, self.bounds), "+Inf"), counts, strict=True):
            total += count
            out.append((bound, total))
        return out


def _le(bound: float) -> str:
    return repr(float(bound))


class HistogramTallies(Collector):
    """A histogram with labels, its series created on first use (`series`)."""

    def __init__(self, name: str, documentation: str, labels: Sequence[str], bounds: Sequence[float]) -> None:
        self.name, self.documentation, self.labels, self.bounds = name, documentation, tuple(labels), tuple(bounds)
        self._series: dict[tuple[str, ...], Tally] = {}

    def series(self, *values: str) -> Tally:
        tally = self._series.get(values)
        if tally is None:
            tally = self._series[values] = Tally(self.bounds)
        return tally

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labels)
        for values, tally in list(self._series.items()):
            family.add_metric(list(values), tally.buckets(), tally.sum)
        yield family


class CounterTallies(Collector):
    """A counter with labels: `counts` maps label values to the count so far (``name_total``)."""

    def __init__(self, name: str, documentation: str, labels: Sequence[str]) -> None:
        self.name, self.documentation, self.labels = name, documentation, tuple(labels)
        self.counts: dict[tuple[str, ...], int] = {}

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labels)
        for values, count in list(self.counts.items()):
            family.add_metric(list(values), count)
        yield family
