"""Dead units (mechest.kprop.executor.pruning, ``PlanOptions(prune=t)``, docs/method.md §7.11): on a net whose dead
units are dead beyond doubt (pre-activation means 30 standard deviations below zero) pruning changes nothing but
round-off for every K = 3 variant and K = 2 augment, with thin legs and lossless compression, with and without an
output map, and no more than the compression's own error with lossy compression (its sketch sees narrower
sources); it shrinks the products (fewer FLOPs counted); the threshold is a strict cut; it refuses non-ReLU nets."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from mechest.flops import FlopCounter
from mechest.kprop import executor as xprop
from mechest.kprop.executor.pruning import kept_units
from mechest.kprop.spec import executor_spec

TORCH = xprop.Backend(torch, torch.special.ndtr)
DEAD = 5  # units per layer given a bias of −30 σ
THIN = xprop.ThinCorrection(4, 1)


def dead_unit_layers(width: int, depth: int, output_map: bool, seed: int = 0,
                     dims: list[int] | None = None) -> xprop.Layers:
    """He-init ReLU layers (``depth`` of ``width`` units, or the input and hidden widths ``dims``; with an output map
    to 3 outputs) whose first DEAD units have a bias 30 pre-activation standard deviations below zero."""
    dims = dims or [width] * (depth + 1)
    depth = len(dims) - 1
    shapes = list(zip(dims[1:], dims[:-1])) + ([(3, dims[-1])] if output_map else [])
    generator = torch.Generator().manual_seed(seed)
    weights = [torch.randn(out, inp, generator=generator, dtype=torch.float64) * (2 / inp) ** 0.5
               for out, inp in shapes]
    biases = [torch.zeros(out, dtype=torch.float64) for out, _ in shapes]
    for bias in biases[:depth]:
        bias[:DEAD] = -30.0 * 2**0.5 * depth  # every pre-activation's standard deviation is below 2^0.5·depth
    return xprop.Layers(weights, biases, ["relu"] * depth)


EXACT = xprop.PlanOptions()
CASES = [(3, "simple", EXACT), (3, "closure", EXACT), (3, "simple", xprop.PlanOptions(correction=THIN)),
         (3, "closure", xprop.PlanOptions(correction=THIN)),
         (3, "simple", xprop.PlanOptions(compression=xprop.Compression(1, 64, 1))),
         (3, "closure", xprop.PlanOptions(compression=xprop.Compression(2, 64, 0),
                                          correction=xprop.ThinCorrection(64, 1))),
         (3, "core", EXACT), (2, "augment", EXACT)]


@pytest.mark.parametrize(("order", "variant", "options"), CASES)
@pytest.mark.parametrize("outputs", ["mean", "cov", "marginals"])
@pytest.mark.parametrize("dims", [None, [11, 30, 19, 26, 23, 17]], ids=["square", "odd"])
def test_pruning_dead_units_changes_nothing_but_round_off(order: int, variant: str, options: xprop.PlanOptions,
                                                           outputs: str, dims: list[int] | None) -> None:
    layers = dead_unit_layers(24, 5, output_map=outputs != "mean", dims=dims)
    spec = executor_spec(order, variant if variant != "closure" else "core", max_width=64)
    kept = xprop.run_scheme(TORCH, layers, order, variant, spec, outputs, options=options)
    # round-off only: the range finder's QR sees fewer rows (a wrongly dropped unit shows as ≥ 1e-3, measured)
    pruned = xprop.run_scheme(TORCH, layers, order, variant, spec, outputs, options=replace(options, prune=8.0))
    for ours, theirs in zip(pruned.layer_means, kept.layer_means, strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-9, atol=1e-10)
    for name in ("mean", "cov", "third_diagonal", "fourth_diagonal"):
        if getattr(kept, name) is not None:
            torch.testing.assert_close(getattr(pruned, name), getattr(kept, name), rtol=1e-9, atol=1e-10)


def test_pruning_shrinks_the_products_and_keeps_live_units() -> None:
    layers = dead_unit_layers(32, 5, output_map=False)
    spec = executor_spec(3, "core", max_width=64)
    counts = {}
    xprop.run_scheme(TORCH, layers, 3, "closure", spec, "mean")  # the constants (range finders' test matrices)
    for prune in (None, 8.0, 1e6):
        with FlopCounter() as counter:
            xprop.run_scheme(TORCH, layers, 3, "closure", spec, "mean", options=xprop.PlanOptions(prune=prune))
        counts[prune] = counter.total
    assert counts[8.0] < 0.9 * counts[None]  # 5 of 32 units dropped from κ_2, κ_3 and their products
    assert counts[1e6] >= counts[None]  # a threshold no unit reaches drops nothing (and restricts nothing)
    # a live net: He-init without biases has no unit 8 σ below zero, so pruning keeps every one
    live = xprop.relu_layers([layer.clone() for layer in layers.weights])
    same = xprop.run_scheme(TORCH, live, 3, "closure", spec, "mean", options=xprop.PlanOptions(prune=8.0))
    torch.testing.assert_close(torch.stack(same.layer_means),
                               torch.stack(xprop.run_scheme(TORCH, live, 3, "closure", spec, "mean").layer_means),
                               rtol=0, atol=0)


def test_lossy_compression_moves_by_no_more_than_its_own_error() -> None:
    layers = dead_unit_layers(24, 6, output_map=False)
    spec = executor_spec(3, "core", max_width=64)
    means = {}
    lossy = xprop.Compression(1, 12, 1)
    for name, options in (("exact", EXACT), ("compressed", xprop.PlanOptions(compression=lossy)),
                          ("pruned", xprop.PlanOptions(compression=lossy, prune=8.0))):
        means[name] = torch.stack(xprop.run_scheme(TORCH, layers, 3, "closure", spec, "mean", options=options)
                                  .layer_means)
    own = (means["compressed"] - means["exact"]).abs().max()
    assert 0 < own  # rank 12 of 24 (19 live units) loses something
    assert (means["pruned"] - means["compressed"]).abs().max() <= 2 * own


def test_the_threshold_is_a_strict_cut_and_non_relu_nets_are_refused() -> None:
    pre_mean = torch.tensor([-7.9, -8.1, 0.0, -8.0], dtype=torch.float64)
    keep = kept_units(torch, pre_mean, torch.ones(4, dtype=torch.float64), 8.0)
    assert keep.tolist() == [True, False, True, True]  # kept at ≥ −t σ
    assert kept_units(torch, pre_mean, torch.ones(4, dtype=torch.float64), 9.0) is None  # nothing to drop
    assert kept_units(torch, pre_mean - 100, torch.ones(4, dtype=torch.float64), 8.0) is None  # all dead: kept whole
    layers = dead_unit_layers(16, 3, output_map=False)
    tanh = xprop.Layers(layers.weights, layers.biases, ["relu", "tanh", "relu"])
    with pytest.raises(ValueError, match="ReLU"):
        xprop.run_scheme(TORCH, tanh, 3, "closure", executor_spec(3, "core", max_width=64), "mean",
                         options=xprop.PlanOptions(prune=4.0))
