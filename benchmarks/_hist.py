"""A small HDR-style latency histogram: log-linear buckets, ~3% relative error, mergeable across processes.

Values are microseconds (integers). Buckets below 64 µs are exact; above, each power of two is cut
into 32 equal buckets, so any recorded value is reported within 1/32 of itself, from 1 µs to hours,
in a few hundred counters. Histograms from load-generator processes merge by adding counts.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

_SUB = 32
_EXACT = 2 * _SUB


def _index(value: int) -> int:
    if value < _EXACT:
        return max(value, 0)
    shift = value.bit_length() - 6  # value >> shift is in [32, 63]
    return _EXACT + (shift - 1) * _SUB + (value >> shift) - _SUB


def _value(index: int) -> int:
    """The middle of bucket `index` (its lowest value for the exact buckets)."""
    if index < _EXACT:
        return index
    shift, sub = divmod(index - _EXACT, _SUB)
    low = (sub + _SUB) << (shift + 1)
    return low + ((1 << (shift + 1)) >> 1)


class Histogram:
    """Counts of latencies in microseconds."""

    __slots__ = ("counts", "total", "max")

    def __init__(self) -> None:
        self.counts: dict[int, int] = {}
        self.total = 0
        self.max = 0

    def record(self, micros: int) -> None:
        i = _index(micros)
        self.counts[i] = self.counts.get(i, 0) + 1
        self.total += 1
        if micros > self.max:
            self.max = micros

    def merge(self, other: Histogram) -> Histogram:
        for i, n in other.counts.items():
            self.counts[i] = self.counts.get(i, 0) + n
        self.total += other.total
        self.max = max(self.max, other.max)
        return self

    def percentile(self, p: float) -> int:
        """The latency at or below which `p` percent of the recorded values fall; 0 when empty."""
        if not self.total:
            return 0
        rank = max(1, round(self.total * p / 100))
        if rank >= self.total:
            return self.max
        seen = 0
        for i in sorted(self.counts):
            seen += self.counts[i]
            if seen >= rank:
                return min(_value(i), self.max)
        return self.max

    def summary(self) -> dict[str, float]:
        """Count and p50/p90/p99/p99.9/max in milliseconds."""
        ms = {f"p{p:g}_ms".replace(".", "_"): self.percentile(p) / 1000 for p in (50, 90, 99, 99.9)}
        return {"count": self.total, **ms, "max_ms": self.max / 1000}

    def to_json(self) -> dict[str, object]:
        return {"counts": {str(i): n for i, n in sorted(self.counts.items())}, "max": self.max}

    @classmethod
    def from_json(cls, data: Mapping[str, object]) -> Histogram:
        h = cls()
        counts = data["counts"]
        assert isinstance(counts, Mapping)
        h.counts = {int(i): int(n) for i, n in counts.items()}
        h.total = sum(h.counts.values())
        maximum = data["max"]
        assert isinstance(maximum, int)
        h.max = maximum
        return h

    @classmethod
    def merged(cls, histograms: Iterable[Histogram]) -> Histogram:
        out = cls()
        for h in histograms:
            out.merge(h)
        return out
