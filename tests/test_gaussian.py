"""Standard normal helpers: pdf/cdf, Hermite polynomials, Gauss–Hermite rules and Gaussian moments."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import integrate, special, stats

from mechest.math.gaussian import gauss_hermite, gaussian_moments, hermite_he, normal_cdf, normal_pdf


def test_pdf_and_cdf_match_scipy_including_the_far_lower_tail() -> None:
    """Relative accuracy down to Φ(-37) ≈ 6e-300. Rounding x² or x/√2 alone costs a relative ~x²·eps in
    ϕ(x) and Φ(x) (≈ 3e-13 at x = -37), hence rtol 1e-12 there and 1e-14 on |x| ≤ 6."""
    x = torch.linspace(-37.0, 9.0, 921, dtype=torch.float64)
    np.testing.assert_allclose(normal_pdf(x).numpy(), stats.norm.pdf(x.numpy()), rtol=1e-12, atol=0)
    np.testing.assert_allclose(normal_cdf(x).numpy(), stats.norm.cdf(x.numpy()), rtol=1e-12, atol=0)
    central = torch.linspace(-6.0, 6.0, 241, dtype=torch.float64)
    np.testing.assert_allclose(normal_pdf(central).numpy(), stats.norm.pdf(central.numpy()), rtol=1e-14, atol=0)
    np.testing.assert_allclose(normal_cdf(central).numpy(), stats.norm.cdf(central.numpy()), rtol=1e-14, atol=0)


def test_pdf_and_cdf_follow_the_dtype_and_differentiate_correctly() -> None:
    x = torch.linspace(-4.0, 4.0, 33, dtype=torch.float64, requires_grad=True)
    (cdf_slope,) = torch.autograd.grad(normal_cdf(x).sum(), x)
    (pdf_slope,) = torch.autograd.grad(normal_pdf(x).sum(), x)
    torch.testing.assert_close(cdf_slope, normal_pdf(x).detach(), rtol=1e-14, atol=1e-16)
    torch.testing.assert_close(pdf_slope, (-x * normal_pdf(x)).detach(), rtol=1e-14, atol=1e-16)
    single = torch.tensor([0.5], dtype=torch.float32)
    assert normal_pdf(single).dtype == normal_cdf(single).dtype == torch.float32


def test_hermite_polynomials_match_scipy() -> None:
    x = torch.linspace(-5.0, 5.0, 20, dtype=torch.float64).reshape(4, 5)
    table = hermite_he(12, x)
    assert table.shape == (13, 4, 5)
    expected = special.eval_hermitenorm(np.arange(13)[:, None, None], x.numpy()[None])
    np.testing.assert_allclose(table.numpy(), expected, rtol=1e-13, atol=1e-12)


def test_hermite_degree_zero_and_negative_degree() -> None:
    x = torch.tensor([0.3, -2.0], dtype=torch.float32)
    torch.testing.assert_close(hermite_he(0, x), torch.ones(1, 2))
    with pytest.raises(ValueError, match="k_max"):
        hermite_he(-1, x)


def test_gauss_hermite_matches_numpy_and_is_exact_for_polynomials() -> None:
    nodes, weights = gauss_hermite(100, torch.float64)
    expected_nodes, expected_weights = np.polynomial.hermite.hermgauss(100)
    np.testing.assert_array_equal(nodes.numpy(), expected_nodes)
    np.testing.assert_array_equal(weights.numpy(), expected_weights)
    # Orthogonality π^{-1/2} Σ_l ω_l He_j(√2 t_l) He_k(√2 t_l) = k! δ_jk holds exactly for j + k < 200.
    hermite = hermite_he(10, math.sqrt(2.0) * nodes)
    norms = torch.tensor([math.sqrt(math.factorial(k)) for k in range(11)], dtype=torch.float64)
    gram = (hermite * weights) @ hermite.T / math.sqrt(math.pi) / torch.outer(norms, norms)
    torch.testing.assert_close(gram, torch.eye(11, dtype=torch.float64), rtol=0, atol=1e-13)


def test_gauss_hermite_returns_fresh_tensors_in_the_requested_dtype() -> None:
    nodes, weights = gauss_hermite(7, torch.float32)
    assert nodes.dtype == weights.dtype == torch.float32
    nodes.zero_()  # must not corrupt the cached rule
    again, _ = gauss_hermite(7, torch.float64)
    np.testing.assert_array_equal(again.numpy(), np.polynomial.hermite.hermgauss(7)[0])


def test_gauss_hermite_rejects_rules_numpy_cannot_compute() -> None:
    with pytest.raises(ValueError, match="positive"):
        gauss_hermite(0, torch.float64)
    with pytest.raises(ValueError, match="not finite"):
        gauss_hermite(400, torch.float64)


def test_standard_normal_moments_are_double_factorials() -> None:
    moments = gaussian_moments(8, torch.tensor(0.0, dtype=torch.float64), torch.tensor(1.0, dtype=torch.float64))
    torch.testing.assert_close(moments, torch.tensor([1, 0, 1, 0, 3, 0, 15, 0, 105], dtype=torch.float64))


def test_moments_of_n_1_4() -> None:
    """E[Z² + Z⁴] for Z ~ N(1, 4) is 5 + 73 = 78."""
    moments = gaussian_moments(4, torch.tensor(1.0, dtype=torch.float64), torch.tensor(4.0, dtype=torch.float64))
    assert float(moments[2] + moments[4]) == 78.0


def test_zero_variance_gives_powers_of_the_mean() -> None:
    mean = torch.tensor([-1.5, 0.0, 2.0], dtype=torch.float64)
    moments = gaussian_moments(5, mean, torch.zeros(3, dtype=torch.float64))
    torch.testing.assert_close(moments, torch.stack([mean**i for i in range(6)]), rtol=1e-15, atol=0)


def test_moments_match_quadrature() -> None:
    mean, std = -0.7, 1.3
    moments = gaussian_moments(9, torch.tensor(mean, dtype=torch.float64), torch.tensor(std**2, dtype=torch.float64))
    for i in range(10):
        expected = integrate.quad(lambda x: (mean + std * x) ** i * stats.norm.pdf(x), -40, 40,
                                  epsabs=1e-13, epsrel=1e-13)[0]
        assert moments[i].item() == pytest.approx(expected, rel=1e-11, abs=1e-11)


@pytest.mark.parametrize("mean, var", [(0.0, 0.0), (0.8, 0.0), (0.0, 2.5), (-1.2, 0.36)])
def test_moment_gradients_follow_the_gaussian_identities(mean: float, var: float) -> None:
    """∂/∂μ E[Z^i] = i E[Z^{i-1}] and ∂/∂σ² E[Z^i] = C(i, 2) E[Z^{i-2}] (heat equation), also at μ = 0, σ² = 0."""
    mean_t = torch.tensor(mean, dtype=torch.float64, requires_grad=True)
    var_t = torch.tensor(var, dtype=torch.float64, requires_grad=True)
    moments = gaussian_moments(7, mean_t, var_t)
    values = moments.detach()
    for i in range(1, 8):
        d_mean, d_var = torch.autograd.grad(moments[i], (mean_t, var_t), retain_graph=True)
        assert d_mean.item() == pytest.approx(i * values[i - 1].item(), rel=1e-13, abs=1e-13)
        expected_d_var = math.comb(i, 2) * values[i - 2].item() if i >= 2 else 0.0
        assert d_var.item() == pytest.approx(expected_d_var, rel=1e-13, abs=1e-13)


def test_moments_broadcast_and_reject_negative_order() -> None:
    moments = gaussian_moments(3, torch.zeros(2, 3, dtype=torch.float64), torch.tensor(1.0, dtype=torch.float64))
    assert moments.shape == (4, 2, 3)
    with pytest.raises(ValueError, match="i_max"):
        gaussian_moments(-1, torch.zeros(1), torch.ones(1))
