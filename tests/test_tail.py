"""Tail probabilities: Heaviside Wick coefficients, the Edgeworth formula, exactness on a Gaussian layer, the
LPE network against the tail formula, Monte Carlo against closed forms and kprop, bad input."""

from __future__ import annotations

import json
import math

import pytest
import torch
from scipy.special import gammaincc
from scipy.stats import chi2

from mechest.cli import main
from mechest.errors import MechestError
from mechest.estimators.tail import (
    heaviside_net,
    hermite_tail,
    lpe,
    marginal_cumulants,
    monte_carlo,
    saddlepoint_tail,
    tail_probability,
    wilson_interval,
)
from mechest.kprop import Scheme
from mechest.math.wick import wick_table
from mechest.mlp import random_mlp


def gaussian_density_derivative(order: int, point: float, mean: float, sigma: float) -> float:
    """d^order/dz^order of the N(mean, sigma²) density at ``point``, by repeated autograd."""
    z = torch.tensor(point, dtype=torch.float64, requires_grad=True)
    value = torch.exp(-((z - mean) ** 2) / (2 * sigma**2)) / (sigma * math.sqrt(2 * math.pi))
    for _ in range(order):
        (value,) = torch.autograd.grad(value, z, create_graph=True)
    return float(value.detach())


@pytest.mark.parametrize(("mean", "variance"), [(0.3, 0.7), (-2.5, 1.9), (4.0, 0.5)])
def test_heaviside_wick_coefficients_are_density_derivatives(mean: float, variance: float) -> None:
    """w_H(k) = E[∂^k 1{Z > 0}] = E[δ^(k-1)(Z)] = (-1)^(k-1) f^(k-1)(0), and w_H(0) = P(Z > 0)."""
    table = wick_table("heaviside", torch.tensor([mean], dtype=torch.float64),
                       torch.tensor([variance], dtype=torch.float64), k_max=4, p_max=2)
    sigma = math.sqrt(variance)
    assert float(table[0, 1]) == pytest.approx(0.5 * math.erfc(-mean / (sigma * math.sqrt(2))), rel=1e-13)
    for k in range(1, 5):
        expected = (-1) ** (k - 1) * gaussian_density_derivative(k - 1, 0.0, mean, sigma)
        assert float(table[k, 1]) == pytest.approx(expected, rel=1e-10, abs=1e-300)
        assert float(table[k, 2]) == pytest.approx(expected, rel=1e-10, abs=1e-300)  # 1{z>0}^p = 1{z>0}


def test_edgeworth_tail_of_a_gamma_distribution_converges_at_its_rate() -> None:
    """Gamma(m, 1) (a sum of m exponentials) has κ = (m, m, 2m, 6m) and tail Q(m, t). At t = μ + 3σ the Edgeworth
    tail's error falls like m^(-3/2), the Gram–Charlier one's (no γ_1² term) like m^(-1), the Gaussian's like m^(-1/2).
    """
    def errors(m: int) -> tuple[float, float, float]:
        cumulants = torch.tensor([[m], [m], [2.0 * m], [6.0 * m]], dtype=torch.float64)
        t = m + 3 * math.sqrt(m)
        exact = gammaincc(m, t)
        gaussian = cumulants * torch.tensor([[1.0], [1.0], [0.0], [0.0]], dtype=torch.float64)
        return (abs(float(hermite_tail(cumulants, t)) / exact - 1),
                abs(float(hermite_tail(cumulants, t, skew_squared=False)) / exact - 1),
                abs(float(hermite_tail(gaussian, t)) / exact - 1))

    small, large = errors(1600), errors(6400)
    rates = [math.log(a / b) / math.log(4) for a, b in zip(small, large)]
    assert rates[0] == pytest.approx(1.5, abs=0.2)
    assert rates[1] == pytest.approx(1.0, abs=0.2)
    assert rates[2] == pytest.approx(0.5, abs=0.2)
    assert large[0] < 1e-4


def test_saddlepoint_tail_of_a_gamma_distribution_converges_at_its_rate() -> None:
    """Lugannani–Rice on Gamma(m, 1)'s CGF truncated after κ_4: the omitted κ_5 s⁵/5! at ŝ ~ 3/√m and the formula's
    own error are both O(m^(-3/2)), so the relative error at t = μ + 3σ falls like m^(-3/2)."""
    def error(m: int) -> float:
        cumulants = torch.tensor([[m], [m], [2.0 * m], [6.0 * m]], dtype=torch.float64)
        t = m + 3 * math.sqrt(m)
        value, valid = saddlepoint_tail(cumulants, t)
        assert bool(valid.all())
        return abs(float(value) / gammaincc(m, t) - 1)

    assert math.log(error(1600) / error(6400)) / math.log(4) == pytest.approx(1.5, abs=0.2)


def test_saddlepoint_is_exact_for_a_gaussian_and_falls_back_without_a_saddlepoint() -> None:
    gaussian = torch.tensor([[0.3, -1.0], [2.0, 0.5], [0.0, 0.0], [0.0, 0.0]], dtype=torch.float64)
    value, valid = saddlepoint_tail(gaussian, 4.0)
    exact = 0.5 * torch.erfc((4.0 - gaussian[0]) / (gaussian[1].sqrt() * math.sqrt(2)))
    torch.testing.assert_close(value, exact, rtol=1e-12, atol=0)
    assert bool(valid.all())
    # K'(s) = s - s³ never exceeds 2/√27 < 1: no saddlepoint for t = 1, so the Edgeworth value is returned.
    flat = torch.tensor([[0.0], [1.0], [0.0], [-6.0]], dtype=torch.float64)
    value, valid = saddlepoint_tail(flat, 1.0)
    assert not bool(valid.any())
    torch.testing.assert_close(value, hermite_tail(flat, 1.0), rtol=0, atol=0)


def test_lower_tail_is_the_upper_tail_of_the_negated_variable() -> None:
    cumulants = torch.tensor([[0.4], [1.3], [0.2], [0.1]], dtype=torch.float64)
    negated = cumulants * torch.tensor([[-1.0], [1.0], [-1.0], [1.0]], dtype=torch.float64)
    torch.testing.assert_close(hermite_tail(cumulants, -2.0, upper=False), hermite_tail(negated, 2.0),
                               rtol=1e-15, atol=0)
    torch.testing.assert_close(saddlepoint_tail(cumulants, -2.0, upper=False)[0], saddlepoint_tail(negated, 2.0)[0],
                               rtol=1e-13, atol=0)


@pytest.mark.parametrize("order", [1, 2, 3])
@pytest.mark.parametrize("upper", [True, False])
def test_first_layer_is_exact(order: int, upper: bool) -> None:
    """z = W_0 x + b_0 is exactly N(b_i, |W_i|²): every method returns the Gaussian tail to round-off."""
    net = random_mlp(10, 2, seed=3, bias_mean=0.2, bias_var=0.5)
    mean, sigma = net.biases[0], net.weights[0].norm(dim=1)
    t = 1.5 if upper else -1.5
    exact = 0.5 * torch.erfc((t - mean) / (sigma * math.sqrt(2)) * (1 if upper else -1))
    for method in ("lpe", "edgeworth", "saddlepoint"):
        result = tail_probability(net, 1, t, method, upper=upper, order=order)
        torch.testing.assert_close(result.prob, exact, rtol=1e-12, atol=0)


@pytest.mark.parametrize(("order", "variant"), [(1, "simple"), (2, "simple"), (2, "augment"), (3, "simple"),
                                                (3, "augment")])
def test_lpe_network_equals_the_gram_charlier_tail_of_the_marginal_cumulants(order: int, variant: str) -> None:
    """kprop's mean of the Heaviside unit is Φ̄(x) + κ_3/6 w_H(3) + κ_4/24 w_H(4) of the propagated marginals."""
    net = random_mlp(12, 2, seed=1, bias_mean=0.1, bias_var=0.2)
    cumulants = marginal_cumulants(net, 3, Scheme(order, variant))
    for upper, t in ((True, 1.2), (False, -0.8)):
        result = lpe(net, 3, t, upper, order=order, variant=variant)
        torch.testing.assert_close(result.raw, hermite_tail(cumulants, t, upper, skew_squared=False),
                                   rtol=1e-11, atol=1e-15)


def test_factored_lpe_equals_unfactored() -> None:
    net = random_mlp(12, 2, seed=2)
    dense, factored = (lpe(net, 3, 1.5, order=3, factored=flag) for flag in (False, True))
    torch.testing.assert_close(factored.raw, dense.raw, rtol=1e-10, atol=1e-14)
    assert factored.factored and factored.flops > 0


@pytest.mark.parametrize("layer", [1, 2, 4])
def test_factored_marginals_equal_unfactored_for_simple(layer: int) -> None:
    """μ, σ², κ_3 (read from the CP factors) and κ_4 (its trace piece) match the dense engine."""
    net = random_mlp(10, 3, seed=3, bias_mean=0.1, bias_var=0.05)
    dense, factored = (marginal_cumulants(net, layer, Scheme(3, "simple", flag)) for flag in (False, True))
    torch.testing.assert_close(factored, dense, rtol=1e-11, atol=1e-14)
    assert layer == 1 or factored[2].abs().max() > 1e-3  # a nonzero κ_3 after a ReLU layer


def test_factored_augment_marginals_follow_the_factored_term_set() -> None:
    """AUGMENT factored drops terms on purpose (docs/method.md §7.4): it equals the dense engine under that term set."""
    from mechest.estimators.tail import dense_marginals, truncate
    from mechest.kprop.plan import compile_plan

    net = random_mlp(10, 2, seed=5)
    factored = marginal_cumulants(net, 3, Scheme(3, "augment", True))
    expected = dense_marginals(truncate(net, 3), compile_plan(3, "augment", "factored"))
    torch.testing.assert_close(factored, expected, rtol=1e-11, atol=1e-14)


def test_factored_saddlepoint_equals_unfactored() -> None:
    net = random_mlp(12, 2, seed=2)
    dense, factored = (tail_probability(net, 3, 2.0, "saddlepoint", order=3, factored=flag) for flag in (False, True))
    torch.testing.assert_close(factored.raw, dense.raw, rtol=1e-10, atol=1e-14)
    assert factored.factored and not dense.factored


def test_heaviside_net_layout() -> None:
    net = random_mlp(6, 3, seed=0)
    augmented = heaviside_net(net, 2, 0.5, upper=False)
    assert augmented.activations == ["relu", "heaviside"]
    assert augmented.dims == [6, 6, 6, 1]
    torch.testing.assert_close(augmented.weights[1], -net.weights[1])
    torch.testing.assert_close(augmented.biases[1], torch.full((6,), 0.5, dtype=torch.float64))


def test_monte_carlo_covers_the_exact_gaussian_tail() -> None:
    """On the first layer the truth is known: every neuron's z-score is small and the intervals behave."""
    net = random_mlp(16, 1, seed=5, bias_mean=-0.5, bias_var=0.3)
    mean, sigma = net.biases[0], net.weights[0].norm(dim=1)
    exact = 0.5 * torch.erfc((1.0 - mean) / (sigma * math.sqrt(2)))
    samples = 200_000
    result = monte_carlo(net, 1, 1.0, samples=samples, seed=11)
    z = (result.prob - exact) / torch.sqrt(exact * (1 - exact) / samples)
    assert float((z**2).sum()) < chi2.ppf(0.999, df=16)
    assert result.flops == samples * (2 * 16 * 16 + 16 + 16)  # first linear map, its bias, one comparison each
    assert bool(((result.low <= result.prob) & (result.prob <= result.high)).all())


def test_lpe_agrees_with_monte_carlo_at_probability_one_percent() -> None:
    """One ReLU layer, width 64, probabilities 3e-3…3e-2: K = 3 augment vs 10⁵ samples, chi-square over neurons."""
    net = random_mlp(64, 1, seed=4)
    samples = 100_000
    kprop = lpe(net, 2, 1.8, order=3, variant="augment")
    mc = monte_carlo(net, 2, 1.8, samples=samples, seed=1)
    keep = (kprop.prob > 3e-3) & (kprop.prob < 3e-2)
    p = kprop.prob[keep]
    z = (mc.prob[keep] - p) / torch.sqrt(p * (1 - p) / samples)
    assert int(keep.sum()) >= 20
    assert float((z**2).sum()) < chi2.ppf(0.999, df=int(keep.sum()))


def test_wilson_interval_closed_form() -> None:
    low, high = wilson_interval(torch.tensor([0, 5, 100]), 100)
    z2 = 1.959963984540054**2
    assert (float(low[0]) == pytest.approx(0.0, abs=1e-15)
            and float(high[0]) == pytest.approx(z2 / (100 + z2), rel=1e-12))
    assert float(high[2]) == 1.0 and float(low[2]) == pytest.approx(100 / (100 + z2), rel=1e-12)
    assert float(low[1]) < 0.05 < float(high[1])


def test_clipping_is_reported() -> None:
    net = random_mlp(8, 2, seed=0)
    result = lpe(net, 3, 6.0, order=3)
    assert torch.equal(result.prob, result.raw.clamp(0, 1))
    assert result.clipped == int(((result.raw < 0) | (result.raw > 1)).sum())


@pytest.mark.parametrize("layer", [0, 4, -1])
def test_layer_out_of_range(layer: int) -> None:
    with pytest.raises(MechestError, match="layer must be between 1 and 3"):
        tail_probability(random_mlp(4, 2, seed=0), layer, 1.0)


def test_bad_options() -> None:
    net = random_mlp(4, 2, seed=0)
    with pytest.raises(MechestError, match="finite"):
        tail_probability(net, 1, float("inf"))
    with pytest.raises(MechestError, match="unknown method"):
        tail_probability(net, 1, 1.0, "saddle")
    with pytest.raises(MechestError, match="sample count"):
        tail_probability(net, 1, 1.0, "mc")
    with pytest.raises(MechestError, match="positive"):
        tail_probability(net, 1, 1.0, "mc", samples=-3)
    with pytest.raises(MechestError, match="factored form exists for K = 3"):
        tail_probability(net, 1, 1.0, "edgeworth", order=2, factored=True)
    with pytest.raises(MechestError, match="order"):
        tail_probability(net, 1, 1.0, order=7)


def test_cli_json(tmp_path, capsys) -> None:
    path = tmp_path / "net.npz"
    random_mlp(8, 2, seed=0).save(path)
    assert main(["tail", "--weights", str(path), "--layer", "3", "--threshold", "1.5", "--order", "3", "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert len(record["prob"]) == 8 and record["flops"] > 0 and record["method"] == "lpe"
    assert main(["tail", "--weights", str(path), "--layer", "3", "--threshold", "1.5", "--lower", "--method", "mc",
                 "--samples", "1000", "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["tail"] == "lower" and record["samples"] == 1000 and len(record["counts"]) == 8


def test_cli_bad_input_is_one_line(tmp_path, capsys) -> None:
    path = tmp_path / "net.npz"
    random_mlp(8, 2, seed=0).save(path)
    assert main(["tail", "--weights", str(path), "--layer", "9", "--threshold", "1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "layer must be between" in err
    assert main(["tail", "--weights", str(tmp_path / "missing.npz"), "--layer", "1", "--threshold", "1"]) == 2


def test_a_saddlepoint_marked_valid_is_a_probability() -> None:
    """Near the mean, or with a skew large against the variance, Lugannani–Rice's 1/u − 1/w cancels badly and
    leaves [0, 1] (found at up to 357 of 200,000 random cumulant rows per threshold): those rows fall back."""
    generator = torch.Generator().manual_seed(0)
    rows = 20_000
    cumulants = torch.stack([torch.randn(rows, generator=generator, dtype=torch.float64),
                             2 * torch.rand(rows, generator=generator, dtype=torch.float64),
                             0.5 * torch.randn(rows, generator=generator, dtype=torch.float64),
                             0.5 * torch.randn(rows, generator=generator, dtype=torch.float64)])
    for threshold in (0.5, 1.0, 2.0, 3.0):
        for upper in (True, False):
            prob, valid = saddlepoint_tail(cumulants, threshold, upper)
            assert bool(valid.any())
            assert bool(((prob[valid] >= 0) & (prob[valid] <= 1)).all())
