"""``mechest demo``: cumulant propagation against Monte Carlo on one random He-init ReLU network."""

from __future__ import annotations

from mechest.estimators.estimate import Estimate, estimate
from mechest.estimators.montecarlo import sample_moments
from mechest.estimators.truth import Truth, score
from mechest.mlp import random_mlp
from mechest.tables import format_table


def demo_rows(estimates: list[Estimate], truth: Truth) -> list[list[object]]:
    """One table row per estimate: label, MSE/Var against the reference, FLOPs, seconds."""
    rows = []
    for result in estimates:
        label = f"kprop K={result.scheme.order}" if result.method == "kprop" else f"Monte Carlo N={result.samples:,}"
        rows.append([label, score(result.mean, truth).relative, f"{result.flops:.3e}", f"{result.seconds:.3f}"])
    return rows


def run_demo(width: int, depth: int, reference_samples: int, seed: int) -> str:
    """Estimate E[M(x)] for a random ReLU net by kprop K = 1, 2 and by Monte Carlo; return a table."""
    net = random_mlp(width, depth, "relu", seed=seed)
    reference = sample_moments(net, reference_samples, seed=seed + 1, progress=True)
    truth = Truth(reference.mean.numpy(), reference.variance.numpy(), reference.count, seed + 1, net.fingerprint())
    estimates = [estimate(net, "kprop", order=order) for order in (1, 2)]
    estimates += [estimate(net, "mc", samples=samples, seed=seed + 2) for samples in (1, 100, 10_000)]
    header = ["estimator", "MSE/Var", "FLOPs", "seconds"]
    intro = (f"Width-{width} ReLU MLP with {depth} hidden layers (He init, seed {seed}); error measured against "
             f"a {reference_samples:,}-sample Monte Carlo reference, its noise floor subtracted.\n")
    return intro + format_table(header, demo_rows(estimates, truth))
