"""Shared by the benchmarks: the cost of reading the clock, to subtract from microbenchmarks."""

from __future__ import annotations

import statistics
import time


def clock_overhead_ns(samples: int = 10_000) -> float:
    """Median nanoseconds between two back-to-back `perf_counter_ns` calls."""
    clock = time.perf_counter_ns
    gaps = []
    for _ in range(samples):
        start = clock()
        gaps.append(clock() - start)
    return statistics.median(gaps)
