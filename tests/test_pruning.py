"""Dead units (mechest.kprop.executor.pruning, ``planned(…, prune=t)``, docs/method.md §7.11): on a net whose dead
units are dead beyond doubt (pre-activation means 30 standard deviations below zero) pruning changes nothing but
round-off, for every K = 3 variant and option and K = 2 augment, with and without an output map; it shrinks the
products (fewer FLOPs counted); and units merely near the threshold are kept."""

from __future__ import annotations

import pytest
import torch

from mechest.flops import FlopCounter
from mechest.kprop import executor as xprop
from mechest.kprop.spec import executor_spec

TORCH = xprop.Backend(torch, torch.special.ndtr)
DEAD = 5  # units per layer given a bias of −30 σ


def dead_unit_layers(width: int, depth: int, output_map: bool, seed: int = 0) -> xprop.Layers:
    """He-init ReLU layers whose first DEAD units have a bias 30 pre-activation standard deviations below zero."""
    generator = torch.Generator().manual_seed(seed)
    weights = [torch.randn(width, width, generator=generator, dtype=torch.float64) * (2 / width) ** 0.5
               for _ in range(depth + output_map)]
    biases = [torch.zeros(width, dtype=torch.float64) for _ in weights]
    for bias in biases[:depth]:
        bias[:DEAD] = -30.0 * 2**0.5 * depth  # every pre-activation's standard deviation is below 2^0.5·depth
    return xprop.Layers(weights, biases, ["relu"] * depth)


CASES = [(3, "simple", {}), (3, "closure", {}), (3, "simple", {"correction": xprop.ThinCorrection(4, 1)}),
         (3, "closure", {"correction": xprop.ThinCorrection(4, 1)}),
         (3, "simple", {"compression": xprop.Compression(1, 64, 1)}),
         (3, "closure", {"compression": xprop.Compression(2, 64, 0), "correction": xprop.ThinCorrection(64, 1)}),
         (3, "core", {}), (2, "augment", {})]


@pytest.mark.parametrize(("order", "variant", "options"), CASES)
@pytest.mark.parametrize("outputs", ["mean", "cov", "marginals"])
def test_pruning_dead_units_changes_nothing_but_round_off(order: int, variant: str, options: dict,
                                                           outputs: str) -> None:
    layers = dead_unit_layers(24, 5, output_map=outputs != "mean")
    spec = executor_spec(order, variant if variant != "closure" else "core", max_width=64)
    kept = xprop.run_scheme(TORCH, layers, order, variant, spec, outputs, **options)
    # round-off only: the range finder's QR sees fewer rows (a wrongly dropped unit shows as ≥ 1e-3, measured)
    pruned = xprop.run_scheme(TORCH, layers, order, variant, spec, outputs, prune=8.0, **options)
    for ours, theirs in zip(pruned.layer_means, kept.layer_means, strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-9, atol=1e-10)
    for name in ("mean", "cov", "third_diagonal", "fourth_diagonal"):
        if getattr(kept, name) is not None:
            torch.testing.assert_close(getattr(pruned, name), getattr(kept, name), rtol=1e-9, atol=1e-10)


def test_pruning_shrinks_the_products_and_keeps_live_units() -> None:
    layers = dead_unit_layers(32, 5, output_map=False)
    spec = executor_spec(3, "core", max_width=64)
    counts = {}
    for prune in (None, 8.0, 1e6):
        with FlopCounter() as counter:
            xprop.run_scheme(TORCH, layers, 3, "closure", spec, "mean", prune=prune)
        counts[prune] = counter.total
    assert counts[8.0] < 0.9 * counts[None]  # 5 of 32 units dropped from κ_2, κ_3 and their products
    assert counts[1e6] >= counts[None]  # a threshold no unit reaches drops nothing (and restricts nothing)
    # a live net: He-init without biases has no unit 8 σ below zero, so pruning keeps every one
    live = xprop.relu_layers([layer.clone() for layer in layers.weights])
    same = xprop.run_scheme(TORCH, live, 3, "closure", spec, "mean", prune=8.0)
    torch.testing.assert_close(torch.stack(same.layer_means),
                               torch.stack(xprop.run_scheme(TORCH, live, 3, "closure", spec, "mean").layer_means),
                               rtol=0, atol=0)
