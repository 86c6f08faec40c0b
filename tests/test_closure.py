"""The fourth-cumulant closure (K = 3 "closure", docs/method.md §7.9): κ_4's core G = diag(g) + λ·Σ_off with
λ = shape·Σg/Σ diag Σ, carried as a ``ShapedCore`` and mapped by one product.

Oracle: the same model built as a full n×n matrix G and run through the matrix core's path (two products a layer,
``symmetric_product``; the last layer's diagonal by ``linear_variance``), by replacing ``core_next``."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import assert_numpy_matches_torch, odd_network

import mechest
from mechest.estimators.truth import score
from mechest.experiments.bench import find_truth
from mechest.kprop import executor as xprop
from mechest.kprop.backends import layers_of, torch_backend
from mechest.kprop.executor import propagation
from mechest.kprop.executor.fourth import SLICE_FEED_RANK
from mechest.kprop.spec import executor_spec

TRUTHS = Path(__file__).resolve().parents[1] / "benchmarks" / "data" / "truths"


@pytest.fixture(scope="module")
def spec() -> dict:
    return executor_spec(3, "closure", max_width=64)


def full_matrix_core_next(xp, spec, core, slices, wick, cumulants, mapped, gram, n):
    """The closure's G as an n×n matrix, from its definition: the projected diagonal g, off the diagonal
    shape·(Σ_i g_i / Σ_i Σ_ii)·Σ_ij."""
    g = torch.diagonal(xprop.core_projection(xp, spec, cumulants, None, n))
    variance = cumulants[(2,)]
    multiple = core.shape * g.sum() / variance.sum()
    covariance = torch.diag(variance) + cumulants[(1, 1)]
    return torch.diag(g) + multiple * (covariance - torch.diag(torch.diagonal(covariance)))


@pytest.mark.parametrize(("shape", "two"), [(0.0, False), (1.0, False), (2.5, False), (1.5, True)])
@pytest.mark.parametrize("outputs", ["mean", "cov", "marginals"])
@pytest.mark.parametrize("net", [mechest.random_mlp(12, 4, "relu", seed=5), odd_network(3)], ids=["square", "odd"])
def test_shaped_core_equals_the_full_matrix_model(spec: dict, monkeypatch: pytest.MonkeyPatch, net: mechest.MLP,
                                                  outputs: str, shape: float, two: bool) -> None:
    core = xprop.FourthCore(summed=False, two=two, shape=shape)
    got = xprop.planned(torch_backend(net.device), layers_of(net), spec, outputs=outputs, core=core)
    monkeypatch.setattr(propagation, "core_next", full_matrix_core_next)
    expected = xprop.planned(torch_backend(net.device), layers_of(net), spec, outputs=outputs, core=core)
    for a, b in zip(got.layer_means, expected.layer_means, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(got.mean, expected.mean, rtol=1e-10, atol=1e-12)
    if outputs != "mean":
        torch.testing.assert_close(got.cov, expected.cov, rtol=1e-10, atol=1e-12)
    if outputs == "marginals":
        torch.testing.assert_close(got.fourth_diagonal, expected.fourth_diagonal, rtol=1e-10, atol=1e-12)


def test_the_closure_changes_the_core_scheme_and_is_the_scheme(spec: dict) -> None:
    net = odd_network(4)
    layers = layers_of(net)
    closure = xprop.planned(torch_backend(net.device), layers, spec, outputs="mean",
                            core=xprop.FourthCore(summed=False, two=True, shape=xprop.CLOSURE_SHAPE, feed=True,
                                                  slice_feed=SLICE_FEED_RANK))
    core = xprop.planned(torch_backend(net.device), layers, spec, outputs="mean", core=xprop.FourthCore(summed=False))
    assert (closure.mean - core.mean).abs().max() > 1e-8
    scheme = mechest.estimate(net, scheme=mechest.Scheme(3, "closure", factored=True), count=False)
    torch.testing.assert_close(scheme.mean, closure.mean, rtol=0, atol=0)


def test_numpy_namespace_equals_torch(spec: dict) -> None:
    net = odd_network(6, ("relu",) * 3)  # the numpy backend has ReLU's Wick table only
    assert_numpy_matches_torch(layers_of(net), spec, core=xprop.fourth_core(3, "closure"))


def test_refuses_bad_shapes() -> None:
    for options in ({"shape": 1.0}, {"summed": False, "shape": -1.0}, {"summed": False, "shape": float("nan")}):
        with pytest.raises(ValueError, match="shape"):
            xprop.FourthCore(**options)


def test_the_closure_is_more_accurate_than_k3_simple_on_the_benchmark_nets() -> None:
    """mechest's 256×4 benchmark (random_mlp(256, 4, seed 0..2), committed 1e8-sample truths, noise floor ≈ 1e-8 of
    Var): the closure's MSE/Var is below K = 3 simple's on every net (measured 2.5e-7 against 5.2e-7 on average,
    docs/results.md), by more than the truths' noise floor."""
    for seed in range(3):
        net = mechest.random_mlp(256, 4, "relu", seed=seed)
        truth = find_truth(net, 10**8, [TRUTHS])
        errors = {variant: score(mechest.estimate(net, order=3, variant=variant, factored=True, count=False).mean,
                                 truth) for variant in ("simple", "closure")}
        floor = errors["simple"].noise_floor / errors["simple"].variance
        assert errors["closure"].relative < errors["simple"].relative - 2 * floor, (seed, errors)


def test_a_dead_layer_gives_the_dead_network_mean_not_nan() -> None:
    """Every hidden unit dead (biases −10⁴): every variance is exactly 0, so ρ would be 0/0; the closure's λ is 0
    there and the estimate is K = 3 simple's, exactly 0 (no output bias)."""
    net = mechest.random_mlp(8, 3, "relu", seed=0)
    dead = [torch.full((w.shape[0],), -1e4, dtype=torch.float64) for w in net.weights[:-1]]
    net = mechest.MLP(net.weights, [*dead, None], net.activations)
    closure = mechest.estimate(net, order=3, variant="closure", factored=True).mean
    torch.testing.assert_close(closure, mechest.estimate(net, order=3, factored=True).mean, rtol=0, atol=0)
    assert bool((closure == 0).all())
