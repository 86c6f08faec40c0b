"""FLOPs and wall-clock of kprop per (width, K, variant, factored) on He-init ReLU nets with 4 hidden layers.

FLOPs are counted from the operations run (mechest.flops); seconds are the best of ``--repeats`` uncounted
runs. Run: python benchmarks/kprop_cost.py [--widths 16 32 64 128] [--max-k4-width 64] [--factored-only]
"""

from __future__ import annotations

import argparse

from mechest.estimators.estimate import estimate
from mechest.mlp import random_mlp
from mechest.tables import format_table

CONFIGURATIONS = [(1, "simple", False)] + [
    (order, variant, False) for order in (2, 3, 4) for variant in ("simple", "augment")
] + [(3, "simple", True), (3, "augment", True), (4, "simple", True)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--widths", type=int, nargs="+", default=[16, 32, 64, 128])
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--max-k4-width", type=int, default=64)
    parser.add_argument("--max-k4-augment-width", type=int, default=64)
    parser.add_argument("--max-factored-k4-width", type=int, default=128)
    parser.add_argument("--factored-only", action="store_true", help="only the factored configurations")
    args = parser.parse_args()
    rows = []
    for width in args.widths:
        net = random_mlp(width, args.depth, "relu", seed=0)
        forward = net.flops_per_sample()
        for order, variant, factored in CONFIGURATIONS:
            if args.factored_only and not factored:
                continue
            widest = args.max_factored_k4_width if factored else (
                args.max_k4_augment_width if variant == "augment" else args.max_k4_width)
            if order == 4 and width > widest:
                continue
            runs = [estimate(net, "kprop", order=order, variant=variant, factored=factored)
                    for _ in range(args.repeats)]
            label = f"K={order} {variant}" + (" factored" if factored else "")
            rows.append([width, label, f"{runs[0].flops:.3e}", f"{runs[0].flops / forward:.3g}",
                         f"{min(r.seconds for r in runs):.3f}"])
            print(f"n={width} {label}: {runs[0].flops:.3e} FLOPs, {min(r.seconds for r in runs):.3f} s", flush=True)
    print(format_table(["width", "configuration", "FLOPs", "FLOPs / forward pass", "seconds"], rows))


if __name__ == "__main__":
    main()
