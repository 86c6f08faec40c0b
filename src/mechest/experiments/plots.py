"""The benchmark's figures (docs/method.md §10.3), from the rows of a ``mechest bench`` run; PNG and PDF, Agg backend.

(a) MSE/Var against FLOPs at the headline net, with the Monte Carlo line MSE/Var = forward / FLOPs;
(b) MSE against width per order K, with fitted slopes; (c) MSE/Var against wall-clock seconds, with Monte
Carlo measured in the same run; (d) MSE against depth. Points are means over seeds; MSE has the truth's
noise floor subtracted, and points at or below zero (estimates within the truth's noise) are left out.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import numpy as np  # noqa: E402
from matplotlib.ticker import NullLocator  # noqa: E402

from mechest.experiments.bench import (  # noqa: E402
    BenchSettings,
    fit_mc_time,
    fitted_slope,
    pareto_front,
    seed_means,
)
from mechest.files import atomic_path  # noqa: E402
from mechest.kprop import Scheme as Config  # noqa: E402
from mechest.results import make_directory  # noqa: E402

MARKERS = {("simple", False): "o", ("augment", False): "s", ("simple", True): "^", ("augment", True): "D",
           ("isotropic", False): "v", ("core", True): "P", ("closure", True): "X"}
VARIANT_STYLES = {"simple": "-", "augment": "--", "isotropic": ":", "core": "-.", "closure": (0, (5, 1, 1, 1))}


def colour(order: int) -> str:
    return f"C{order - 1}"


def save(figure: plt.Figure, directory: Path, name: str) -> list[Path]:
    """Write ``name``.png and ``name``.pdf into ``directory``; return the paths."""
    paths = [directory / f"{name}.{suffix}" for suffix in ("png", "pdf")]
    try:
        for path in paths:
            with atomic_path(path) as temporary:
                figure.savefig(temporary, dpi=150, bbox_inches="tight", format=path.suffix[1:])
    finally:
        plt.close(figure)
    return paths


def mc_points(rows: Sequence[dict], width: int, depth: int) -> dict[int, dict[str, float]]:
    """Monte Carlo per sample count at (width, depth): mean over seeds of MSE/Var, FLOPs and seconds."""
    grouped: dict[int, list[dict]] = {}
    for row in rows:
        if row["method"] == "mc" and (row["width"], row["depth"]) == (width, depth):
            grouped.setdefault(row["samples"], []).append(row)
    return {n: {"mse_over_var": float(np.mean([r["mse_over_var"] for r in group])),
                "flops_raw": group[0]["flops_raw"], "seconds": float(np.mean([r["seconds"] for r in group]))}
            for n, group in sorted(grouped.items())}


def scatter_configs(axes: plt.Axes, points: dict[Config, dict[str, float]], x_key: str) -> None:
    """One marker per configuration: colour = K, shape = variant and factorisation, labelled."""
    for config, point in sorted(points.items(), key=lambda item: (item[0].order, item[0].variant)):
        if point["mse_over_var"] > 0:
            axes.scatter(point[x_key], point["mse_over_var"], color=colour(config.order),
                         marker=MARKERS[config.variant, config.factored], label=str(config), zorder=3)


def plot_mse_vs_flops(rows: Sequence[dict], width: int, depth: int, directory: Path) -> list[Path]:
    """(a) MSE/Var against raw FLOPs with the Monte Carlo line and kprop's Pareto front."""
    points = seed_means(rows, width, depth)
    forward = next(r["forward_flops"] for r in rows if (r["width"], r["depth"]) == (width, depth))
    figure, axes = plt.subplots(figsize=(7, 5))
    scatter_configs(axes, points, "flops_raw")
    highest = max([p["flops_raw"] for p in points.values()] + [forward * 10])
    budgets = np.geomspace(forward, highest * 3, 100)
    axes.plot(budgets, forward / budgets, color="red", label="Monte Carlo: forward FLOPs / FLOPs")
    measured = mc_points(rows, width, depth)
    axes.scatter([m["flops_raw"] for m in measured.values() if m["mse_over_var"] > 0],
                 [m["mse_over_var"] for m in measured.values() if m["mse_over_var"] > 0],
                 color="red", marker="x", label="Monte Carlo, measured")
    front = [points[c] for c in pareto_front(points) if points[c]["mse_over_var"] > 0]
    axes.step([p["flops_raw"] for p in front], [p["mse_over_var"] for p in front], where="post", color="grey",
              linewidth=1, label="kprop Pareto front")
    axes.set(xscale="log", yscale="log", xlabel="FLOPs (raw count)", ylabel="MSE / Var (noise floor subtracted)",
             title=f"width {width}, {depth} hidden layers, mean over seeds")
    axes.legend(fontsize=7)
    axes.grid(True, which="major", alpha=0.3)
    return save(figure, directory, "mse_vs_flops")


def plot_mse_vs_time(rows: Sequence[dict], width: int, depth: int, directory: Path) -> list[Path]:
    """(c) MSE/Var against seconds; Monte Carlo measured in the same run (points) and its linear time fit."""
    points = seed_means(rows, width, depth)
    figure, axes = plt.subplots(figsize=(7, 5))
    scatter_configs(axes, points, "seconds")
    measured = mc_points(rows, width, depth)
    axes.scatter([m["seconds"] for m in measured.values() if m["mse_over_var"] > 0],
                 [m["mse_over_var"] for m in measured.values() if m["mse_over_var"] > 0],
                 color="red", marker="x", label="Monte Carlo, measured")
    fit = fit_mc_time(rows, width, depth)
    if fit is not None:
        lowest = min([p["mse_over_var"] for p in points.values() if p["mse_over_var"] > 0] + [1e-3])
        samples = np.geomspace(1, 10 / lowest, 100)
        axes.plot([fit.seconds(n) for n in samples], 1 / samples, color="red",
                  label=f"Monte Carlo: 1/N at {fit.overhead:.2g} s + {fit.per_sample:.2g} s·N")
    axes.set(xscale="log", yscale="log", xlabel="wall-clock seconds (this machine)", ylabel="MSE / Var",
             title=f"width {width}, {depth} hidden layers")
    axes.legend(fontsize=7)
    axes.grid(True, which="major", alpha=0.3)
    return save(figure, directory, "mse_vs_time")


def plot_mse_against(rows: Sequence[dict], pairs: Sequence[tuple[int, int]], along: str, directory: Path,
                     name: str) -> list[Path]:
    """(b)/(d) MSE (noise floor subtracted) against width or depth, one line per configuration, ticks at the
    widths or depths run. Against width: log-log, with the fitted slope of log MSE against log width (the n^−K
    law) in the legend; against depth: a linear depth axis and no slope (MSE grows about geometrically in depth,
    and a power law over 1–4 layers says little)."""
    index = 0 if along == "width" else 1
    series: dict[Config, tuple[list[int], list[float]]] = {}
    for pair in pairs:
        for config, point in seed_means(rows, *pair).items():
            xs, ys = series.setdefault(config, ([], []))
            xs.append(pair[index])
            ys.append(point["mse"])
    figure, axes = plt.subplots(figsize=(7, 5))
    for config, (xs, ys) in sorted(series.items(), key=lambda item: (item[0].order, item[0].variant)):
        shown = [(x, y) for x, y in zip(xs, ys) if y > 0]
        if not shown:
            continue
        slope = fitted_slope(xs, ys) if along == "width" else float("nan")
        axes.plot(*zip(*shown), color=colour(config.order), linestyle=VARIANT_STYLES[config.variant],
                  marker=MARKERS[config.variant, config.factored],
                  label=str(config) + (f" (slope {slope:.2f})" if np.isfinite(slope) else ""))
    fixed = f"{pairs[0][1]} hidden layers" if along == "width" else f"width {pairs[0][0]}"
    axes.set(xscale="log" if along == "width" else "linear", yscale="log", xlabel=along,
             ylabel="MSE (noise floor subtracted)", title=f"MSE against {along}, {fixed}, mean over seeds")
    ticks = sorted({pair[index] for pair in pairs})
    axes.set_xticks(ticks, [str(tick) for tick in ticks])  # 16, 32, 64 rather than log-axis labels like 2×10¹
    axes.xaxis.set_minor_locator(NullLocator())
    axes.legend(fontsize=7)
    axes.grid(True, which="major", alpha=0.3)
    return save(figure, directory, name)


def make_plots(rows: Sequence[dict], settings: BenchSettings, directory: Path) -> list[Path]:
    """All four figures of a bench run into ``directory``; returns the files written."""
    make_directory(directory)
    width, depth = settings.headline
    paths = plot_mse_vs_flops(rows, width, depth, directory) + plot_mse_vs_time(rows, width, depth, directory)
    paths += plot_mse_against(rows, [(w, settings.depth) for w in settings.widths], "width", directory,
                              "mse_vs_width")
    paths += plot_mse_against(rows, [(settings.depth_width, d) for d in settings.depths], "depth", directory,
                              "mse_vs_depth")
    return paths
