"""MSE of kprop against width, per order K and variant, on He-init ReLU nets (issue: higher orders).

For each width and seed: a random net (4 hidden layers), a Monte Carlo ground truth cached on disk under
RESULTS/truths/<fingerprint>-<samples>.npz, and kprop for K = 1..4 in both variants. Prints, per
(K, variant, width), the seed-averaged MSE/Var with the truth's noise floor subtracted, the wall-clock time,
and the fitted slope of log MSE against log width (it should be close to -K). Writes every run to
RESULTS/width_sweep.csv.

`mechest bench` is the general form of this sweep (it also times Monte Carlo, counts FLOPs and plots); this
script keeps the exact table of docs/results.md.
Run: python benchmarks/width_sweep.py [--widths 16 32 64 128] [--seeds 3] [--samples 1e8]
"""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

import numpy as np
import torch

from mechest.estimators.truth import Truth, compute_truth, score
from mechest.experiments.bench import find_truth, fitted_slope
from mechest.kprop import Scheme, propagate
from mechest.kprop.plan import compile_plan
from mechest.mlp import MLP, random_mlp
from mechest.tables import format_table

CONFIGURATIONS = [(1, "simple")] + [(order, variant) for order in (2, 3, 4) for variant in ("simple", "augment")]


def cached_truth(net: MLP, samples: int, directory: Path, seed: int) -> Truth:
    """The Monte Carlo truth of ``net`` with ``samples`` inputs, computed once and kept on disk."""
    directory.mkdir(parents=True, exist_ok=True)
    cached = find_truth(net, samples, [directory])
    if cached is not None:
        return cached
    return compute_truth(net, samples, directory / f"{net.fingerprint()}-{samples}.npz", seed=seed,
                         dtype=torch.float32, progress=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--widths", type=int, nargs="+", default=[16, 32, 64, 128])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--samples", type=float, default=1e8)
    parser.add_argument("--max-truth-flops", type=float, default=5e12,
                        help="cap on one truth's forward FLOPs: wide nets get fewer samples (default 5e12)")
    parser.add_argument("--max-k4-width", type=int, default=64, help="widest net for unfactored K = 4 simple")
    parser.add_argument("--max-k4-augment-width", type=int, default=64,
                        help="widest net for unfactored K = 4 augment (n^4 arrays: ~25 min and ~18 GB per net at 128)")
    parser.add_argument("--results", type=Path, default=Path("results"))
    args = parser.parse_args()
    samples = int(args.samples)
    records = []
    for width in args.widths:
        for seed in range(args.seeds):
            net = random_mlp(width, args.depth, "relu", seed=seed)
            net_samples = min(samples, int(args.max_truth_flops / net.flops_per_sample()))
            truth = cached_truth(net, net_samples, args.results / "truths", seed=1000 + seed)
            for order, variant in CONFIGURATIONS:
                widest = args.max_k4_augment_width if variant == "augment" else args.max_k4_width
                if order == 4 and width > widest:
                    continue
                if order >= 2:
                    compile_plan(order, variant)  # one-time diagram enumeration, not part of a run
                start = time.perf_counter()
                mean = propagate(net, Scheme(order, variant)).mean
                seconds = time.perf_counter() - start
                measured = score(mean, truth)
                records.append({"width": width, "seed": seed, "truth_samples": net_samples, "order": order,
                                "variant": variant,
                                "mse": measured.mse, "noise_floor": measured.noise_floor,
                                "variance": measured.variance, "mse_over_var": measured.relative,
                                "seconds": seconds})
                print(f"n={width} seed={seed} K={order} {variant}: MSE/Var {measured.relative:.3g} "
                      f"({seconds:.2f} s)", flush=True)
    args.results.mkdir(parents=True, exist_ok=True)
    with open(args.results / "width_sweep.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(records[0]))
        writer.writeheader()
        writer.writerows(records)
    rows = []
    for order, variant in CONFIGURATIONS:
        widths, values, times = [], [], []
        for width in args.widths:
            runs = [r for r in records if (r["width"], r["order"], r["variant"]) == (width, order, variant)]
            if runs:
                widths.append(width)
                values.append(float(np.mean([r["mse_over_var"] for r in runs])))
                times.append(float(np.mean([r["seconds"] for r in runs])))
        rows.append([f"K={order} {variant}"] + [f"{v:.2e}" for v in values] + ["—"] * (len(args.widths) - len(values))
                    + [f"{fitted_slope(widths, values):.2f}", " / ".join(f"{t:.2f}" for t in times)])
    header = ["config"] + [f"n={w}" for w in args.widths] + ["slope", "seconds per net"]
    truth_samples = {r["width"]: r["truth_samples"] for r in records}
    print(f"\nMSE/Var (noise floor subtracted), mean over {args.seeds} seeds, depth {args.depth}; truth samples "
          + ", ".join(f"n={w}: {s:.1e}" for w, s in truth_samples.items()))
    print(format_table(header, rows))


if __name__ == "__main__":
    main()
