"""Progress of long runs, on a terminal and in a log alike: a tqdm bar when stderr is a terminal, otherwise a
plain line on stderr every LOG_INTERVAL seconds (so that a batch job's log says how far a run got and how long
it has left), and nothing when progress is not asked for."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Self, TextIO

from tqdm import tqdm

LOG_INTERVAL = 10.0


class LogProgress:
    """The part of tqdm's interface mechest uses (update, set_postfix_str, set_postfix, close, ``with``), writing
    "DESC: DONE/TOTAL UNITs (P%) after S s, ~R s left, POSTFIX" lines at most every ``interval`` seconds."""

    def __init__(self, total: int, initial: int = 0, unit: str = "it", desc: str | None = None,
                 interval: float = LOG_INTERVAL, clock: Callable[[], float] = time.monotonic,
                 file: TextIO | None = None):
        self.total, self.count, self.initial = total, initial, initial
        self.unit, self.desc, self.interval, self.clock = unit, desc, interval, clock
        self.file = file
        self.started = self.reported = clock()
        self.postfix = ""
        self.reported_count: int | None = None

    def update(self, n: int = 1) -> None:
        self.count += n
        if self.clock() - self.reported >= self.interval:
            self.report()

    def set_postfix_str(self, text: str) -> None:
        self.postfix = text

    def set_postfix(self, **values: object) -> None:
        self.postfix = ", ".join(f"{key}={value}" for key, value in values.items())

    def line(self, now: float) -> str:
        elapsed = now - self.started
        rate = (self.count - self.initial) / elapsed if elapsed > 0 else 0.0
        done = f"{tqdm.format_sizeof(self.count, divisor=1000)}/{tqdm.format_sizeof(self.total, divisor=1000)} "
        share = f" ({self.count / self.total:.0%})" if self.total else ""
        left = f", ~{tqdm.format_interval((self.total - self.count) / rate)} left" if rate > 0 else ""
        postfix = f", {self.postfix}" if self.postfix else ""
        after = tqdm.format_interval(elapsed)
        return f"{self.desc or 'progress'}: {done}{self.unit}s{share} after {after}{left}{postfix}"

    def report(self) -> None:
        now = self.clock()
        print(self.line(now), file=self.file or sys.stderr, flush=True)
        self.reported, self.reported_count = now, self.count

    def close(self) -> None:
        """A last line if earlier lines were written and the count moved since (short runs stay silent)."""
        if self.reported_count is not None and self.reported_count != self.count:
            self.report()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def progress_bar(total: int, *, initial: int = 0, unit: str = "it", desc: str | None = None,
                 shown: bool = True) -> tqdm | LogProgress:
    """A tqdm bar on a terminal, a LogProgress when stderr is not one, a silent (disabled) tqdm unless ``shown``."""
    if shown and not sys.stderr.isatty():
        return LogProgress(total, initial, unit, desc)
    return tqdm(total=total, initial=initial, unit=unit, desc=desc, disable=not shown, unit_scale=True)
