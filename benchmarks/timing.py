"""Timing for the benchmark scripts: the fastest of a few runs (on a shared machine the minimum is the least noisy)."""

from __future__ import annotations

import time
from collections.abc import Callable


def fastest(function: Callable[[], object], repeats: int = 3) -> float:
    """Seconds of the fastest of ``repeats`` calls of ``function``."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return min(times)
