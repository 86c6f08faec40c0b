"""Property tests over random network shapes: every public entry point, on small seeded networks with
non-square widths, input and output dimensions of their own, biases on some layers and mixed activations,
gives finite output of the right shape, or a MechestError exactly where the option is not implemented; and
kprop agrees with Monte Carlo where it is exact."""

from __future__ import annotations

import itertools
import math
import warnings

import numpy as np
import pytest
import torch
from scipy.stats import chi2

from mechest.errors import MechestError
from mechest.estimators.budget import predicted_flops
from mechest.estimators.estimate import estimate
from mechest.estimators.tail import METHODS as TAIL_METHODS
from mechest.estimators.tail import tail_probability
from mechest.estimators.truth import compute_truth, load_truth, score
from mechest.experiments import bench
from mechest.experiments.training import DistillConfig, distill
from mechest.kprop import ALL_VARIANTS, MAX_ORDER, SCHEMES, Scheme, propagate
from mechest.math.wick import ACTIVATION_NAMES
from mechest.mlp import MLP, random_mlp


def random_network(seed: int, max_width: int = 7) -> MLP:
    """1–3 hidden layers of widths 2..max_width, input 1..6, output 1..4, a bias on each layer with probability
    1/2, an activation per hidden layer drawn from all of mechest's, weights N(0, 1/fan_in)."""
    rng = np.random.default_rng(seed)
    depth = int(rng.integers(1, 4))
    dims = [int(rng.integers(1, 7))] + [int(rng.integers(2, max_width + 1)) for _ in range(depth)]
    dims.append(int(rng.integers(1, 5)))
    weights = [torch.from_numpy(rng.normal(size=(fan_out, fan_in)) / math.sqrt(fan_in))
               for fan_in, fan_out in itertools.pairwise(dims)]
    biases = [torch.from_numpy(rng.normal(0.0, 0.5, size=fan_out)) if rng.random() < 0.5 else None
              for fan_out in dims[1:]]
    return MLP(weights, biases, [str(name) for name in rng.choice(ACTIVATION_NAMES, depth)])


def implemented(order: int, variant: str, factored: bool) -> bool | None:
    """Whether kprop runs (order, variant, factored): True, False (a MechestError), or None where either is
    right (factoring at K ≤ 2 changes nothing, and may be refused instead)."""
    if variant == "isotropic" and order != 1:
        return False
    if variant in ("core", "closure"):
        return order == 3 and factored
    if factored and order == 4 and variant != "simple":
        return False
    if factored and order <= 2:
        return None
    return True


def assert_finite(values: torch.Tensor, shape: tuple[int, ...]) -> None:
    assert values.shape == shape and bool(torch.isfinite(values).all()), values


COMBINATIONS = list(itertools.product(range(1, MAX_ORDER + 1), ALL_VARIANTS, (False, True)))


def only_variance_snapping(caught: list[warnings.WarningMessage]) -> bool:
    """At these tiny widths a propagated variance can come out negative (kprop's error is not small there);
    the engine then floors it and warns. That is the only warning expected."""
    return all(issubclass(w.category, RuntimeWarning) and "Snapping negative variance" in str(w.message)
               for w in caught)


SCHEME_IDS = [f"K{order}-{variant}{'-factored' if factored else ''}" for order, variant, factored in COMBINATIONS]


@pytest.mark.parametrize(("index", "scheme"), list(enumerate(COMBINATIONS)), ids=SCHEME_IDS)
def test_estimate_on_random_shapes(index: int, scheme: tuple[int, str, bool]) -> None:
    """One random network per scheme (a different one for each)."""
    net = random_network(index)
    expected = implemented(*scheme)
    order, variant, factored = scheme
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = estimate(net, "kprop", order=order, variant=variant, factored=factored, cov=True)
    except MechestError:
        assert expected in (False, None), (net.dims, net.activations)
        return
    assert expected in (True, None) and only_variance_snapping(caught)
    assert_finite(result.mean, (net.output_dim,))
    assert_finite(result.cov, (net.output_dim, net.output_dim))


def tail_implemented(method: str, order: int, variant: str, factored: bool) -> bool | None:
    """lpe runs what kprop runs; the marginal methods' factored form exists at K = 3 only."""
    if method in ("edgeworth", "saddlepoint") and factored:
        return order == 3
    return implemented(order, variant, factored)


@pytest.mark.parametrize("method", TAIL_METHODS)
def test_tail_on_random_shapes(method: str) -> None:
    rng = np.random.default_rng(len(method))
    for seed in range(6):
        net = random_network(seed + 20)
        layer = int(rng.integers(1, net.depth + 2))
        threshold = float(rng.choice([0.0, 0.7, -1.3, 40.0, -1e6]))
        upper = bool(rng.random() < 0.5)
        order, variant = int(rng.integers(1, MAX_ORDER + 1)), str(rng.choice(["simple", "augment"]))
        factored = bool(rng.random() < 0.5)
        if method == "mc":
            result = tail_probability(net, layer, threshold, "mc", upper=upper, samples=500, seed=seed)
        else:
            expected = tail_implemented(method, order, variant, factored)
            try:
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    result = tail_probability(net, layer, threshold, method, upper=upper, order=order,
                                              variant=variant, factored=factored)
            except MechestError:
                assert expected in (False, None), (net.dims, method, order, variant, factored)
                continue
            assert expected in (True, None) and only_variance_snapping(caught)
        assert_finite(result.raw, (net.dims[layer],))
        assert bool(((result.prob >= 0) & (result.prob <= 1)).all())


def test_truth_score_and_monte_carlo_on_random_shapes(tmp_path) -> None:
    for seed in range(4):
        net = random_network(seed + 40)
        path = tmp_path / f"truth{seed}.npz"
        truth = compute_truth(net, 1000, path, seed=seed, chunk_size=300)
        assert truth.mean.shape == truth.variance.shape == (net.output_dim,)
        assert np.isfinite(truth.mean).all() and np.isfinite(truth.variance).all()
        assert load_truth(path).fingerprint == net.fingerprint()
        mc = estimate(net, "mc", samples=200, seed=seed + 1)
        assert_finite(mc.mean, (net.output_dim,))
        measured = score(estimate(net, "kprop", order=2).mean, truth)
        assert all(math.isfinite(value) for value in (measured.mse, measured.variance, measured.noise_floor))


def test_distill_on_random_shapes() -> None:
    for seed in range(2):
        teacher = random_network(seed + 60)
        config = DistillConfig(width=3, steps=2, order=2 + seed, log_every=1, test_samples=64, batch_size=8,
                               seed=seed)
        student, runs = distill(teacher, config)
        assert student.input_dim == teacher.input_dim and student.output_dim == teacher.output_dim
        assert all(math.isfinite(loss) for run in runs for loss in run.true_loss)


def test_bench_planning_on_random_settings() -> None:
    """Every (width, depth) gets a list of supported schemes under the FLOP cap; the others are skipped with a
    reason."""
    rng = np.random.default_rng(3)
    for max_flops in (2e3, 1e5):
        settings = bench.BenchSettings(
            widths=tuple(int(w) for w in rng.choice(np.arange(2, 12), size=2, replace=False)),
            depth=int(rng.integers(1, 4)), depths=(1,), depth_width=int(rng.integers(2, 9)), orders=(1, 2, 3),
            variants=(str(rng.choice(["simple", "augment"])),), max_flops=max_flops,
        ).check()
        plan = bench.plan_configs(settings)
        assert set(plan.runnable) == set(settings.networks())
        for (width, depth), configs in plan.runnable.items():
            assert set(configs) <= set(SCHEMES)
            net = random_mlp(width, depth, settings.activation, seed=0)
            assert all(predicted_flops(net, config) <= settings.max_flops for config in configs)
            assert len(configs) + sum(f"at width {width}, depth {depth}:" in line for line in plan.skipped) == len(
                bench.all_configs(settings.orders, settings.variants))
    with pytest.raises(MechestError):
        bench.BenchSettings(widths=(0, 4)).check()


def exact_nets() -> list[tuple[MLP, int]]:
    """Odd-shaped networks with one nonlinear layer, all of whose inputs are Gaussian, and the lowest order at
    which kprop's mean is exact: 5 → 9 → 7 → 3 with GELU then identity (its pre-activation is exactly Gaussian
    at every order, K = 1 included), and 4 → 11 → 6 → 2 with identity then tanh (K = 1 keeps only the trace of
    the identity layer's covariance, so exact from K = 2)."""
    rng = np.random.default_rng(1)

    def net(dims: list[int], activations: list[str]) -> MLP:
        weights = [torch.from_numpy(rng.normal(size=(fan_out, fan_in)) / math.sqrt(fan_in))
                   for fan_in, fan_out in itertools.pairwise(dims)]
        biases = [torch.from_numpy(rng.normal(0.0, 0.5, size=fan_out)) for fan_out in dims[1:]]
        return MLP(weights, biases, activations)

    return [(net([5, 9, 7, 3], ["gelu", "identity"]), 1), (net([4, 11, 6, 2], ["identity", "tanh"]), 2)]


@pytest.mark.parametrize("case", [0, 1])
def test_kprop_agrees_with_monte_carlo_where_it_is_exact(case: int) -> None:
    """Every implemented (order ≥ the exact one, variant, factored; factored augment, the slowest, on the first
    net only) gives the same mean to round-off, and that mean is within Monte Carlo's noise: Σ_i z_i² below the
    chi-square 0.999 quantile (fixed seed)."""
    net, lowest = exact_nets()[case]
    means = [propagate(net, Scheme(order, variant, factored)).mean
             for order, variant, factored in itertools.product(range(lowest, MAX_ORDER + 1), ("simple", "augment"),
                                                                (False, True))
             if implemented(order, variant, factored) and not (case and factored and variant == "augment")]
    for mean in means[1:]:
        torch.testing.assert_close(mean, means[0], rtol=1e-9, atol=1e-12)
    mc = estimate(net, "mc", samples=200_000, seed=11)
    z = (means[0] - mc.mean) / mc.stderr
    assert float((z**2).sum()) < chi2.ppf(0.999, df=net.output_dim)
