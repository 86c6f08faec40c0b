"""Plots of training runs (matplotlib, Agg backend), written atomically."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
from matplotlib.backend_bases import FigureCanvasBase  # noqa: E402

from mechest.errors import MechestError  # noqa: E402
from mechest.experiments.training import TrainingRun  # noqa: E402
from mechest.files import atomic_path  # noqa: E402


def image_format(path: str | Path) -> str:
    """The image format that ``path``'s suffix names (png without one), or a MechestError if matplotlib has no
    writer for it."""
    suffix = Path(path).suffix[1:].lower() or "png"
    formats = FigureCanvasBase.get_supported_filetypes()
    if suffix not in formats:
        raise MechestError(f"cannot write {path}: no image format {suffix!r}; use one of {', '.join(sorted(formats))}")
    return suffix


def plot_runs(runs: Sequence[TrainingRun], path: str | Path, title: str = "", file_format: str | None = None) -> None:
    """True held-out loss (± 2 standard errors) against training FLOPs, log-log, one line per run, in
    ``file_format`` (default: ``image_format(path)``).

    The initial loss (0 FLOPs) is drawn as a dashed horizontal line.
    """
    path = Path(path)
    file_format = file_format or image_format(path)
    figure, axes = plt.subplots(figsize=(6.4, 4.4))
    for run in runs:
        flops, loss, stderr = run.flops[1:], run.true_loss[1:], run.stderr[1:]
        line, = axes.plot(flops, loss, marker=".", label=run.label)
        axes.fill_between(flops, [m - 2 * s for m, s in zip(loss, stderr)], [m + 2 * s for m, s in zip(loss, stderr)],
                          color=line.get_color(), alpha=0.2)
    if runs:
        axes.axhline(runs[0].true_loss[0], color="grey", linestyle="--", label="initial student")
    axes.set_xscale("log")
    axes.set_yscale("log")
    axes.set_xlabel("training FLOPs (forward + backward)")
    axes.set_ylabel("true loss E‖S(x) − T(x)‖² (held-out)")
    axes.set_title(title, fontsize=10)
    axes.legend(fontsize=8)
    axes.grid(True, which="both", alpha=0.3)
    figure.tight_layout()
    try:
        with atomic_path(path) as temporary:
            figure.savefig(temporary, dpi=120, format=file_format)
    finally:
        plt.close(figure)
