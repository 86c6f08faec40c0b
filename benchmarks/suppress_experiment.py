"""The `mechest suppress` experiment: train away a rare output event, mechanistically and by sampling, at equal FLOPs.

    nice -n 10 python benchmarks/suppress_experiment.py            # widths 64 and 256 (about an hour on 2 cores)
    python benchmarks/suppress_experiment.py --replot              # redraw the figure from the saved JSON

For each width: the He-init ReLU net random_mlp(width, 3, "relu", seed=0), layer 4 (its output). The threshold t
is the one of a grid that puts the most units' saddlepoint estimates in [2e-6, 5e-5]; the targets are the
``--units`` of those nearest 1e-5 (log scale). Then

- mechanistic: ``mechest.experiments.suppress.suppress`` (``--steps``, ``--lr``), its FLOPs the budget of
- the sampled baseline ``suppress_sampled`` at every hinge margin of ``--margins`` (δ_i = margin × std z_i),
  minibatches of ``--batch-size``, the same optimiser and projection, the same budget;
- verification of every final network, trusting no estimator: subset simulation and importance sampling
  (``mechest.estimators.importance``) of each target's probability, exact exceedance counts over ``--mc-flops``
  worth of inputs (``mechest.estimators.tail.monte_carlo``; where the probability is below 1/N they bound it), and
  the function change E‖M' − M‖² / tr Cov M by Monte Carlo over ``--change-samples`` inputs; the snapshot
  half-way through each run is verified too.

Writes ``--json`` (every record) and ``--figure`` (median target probability against training FLOPs: estimated
lines, subset-simulation markers), prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch

from mechest.estimators.distill import squared_error_network
from mechest.estimators.importance import importance_probability, subset_probability
from mechest.estimators.montecarlo import sample_moments
from mechest.estimators.tail import monte_carlo
from mechest.experiments.suppress import estimated_probability, suppress, suppress_sampled
from mechest.files import write_text_atomically
from mechest.mlp import MLP, random_mlp

LAYER = 4
DEPTH = 3
BAND = (2e-6, 5e-5)  # where the targets' estimates must lie (inside the acceptance band [1e-6, 1e-4])


def choose_event(net: MLP, count: int) -> tuple[float, list[int]]:
    """The threshold (grid step 0.05) with the most units estimated in BAND, and the ``count`` nearest 1e-5."""
    units = list(range(net.output_dim))
    best: tuple[float, list[tuple[float, int]]] = (0.0, [])
    for step in range(40, 200):
        threshold = step * 0.05
        with torch.no_grad():
            prob = estimated_probability(net, LAYER, threshold, units)
        band = [(abs(math.log10(p) + 5), u) for u, p in enumerate(prob.tolist()) if BAND[0] <= p <= BAND[1]]
        if len(band) > len(best[1]):
            best = (threshold, band)
    return best[0], sorted(u for _, u in sorted(best[1])[:count])


def verify(net: MLP, reference: MLP, threshold: float, units: list[int], args: argparse.Namespace,
           counts: bool) -> dict:
    """Subset-simulation probabilities and the Monte Carlo function change; with ``counts`` also importance
    sampling and exact counts."""
    start = time.perf_counter()
    subset = subset_probability(net, LAYER, threshold, units, samples=args.ss_samples, repeats=args.ss_repeats,
                                seed=args.seed + 6)
    record = {"ss_prob": subset.prob.tolist(), "ss_stderr": subset.stderr.tolist(), "ss_flops": subset.flops}
    if counts:
        imp = importance_probability(net, LAYER, threshold, units, samples=args.is_samples, seed=args.seed + 7)
        record.update(is_prob=imp.prob.tolist(), is_stderr=imp.stderr.tolist(), is_flops=imp.flops,
                      is_shifts=[len(shift) - 1 for shift in imp.shifts])
        samples = int(args.mc_flops // net.flops_per_sample())
        mc = monte_carlo(net, LAYER, threshold, samples=samples, seed=args.seed + 8)
        record.update(mc_counts=mc.counts[units].tolist(), mc_samples=mc.samples, mc_high=mc.high[units].tolist())
    if net is not reference:
        variance = sample_moments(reference, args.change_samples, args.seed + 9).variance.sum()
        change = sample_moments(squared_error_network(net, reference), args.change_samples, args.seed + 9)
        record.update(change=float(change.mean[0] / variance),
                      change_stderr=float((change.variance[0] / change.count).sqrt() / variance))
    record["verify_seconds"] = time.perf_counter() - start
    return record


def run_width(width: int, args: argparse.Namespace) -> dict:
    torch.manual_seed(args.seed)
    net = random_mlp(width, DEPTH, "relu", seed=args.seed)
    count = args.units_64 if width <= 64 else args.units_wide
    threshold, units = choose_event(net, count)
    print(f"width {width}: threshold {threshold:g}, units {units}", flush=True)
    record: dict = {"width": width, "threshold": threshold, "units": units,
                    "before": verify(net, net, threshold, units, args, counts=True)}
    print(f"  before: IS {record['before']['is_prob']}, SS {record['before']['ss_prob']}", flush=True)
    runs = []
    snapshots: list[tuple[MLP, dict]] = []

    def keep(candidate: MLP, entry: dict) -> None:
        snapshots.append((candidate, entry))

    mech = suppress(net, LAYER, threshold, units, max_change=args.max_change, steps=args.steps, lr=args.lr,
                    record_every=max(1, args.steps // 10), progress=True, on_record=keep)
    runs.append((mech, list(snapshots)))
    for margin in [] if args.mechanistic_only else args.margins:
        snapshots.clear()
        base = suppress_sampled(net, LAYER, threshold, units, budget=mech.flops, max_change=args.max_change,
                                margin=margin, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                                record_every=max(1, args.steps // 10), progress=True, on_record=keep)
        runs.append((base, list(snapshots)))
    record["runs"] = []
    for result, taken in runs:
        middle = taken[len(taken) // 2]
        entry = {**result.to_dict(), "final": verify(result.net, net, threshold, units, args, counts=True),
                 "middle": {"step": middle[1]["step"], "flops": middle[1]["flops"],
                            **verify(middle[0], net, threshold, units, args, counts=False)}}
        record["runs"].append(entry)
        final = entry["final"]
        print(f"  {result.method}: {result.flops:.3g} FLOPs, {result.seconds:.0f} s, est {result.prob_after.tolist()}"
              f", IS {final['is_prob']}, SS {final['ss_prob']}"
              f", change {final['change']:.4f} ± {final['change_stderr']:.1e}",
              flush=True)
    return record


def median_fall(before: list[float], after: list[float]) -> float:
    return statistics.median(b / a if a > 0 else math.inf for b, a in zip(before, after))


def table(records: list[dict]) -> str:
    lines = [("| width | targets | t | method | steps | FLOPs | seconds | median est. p before → after | median "
              "verified p before → after (subset sim.) | median verified fall (subset sim.) | (importance s.) | "
              "counts after / N | function change (MC) |"), "|" + "---|" * 13]
    for record in records:
        before = record["before"]
        for run in record["runs"]:
            final = run["final"]
            lines.append(
                f"| {record['width']} | {len(record['units'])} | {record['threshold']:g} | {label(run)} | "
                f"{run['steps']} | {run['flops']:.3g} | {run['seconds']:.0f} | "
                f"{statistics.median(run['prob_before']):.2e} → {statistics.median(run['prob_after']):.2e} | "
                f"{statistics.median(before['ss_prob']):.2e} → {statistics.median(final['ss_prob']):.2e} | "
                f"{median_fall(before['ss_prob'], final['ss_prob']):.3g}x | "
                f"{median_fall(before['is_prob'], final['is_prob']):.3g}x | "
                f"{sum(final['mc_counts'])} / {final['mc_samples']:.1e} | "
                f"{100 * final['change']:.3f}% ± {100 * final['change_stderr']:.3f}% |")
    return "\n".join(lines)


def merged(records: list[dict]) -> list[dict]:
    """One record per width: the runs of later records of a width (same net, threshold and targets) appended to
    the first's."""
    by_width: dict[int, dict] = {}
    for record in records:
        if record["width"] in by_width:
            first = by_width[record["width"]]
            if (first["threshold"], first["units"]) != (record["threshold"], record["units"]):
                raise SystemExit(f"records of width {record['width']} disagree on the threshold or the targets")
            first["runs"].extend(record["runs"])
        else:
            by_width[record["width"]] = record
    return list(by_width.values())


def label(run: dict) -> str:
    if run["method"] == "saddlepoint":
        return f"mechanistic (saddlepoint), bound {run['max_change']:g}"
    return f"sampled, {run['method']}, bound {run['max_change']:g}"


def plot(records: list[dict], path: Path) -> None:
    """Median target probability against training FLOPs: estimated (lines), verified by subset simulation (dots:
    before, half-way, final)."""
    figure, panels = plt.subplots(1, len(records), figsize=(6.2 * len(records), 4.6), squeeze=False)
    for axes, record in zip(panels[0], records):
        before = statistics.median(record["before"]["ss_prob"])
        for run in record["runs"]:
            flops = [entry["flops"] for entry in run["history"]]
            estimate = [statistics.median(entry["prob"]) for entry in run["history"]]
            line, = axes.plot(flops, estimate, label=label(run), linestyle="-" if "mech" in label(run) else "--")
            points = [(0, before), (run["middle"]["flops"], statistics.median(run["middle"]["ss_prob"])),
                      (run["flops"], statistics.median(run["final"]["ss_prob"]))]
            axes.plot(*zip(*points), linestyle="none", marker="o", color=line.get_color())
        axes.set_yscale("log")
        axes.set_xlabel("training FLOPs")
        axes.set_ylabel("median target P(z > t)")
        axes.set_title(f"width {record['width']}, 3 ReLU layers, {len(record['units'])} output units, "
                       f"t = {record['threshold']:g}", fontsize=9)
        axes.grid(True, which="both", alpha=0.3)
        axes.legend(fontsize=7, title="lines: saddlepoint estimate; dots: subset simulation", title_fontsize=7)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".partial.png")
    figure.savefig(temporary, dpi=120)
    plt.close(figure)
    temporary.replace(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--widths", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--units-64", type=int, default=8, help="targets at width <= 64 (default 8)")
    parser.add_argument("--units-wide", type=int, default=4, help="targets at larger widths (default 4)")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--lr", type=float, default=0.03)
    parser.add_argument("--max-change", type=float, default=0.01)
    parser.add_argument("--margins", type=float, nargs="+", default=[1.0, 2.0, 3.0])
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--is-samples", type=int, default=1 << 16)
    parser.add_argument("--ss-samples", type=int, default=4096, help="subset simulation states per level")
    parser.add_argument("--ss-repeats", type=int, default=8, help="independent subset simulations per unit")
    parser.add_argument("--mc-flops", type=float, default=2e11, help="FLOPs of each exact count (default 2e11)")
    parser.add_argument("--change-samples", type=int, default=1 << 18)
    parser.add_argument("--json", nargs="+", default=["benchmarks/data/suppress_experiment.json"],
                        help="where to write the records (the first file); --replot reads and merges all")
    parser.add_argument("--figure", default="docs/figures/suppress.png")
    parser.add_argument("--mechanistic-only", action="store_true", help="skip the sampled baseline")
    parser.add_argument("--replot", action="store_true", help="redraw from --json, run nothing")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.replot:
        records = merged([record for path in args.json for record in json.loads(Path(path).read_text())["records"]])
    else:
        records = []
        for width in args.widths:
            records.append(run_width(width, args))
            write_text_atomically(args.json[0], json.dumps({"settings": vars(args), "records": records}))
    print(table(records))
    plot(records, Path(args.figure))
    print(f"wrote {args.figure}")


if __name__ == "__main__":
    main()
