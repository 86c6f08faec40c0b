"""Is the importance sampler right on a *fine-tuned* network? Check it against exact counts where both reach.

    nice -n 10 python benchmarks/suppress_is_check.py          # width 64: about 10 minutes on 2 cores

Fine-tunes random_mlp(64, 3, "relu", seed=0) exactly as benchmarks/suppress_experiment.py does (same threshold,
targets, steps and learning rate), then, for each target unit i of the tuned network, takes the thresholds t at
which z_i's exceedance count among ``--samples`` inputs is 1e-4 and 1e-5 of them, and compares the importance
estimate at t (``--is-samples`` draws) and the subset-simulation estimate (8 runs of 4096) with a fresh exact
count at t (other seed): z = difference over the combined standard error. Prints a table and the z-scores' rms.
"""

from __future__ import annotations

import argparse
import math

import torch
from suppress_experiment import LAYER, choose_event  # the sibling script (its folder is on sys.path)

from mechest.estimators.importance import importance_probability, subset_probability
from mechest.estimators.tail import monte_carlo
from mechest.experiments.suppress import pre_activation_and_output, suppress
from mechest.mlp import random_mlp


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--units", type=int, default=8)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--lr", type=float, default=0.03)
    parser.add_argument("--samples", type=int, default=2_000_000)
    parser.add_argument("--is-samples", type=int, default=1 << 15)
    args = parser.parse_args()
    torch.set_num_threads(1)
    net = random_mlp(args.width, 3, "relu", seed=0)
    threshold, units = choose_event(net, args.units)
    tuned = suppress(net, LAYER, threshold, units, steps=args.steps, lr=args.lr).net
    generator = torch.Generator().manual_seed(123)
    with torch.no_grad():
        z = torch.cat([pre_activation_and_output(tuned, torch.randn(1 << 16, args.width, generator=generator,
                                                                      dtype=torch.float64), LAYER)[0][:, units]
                       for _ in range(math.ceil(args.samples / (1 << 16)))])
    print("| unit | fraction | t | exact count p | importance p | z | subset sim. p | z |\n"
          "|---|---|---|---|---|---|---|---|")
    scores, subset_scores = [], []
    for fraction in (1e-4, 1e-5):
        rank = int(fraction * z.shape[0])
        for column, unit in enumerate(units):
            t = float(z[:, column].topk(rank + 1).values[-1])
            counted = monte_carlo(tuned, LAYER, t, samples=args.samples, seed=77)
            exact = float(counted.prob[unit])
            count_error = math.sqrt(exact * (1 - exact) / args.samples)
            imp = importance_probability(tuned, LAYER, t, [unit], samples=args.is_samples, seed=5)
            score = (float(imp.prob[0]) - exact) / math.hypot(float(imp.stderr[0]), count_error)
            scores.append(score)
            subset = subset_probability(tuned, LAYER, t, [unit], samples=4096, repeats=8, seed=5)
            subset_scores.append((float(subset.prob[0]) - exact) / math.hypot(float(subset.stderr[0]), count_error))
            print(f"| {unit} | {fraction:g} | {t:.4f} | {exact:.3e} ({int(counted.counts[unit])}) | "
                  f"{float(imp.prob[0]):.3e} ± {float(imp.stderr[0]):.1e} | {score:+.2f} | "
                  f"{float(subset.prob[0]):.3e} ± {float(subset.stderr[0]):.1e} | {subset_scores[-1]:+.2f} |",
                  flush=True)
    for name, values in (("importance", scores), ("subset simulation", subset_scores)):
        print(f"{name}: rms z = {math.sqrt(sum(s * s for s in values) / len(values)):.2f} over {len(values)} "
              f"checks, max |z| = {max(abs(s) for s in values):.2f}")


if __name__ == "__main__":
    main()
