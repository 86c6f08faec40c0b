"""The array-namespace propagation (mechest.whest.propagate) equals mechest's torch propagation, in plain numpy."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

import mechest
from mechest.kprop import executor as xprop
from mechest.whest.mapping import mechest_net
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
    equals mechest.wick's closed forms entry by entry, over signs of μ, tiny and large σ, and the variance floor."""
    mean = np.array([-3.0, -0.7, 0.0, 0.2, 1.5, 4.0, 0.3, -0.1])
    var = np.array([0.5, 2.0, 1.0, 0.05, 3.0, 1.0, 1e-12, 1e-10])
    got = xprop.relu_wick(NUMPY, mean, var, k_max, p_max)
    with pytest.warns(RuntimeWarning):  # mechest warns about the floored variance
        expected = mechest.wick.wick_table("relu", torch.as_tensor(mean), torch.as_tensor(var), k_max, p_max)
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
    got = torch.stack(xprop.planned(backend, xprop.relu_layers(columns), executor_spec(order, variant, max_width=64)).layer_means).numpy()
    np.testing.assert_allclose(got, mechest_layer_means(weights, order, variant), rtol=0, atol=TOLERANCE)


def test_cli_does_not_need_the_whestbench_extra() -> None:
    """mechest's CLI and the executor import neither whestbench nor flopscope (an optional extra)."""
    code = ("import sys, mechest.cli, mechest.kprop.executor, mechest.whest.export; "
            "assert 'whestbench' not in sys.modules and 'flopscope' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)
