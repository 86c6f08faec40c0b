"""The array-namespace propagation (mechest.integrations.whestbench.propagate) equals mechest's torch propagation,
in plain numpy."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
import torch

import mechest
from mechest.integrations.whestbench.mapping import mechest_net
from mechest.kprop import executor as xprop
from mechest.kprop.spec import PLANS, executor_spec

scipy_special = pytest.importorskip("scipy.special")

NUMPY = xprop.Backend(np, scipy_special.ndtr)
TOLERANCE = 1e-10


def whest_weights(width: int, depth: int, seed: int) -> list[np.ndarray]:
    """He-init square weights in WhestBench's row convention, W ~ N(0, 2/width)."""
    rng = np.random.default_rng(seed)
    return [rng.normal(0.0, np.sqrt(2.0 / width), size=(width, width)) for _ in range(depth)]


METHODS = [(1, "simple"), (2, "simple"), (2, "augment"), (3, "simple")]
SPECS = {xprop.plan_key(order, variant): executor_spec(order, variant, max_width=64) for order, variant in PLANS}


def mechest_layer_means(weights: list[np.ndarray], order: int, variant: str = "simple") -> np.ndarray:
    prop = mechest.kprop.propagate(mechest_net(weights), mechest.kprop.Scheme(order, variant, order == 3))
    return torch.stack(prop.layer_means).numpy()


def xp_layer_means(weights: list[np.ndarray], order: int, variant: str = "simple") -> np.ndarray:
    return np.stack(xprop.choice_means(NUMPY, [w.T for w in weights], order, variant, SPECS))


def test_mapping_reproduces_whestbench_forward_pass() -> None:
    weights = whest_weights(8, 3, seed=0)
    x = np.random.default_rng(1).normal(size=(5, 8))
    hidden = mechest_net(weights).forward_layers(torch.as_tensor(x))
    h = x
    for layer, weight in enumerate(weights):
        h = np.maximum(h @ weight, 0.0)
        np.testing.assert_allclose(hidden[layer].numpy(), h, rtol=0, atol=1e-12)
    np.testing.assert_allclose(hidden[-1].numpy(), h, rtol=0, atol=1e-12)  # identity output map


@pytest.mark.parametrize(("order", "variant"), METHODS)
@pytest.mark.parametrize(("width", "depth", "seed"), [(6, 1, 0), (12, 3, 1), (24, 4, 2)])
def test_xp_matches_torch_propagation(order: int, variant: str, width: int, depth: int, seed: int) -> None:
    weights = whest_weights(width, depth, seed)
    expected = mechest_layer_means(weights, order, variant)
    got = xp_layer_means(weights, order, variant)
    assert got.shape == (depth, width)
    np.testing.assert_allclose(got, expected, rtol=0, atol=TOLERANCE)


@pytest.mark.parametrize(("k_max", "p_max"), [(0, 2), (4, 4), (6, 5)])
def test_polynomial_wick_table_equals_mechest_closed_forms(k_max: int, p_max: int) -> None:
    """relu_wick's one-einsum table (coefficients generated from the Hermite and truncated-moment recursions)
    equals mechest.math.wick's closed forms entry by entry, over signs of μ, tiny and large σ, and the variance
    floor."""
    mean = np.array([-3.0, -0.7, 0.0, 0.2, 1.5, 4.0, 0.3, -0.1])
    var = np.array([0.5, 2.0, 1.0, 0.05, 3.0, 1.0, 1e-12, 1e-10])
    got = xprop.relu_wick(NUMPY, mean, var, k_max, p_max)
    with pytest.warns(RuntimeWarning):  # mechest warns about the floored variance
        expected = mechest.math.wick.wick_table("relu", torch.as_tensor(mean), torch.as_tensor(var), k_max, p_max)
    np.testing.assert_allclose(got, expected.numpy(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(("order", "variant"), [(3, "simple"), (2, "augment")])
def test_higher_plans_differ_from_covariance_propagation(order: int, variant: str) -> None:
    """Guard against a plan that silently reduces to K = 2 simple: κ_3 (factored, or as a radial piece) must change
    the means."""
    weights = whest_weights(24, 4, seed=3)
    assert np.abs(xp_layer_means(weights, order, variant) - xp_layer_means(weights, 2)).max() > 1e-6


def test_unsupported_plans_are_refused() -> None:
    with pytest.raises(NotImplementedError):
        executor_spec(3, "augment")
    spec = executor_spec(2, "augment", max_width=8)
    spec["radial"]["3"] = 0
    with pytest.raises(ValueError, match="unsupported plan"):
        xprop.planned(NUMPY, xprop.relu_layers([np.eye(4)] * 2), spec)


@pytest.mark.parametrize(("order", "variant"), [(3, "simple"), (2, "augment")])
def test_same_code_runs_on_torch(order: int, variant: str) -> None:
    """The executor uses only operations torch shares with numpy and flopscope.numpy."""
    weights = whest_weights(12, 3, seed=4)
    backend = xprop.Backend(torch, lambda x: 0.5 * torch.special.erfc(-x / 2**0.5))
    columns = [torch.as_tensor(w.T.copy()) for w in weights]
    got = torch.stack(xprop.planned(backend, xprop.relu_layers(columns),
                                    executor_spec(order, variant, max_width=64)).layer_means).numpy()
    np.testing.assert_allclose(got, mechest_layer_means(weights, order, variant), rtol=0, atol=TOLERANCE)


def test_cli_does_not_need_the_whestbench_extra() -> None:
    """mechest's CLI and the executor import neither whestbench nor flopscope (an optional extra)."""
    code = ("import sys, mechest.cli, mechest.kprop.executor, mechest.integrations.whestbench.export; "
            "assert 'whestbench' not in sys.modules and 'flopscope' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def biased_layers(widths: list[int], seed: int, output: int | None) -> xprop.Layers:
    """Column-convention ReLU layers of the given widths (input first) with biases, and an output map of
    ``output`` rows when not None."""
    rng = np.random.default_rng(seed)
    shapes = list(zip(widths[1:], widths[:-1])) + ([(output, widths[-1])] if output else [])
    weights = [rng.normal(0.0, np.sqrt(2.0 / n_in), size=(n_out, n_in)) for n_out, n_in in shapes]
    biases = [rng.normal(0.0, 0.1, size=n_out) for n_out, _ in shapes]
    return xprop.Layers(weights, biases, ["relu"] * (len(widths) - 1))


@pytest.mark.parametrize("age", [1, 2, 3])
@pytest.mark.parametrize(("widths", "output", "outputs"), [([5, 9, 7, 8, 6, 9], None, "cov"),
                                                           ([6, 10, 8, 9, 7], 4, "marginals")])
def test_compression_at_full_rank_is_exact(age: int, widths: list[int], output: int | None, outputs: str) -> None:
    """At rank ≥ the width every basis is square orthogonal (B Bᵀ = I): the compressed executor equals the exact
    one to round-off, on every layer and every returned cumulant, with unequal widths and an output map."""
    layers = biased_layers(widths, seed=age, output=output)
    spec = SPECS[xprop.plan_key(3, "simple")]
    exact = xprop.planned(NUMPY, layers, spec, outputs=outputs)
    lossless = xprop.PlanOptions(compression=xprop.Compression(age, max(widths)))
    got = xprop.planned(NUMPY, layers, spec, outputs=outputs, options=lossless)
    for a, b in zip(exact.layer_means + exact.layer_covs[:-1], got.layer_means + got.layer_covs[:-1], strict=True):
        np.testing.assert_allclose(b, a, rtol=0, atol=TOLERANCE)
    if output:
        for name in ("mean", "cov", "third_diagonal", "fourth_diagonal"):
            # the output's κ_4 diagonal reaches ~1e4 here: round-off is relative
            np.testing.assert_allclose(getattr(got, name), getattr(exact, name), rtol=1e-12, atol=TOLERANCE)


def test_compression_changes_the_result_below_full_rank() -> None:
    """A rank below the width approximates (so the exactness test above can fail), and the error is largest at
    the smallest rank and age."""
    weights = whest_weights(16, 5, seed=3)
    layers = xprop.relu_layers([w.T for w in weights])
    spec = SPECS[xprop.plan_key(3, "simple")]
    exact = np.stack(xprop.planned(NUMPY, layers, spec).layer_means)
    errors = {(age, rank): np.abs(np.stack(xprop.planned(NUMPY, layers, spec, options=xprop.PlanOptions(
        compression=xprop.Compression(age, rank))).layer_means) - exact).max() for age, rank in ((1, 2), (3, 12))}
    assert errors[(1, 2)] > 1e-6 and errors[(1, 2)] > errors[(3, 12)]


@pytest.mark.parametrize("power", [0, 1])
def test_range_finder_is_exact_on_low_rank_factors(power: int) -> None:
    """If the three factors of a source span an r-dimensional row space, the rank-r basis captures it:
    B Bᵀ X = X, so B (Bᵀ X) reproduces the factors."""
    rng = np.random.default_rng(power)
    span = rng.normal(size=(11, 3))
    factors = np.stack([span @ rng.normal(size=(3, 7)) for _ in range(3)], axis=1)  # (n, 3, m): leg index first
    basis, coefficients = xprop.compressed_source(np, factors, 3, power)
    np.testing.assert_allclose(basis.T @ basis, np.eye(3), rtol=0, atol=1e-12)
    np.testing.assert_allclose(np.einsum("nr,jrk->njk", basis, coefficients), factors, rtol=0, atol=1e-12)


def test_compression_rejects_bad_parameters() -> None:
    for age, rank, power in ((0, 4, 0), (2, 0, 0), (2, 4, -1)):
        with pytest.raises(ValueError):
            xprop.Compression(age, rank, power)


def test_plan_options_reject_bad_values() -> None:
    """The cost options refuse negative Strassen levels and a pruning threshold ≤ 0 (or NaN); the defaults are the
    exact propagation."""
    assert xprop.PlanOptions() == xprop.PlanOptions(None, 0, None, None)
    for bad in ({"strassen": -1}, {"prune": 0.0}, {"prune": -4.0}, {"prune": float("nan")}):
        with pytest.raises(ValueError):
            xprop.PlanOptions(**bad)


@pytest.mark.parametrize("levels", [1, 2, 3])
def test_strassen_product_equals_the_dense_product(levels: int) -> None:
    """Strassen's recursion is exact in exact arithmetic: equal to a @ b to float64 round-off, rectangular, with b
    read as given or transposed in place; a dimension not divisible by 2^levels falls back to the dense product."""
    rng = np.random.default_rng(levels)
    a, b = rng.normal(size=(16, 24)), rng.normal(size=(24, 40))
    np.testing.assert_allclose(xprop.product(np, a, b, levels), a @ b, rtol=0, atol=1e-12)
    np.testing.assert_allclose(xprop.product(np, a, b.T.copy(), levels, transposed=True), a @ b, rtol=0, atol=1e-12)
    odd = rng.normal(size=(24, 7))
    np.testing.assert_array_equal(xprop.product(np, a, odd, levels), a @ odd)
    np.testing.assert_array_equal(xprop.product(np, a, odd.T.copy(), levels, transposed=True), a @ odd)


@pytest.mark.parametrize("levels", [1, 2, 3])
def test_strassen_products_of_parts_equal_the_dense_ones(levels: int) -> None:
    """Several products as one: ``split_product`` (A·diag(s_p)·X_p, parts of odd widths that are multiples of
    2^levels, one a stack of three, with and without row scales) and ``summed_product`` (Σ_p A_p B_pᵀ, a stacked
    pair among them) equal their dense definitions to float64 round-off on a rectangular A."""
    rng = np.random.default_rng(10 + levels)
    size = 2**levels
    a = rng.normal(size=(3 * size, 5 * size))
    parts = [rng.normal(size=(5 * size, size)), rng.normal(size=(3, 5 * size, 7 * size)),
             rng.normal(size=(5 * size, 3 * size))]
    scale = rng.normal(size=5 * size)
    got = xprop.strassen.split_product(np, a, parts, levels, [None, scale, scale])
    expected = [a @ parts[0], np.einsum("ij,sjk->sik", a * scale, parts[1]), (a * scale) @ parts[2]]
    for value, exact in zip(got, expected, strict=True):
        assert value.shape == exact.shape
        np.testing.assert_allclose(value, exact, rtol=0, atol=1e-12)
    pairs = [(rng.normal(size=(3 * size, size)), rng.normal(size=(9 * size, size))),
             (rng.normal(size=(2, 3 * size, 3 * size)), rng.normal(size=(2, 9 * size, 3 * size)))]
    summed = xprop.strassen.summed_product(np, pairs, levels)
    exact = pairs[0][0] @ pairs[0][1].T + np.einsum("sik,sjk->ij", *pairs[1])
    np.testing.assert_allclose(summed, exact, rtol=0, atol=1e-12)


@pytest.mark.parametrize("levels", [1, 3])
def test_strassen_product_on_torch(levels: int) -> None:
    """On torch (whose einsum and ufuncs take no out=, so no scratch arrays) the product is the dense one: equal to
    a @ b, b read as given or transposed, and gradients flow through it."""
    generator = torch.Generator().manual_seed(levels)
    a = torch.randn(16, 24, dtype=torch.float64, generator=generator, requires_grad=True)
    b = torch.randn(24, 32, dtype=torch.float64, generator=generator)
    assert not xprop.strassen.takes_out(torch) and xprop.strassen.takes_out(np)
    torch.testing.assert_close(xprop.product(torch, a, b, levels), a @ b, rtol=0, atol=1e-12)
    torch.testing.assert_close(xprop.product(torch, a, b.T.contiguous(), levels, transposed=True), a @ b, rtol=0,
                               atol=1e-12)
    (gradient,) = torch.autograd.grad(xprop.product(torch, a, b, levels).sum(), a)
    torch.testing.assert_close(gradient, b.sum(1).expand(16, 24), rtol=0, atol=1e-12)


def test_strassen_scratch_arrays_live_for_one_propagation() -> None:
    """The scratch arrays a Strassen product reuses (numpy: its einsum takes out=) are made during a propagation
    and dropped when it ends, also when it fails."""
    weights = whest_weights(16, 4, seed=1)
    layers = xprop.relu_layers([w.T for w in weights])
    spec = SPECS[xprop.plan_key(3, "simple")]
    xprop.product(np, np.ones((8, 8)), np.ones((8, 8)), 1)
    assert xprop.arrays._WORKSPACES  # made by the product
    xprop.planned(NUMPY, layers, spec, options=xprop.PlanOptions(strassen=1))
    assert not xprop.arrays._WORKSPACES
    broken = xprop.relu_layers([w.T for w in weights[:2]] + [np.ones((3, 5))])  # a weight of the wrong shape
    with pytest.raises(ValueError):
        xprop.planned(NUMPY, broken, spec, options=xprop.PlanOptions(strassen=1))
    assert not xprop.arrays._WORKSPACES


@pytest.mark.parametrize("levels", [1, 2])
@pytest.mark.parametrize("outputs", ["cov", "marginals"])
def test_strassen_on_unequal_widths_with_a_guard(levels: int, outputs: str) -> None:
    """Strassen's products on a net of unequal widths (some not divisible by 2^levels, so those products stay
    dense) with biases and an output map of 6 rows, under a ``strassen_allowed`` that refuses every other layer:
    every returned cumulant equals the dense executor's to round-off, and the hook is asked once per hidden
    layer with (layers done, total)."""
    layers = biased_layers([8, 12, 10, 16, 12], seed=levels, output=6)
    spec = SPECS[xprop.plan_key(3, "simple")]
    dense = xprop.planned(NUMPY, layers, spec, outputs=outputs)
    asked = []

    def every_other(done: int, total: int) -> bool:
        asked.append((done, total))
        return done % 2 == 0

    guarded = replace(NUMPY, strassen_allowed=every_other)
    got = xprop.planned(guarded, layers, spec, outputs=outputs, options=xprop.PlanOptions(strassen=levels))
    assert asked == [(done, 4) for done in range(4)]
    for a, b in zip(dense.layer_means + dense.layer_covs[:-1], got.layer_means + got.layer_covs[:-1], strict=True):
        np.testing.assert_allclose(b, a, rtol=0, atol=TOLERANCE)
    names = ("mean", "cov") + (("third_diagonal", "fourth_diagonal") if outputs == "marginals" else ())
    for name in names:
        np.testing.assert_allclose(getattr(got, name), getattr(dense, name), rtol=1e-12, atol=TOLERANCE)


@pytest.mark.parametrize("compression", [None, xprop.Compression(2, 4, 1)])
def test_strassen_propagation_equals_the_dense_one(compression: xprop.Compression | None) -> None:
    """K = 3 with every n³ product by Strassen equals the dense executor to round-off, exact or compressed,
    including the last layer's mean."""
    weights = whest_weights(16, 6, seed=4)
    layers = xprop.relu_layers([w.T for w in weights])
    spec = SPECS[xprop.plan_key(3, "simple")]
    dense = np.stack(xprop.planned(NUMPY, layers, spec, options=xprop.PlanOptions(compression=compression)).layer_means)
    for levels in (1, 2):
        options = xprop.PlanOptions(compression=compression, strassen=levels)
        fast = np.stack(xprop.planned(NUMPY, layers, spec, options=options).layer_means)
        np.testing.assert_allclose(fast, dense, rtol=0, atol=TOLERANCE)
