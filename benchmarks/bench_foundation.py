"""Benchmark: kprop K = 1, K = 2 and Monte Carlo at width 256, 4 hidden layers (FLOPs and seconds).

Also reports what Monte Carlo would need for the same error: against a 2^20-sample reference, a method with
MSE/Var = r matches Monte Carlo with N = 1/r samples, i.e. N × (forward FLOPs) FLOPs.
Run: python benchmarks/bench_foundation.py [--width 256] [--depth 4] [--seeds 3]
"""

from __future__ import annotations

import argparse
import statistics

import torch
from timing import fastest

from mechest.estimators.estimate import estimate
from mechest.estimators.montecarlo import sample_moments
from mechest.estimators.truth import Truth, score
from mechest.mlp import random_mlp
from mechest.tables import format_table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--reference-samples", type=int, default=2**20)
    parser.add_argument("--mc-samples", type=int, default=1000)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; width {args.width}, depth {args.depth}")
    rows = []
    for seed in range(args.seeds):
        net = random_mlp(args.width, args.depth, "relu", seed=seed)
        reference = sample_moments(net, args.reference_samples, seed=10_000 + seed)
        truth = Truth(reference.mean.numpy(), reference.variance.numpy(), reference.count, seed, net.fingerprint())
        forward = net.flops_per_sample()
        mc = estimate(net, "mc", samples=args.mc_samples, seed=seed)
        mc_seconds = fastest(lambda: estimate(net, "mc", samples=args.mc_samples, seed=seed))
        mc_seconds_per_sample = mc_seconds / args.mc_samples
        rows.append([seed, f"MC N={args.mc_samples}", mc.flops, mc_seconds, score(mc.mean, truth).relative, "", ""])
        for order in (1, 2):
            kp = estimate(net, "kprop", order=order)
            seconds = fastest(lambda: estimate(net, "kprop", order=order))
            relative = score(kp.mean, truth).relative
            equal_samples = 1 / max(relative, 1e-300)
            rows.append([seed, f"kprop K={order}", kp.flops, seconds, relative,
                         equal_samples * forward / kp.flops, equal_samples * mc_seconds_per_sample / seconds])
    header = ["seed", "method", "FLOPs", "seconds", "MSE/Var", "MC FLOPs / kprop FLOPs at equal MSE",
              "MC time / kprop time at equal MSE"]
    print(format_table(header, rows))
    for order in (1, 2):
        ratios = [row[5] for row in rows if row[1] == f"kprop K={order}"]
        print(f"K={order}: median FLOP advantage over Monte Carlo at equal MSE {statistics.median(ratios):.3g}x")


if __name__ == "__main__":
    main()
