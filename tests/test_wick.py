"""Wick coefficients w(k, p) = E[∂^k φ(Z)^p], Z ~ N(μ, σ²), against references that do not use mechest.math.wick.

References:
- adaptive quadrature of φ^p against the k-th derivative of the Gaussian density (any activation);
- torch.autograd on the density itself (ReLU k ≥ 2) and on a high-node Gauss–Hermite rule for
  E[φ(Z + h)^p] differentiated k times in h (smooth activations);
- adaptive quadrature of the classical derivative (p)_k ReLU^{p-k} (ReLU, k < p);
- known values and Gaussian identities.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable

import numpy as np
import pytest
import torch
from scipy import integrate, special, stats

from mechest.math.wick import ACTIVATION_NAMES, activation_function, second_moment, wick_table

MEANS = (-2.0, -0.7, 0.0, 0.4, 1.5)
STDS = (0.05, 0.3, 1.0, 2.2)
GRID = [(mean, std) for mean in MEANS for std in STDS]
K_MAX, P_MAX = 6, 5
CLOSED_FORMS = ("relu", "heaviside", "sgn", "abs", "identity", "square", "cube")
SMOOTH = ("gelu", "tanh", "sigmoid")
QUADRATURE_HALF_WIDTH = 14.0  # |u| ≤ 14 in standard units: the Gaussian mass left out is below ϕ(14) ≈ 5e-44

# φ in plain Python, written independently of mechest.math.wick (gelu is the exact erf form z·Φ(z)).
REFERENCE_ACTIVATIONS: dict[str, Callable[[float], float]] = {
    "relu": lambda z: max(z, 0.0),
    "heaviside": lambda z: float(z > 0),
    "sgn": lambda z: float(z > 0) - float(z < 0),
    "abs": abs,
    "identity": lambda z: z,
    "square": lambda z: z * z,
    "cube": lambda z: z**3,
    "tanh": math.tanh,
    "sigmoid": lambda z: 1 / (1 + math.exp(-z)),
    "gelu": lambda z: z * math.erfc(-z / math.sqrt(2)) / 2,
}
# The same φ in torch, for the autograd references.
TORCH_REFERENCE_ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "tanh": torch.tanh,
    "sigmoid": lambda z: 1 / (1 + torch.exp(-z)),
    "gelu": lambda z: 0.5 * z * torch.special.erfc(-z / math.sqrt(2.0)),
}


def table(name: str, mean: float, std: float, k_max: int = K_MAX, p_max: int = P_MAX, **options: int) -> np.ndarray:
    """wick_table at one neuron, float64, as a (k_max+1, p_max+1) array."""
    scalar = functools.partial(torch.tensor, dtype=torch.float64)
    return wick_table(name, scalar(mean), scalar(std * std), k_max, p_max, **options).numpy()


@functools.cache
def stein_reference(name: str, mean: float, std: float) -> tuple[np.ndarray, np.ndarray]:
    """(value, magnitude), both (K_MAX+1, P_MAX+1), by quadrature in standard units u = (z - μ)/σ.

    With ρ the N(μ, σ²) density, E[∂^k g(Z)] = ∫ g(z) (-1)^k ρ^{(k)}(z) dz and (-1)^k ρ^{(k)}(μ + σu) =
    σ^{-k-1} He_k(u) ϕ(u), so value[k, p] = σ^{-k} ∫ φ(μ + σu)^p He_k(u) ϕ(u) du: adaptive scipy quad_vec
    (all (k, p) at once), split where φ has its kink or jump (z = 0). magnitude[k, p] = σ^{-k} ∫ |φ^p He_k| ϕ du
    is the size of what cancels in that integral, so round-off in any evaluation of this form is a multiple
    of eps·magnitude; a trapezoid rule on 8001 points is accurate enough for it.
    """
    function = REFERENCE_ACTIVATIONS[name]
    orders, powers = np.arange(K_MAX + 1), np.arange(P_MAX + 1)
    scale = std ** -orders[:, None].astype(float)

    def integrand(u: float) -> np.ndarray:
        density = math.exp(-0.5 * u * u) / math.sqrt(2 * math.pi)
        return np.outer(special.eval_hermitenorm(orders, u) * density, function(mean + std * u) ** powers)

    kink = -mean / std
    points = [kink] if abs(kink) < QUADRATURE_HALF_WIDTH else None
    value, _ = integrate.quad_vec(
        integrand, -QUADRATURE_HALF_WIDTH, QUADRATURE_HALF_WIDTH, points=points,
        epsabs=1e-15, epsrel=1e-13, norm="max", limit=2000,
    )
    u = np.linspace(-QUADRATURE_HALF_WIDTH, QUADRATURE_HALF_WIDTH, 8001)
    activation = np.abs([function(mean + std * v) for v in u])
    weighted_hermite = np.abs(special.eval_hermitenorm(orders[:, None], u)) * stats.norm.pdf(u)
    magnitude = np.trapezoid(weighted_hermite[:, None, :] * activation[None, None, :] ** powers[None, :, None], u)
    return value * scale, magnitude * scale


def stein_tolerance(magnitude: np.ndarray, mean: float, std: float, relative: float) -> np.ndarray:
    """relative·magnitude (cancellation in the Stein integral), plus an absolute floor 1e-14·σ^{-k}·(1 + |μ| + σ)^p.

    The floor covers quad_vec's absolute accuracy (epsabs 1e-15 on the integral before the factor σ^{-k})
    and cancellation in the closed forms' binomial sums, whose terms have size ~(|μ| + σ)^p; it matters only
    for entries that are tiny next to the terms they are made of (far tails, μ/σ ≪ 0).
    """
    orders = np.arange(magnitude.shape[0])[:, None]
    powers = np.arange(magnitude.shape[1])[None, :]
    return relative * magnitude + 1e-14 * std ** (-orders.astype(float)) * (1 + abs(mean) + std) ** powers


def assert_matches_stein_reference(name: str, mean: float, std: float, relative: float, **options: int) -> None:
    value, magnitude = stein_reference(name, mean, std)
    actual = table(name, mean, std, **options)
    error = np.abs(actual - value)
    bad = error > stein_tolerance(magnitude, mean, std, relative)
    assert not bad.any(), f"{name} μ={mean} σ={std}: (k, p) = {np.argwhere(bad).tolist()}, max error {error.max():.3g}"


# --------------------------------------------------------------------------------------------- closed forms


@pytest.mark.parametrize("name", CLOSED_FORMS)
def test_closed_forms_match_quadrature_against_density_derivatives(name: str) -> None:
    """Grid μ × σ (incl. σ = 0.05 and μ/σ down to -40), k ≤ 6, p ≤ 5. Observed error ≤ 1e-15·magnitude
    away from the absolute floor (worst 2e-12 relative: ReLU p = 5 at μ = -0.7, σ = 0.3, binomial cancellation)."""
    for mean, std in GRID:
        assert_matches_stein_reference(name, mean, std, relative=1e-13)


def test_relu_derivatives_of_order_two_and_up_are_density_derivatives() -> None:
    """E[ReLU^{(k)}(Z)] = E[δ^{(k-2)}(Z)] = (-1)^k ρ^{(k-2)}(0), ρ^{(k-2)} by autograd on the N(μ, σ²) density.

    Relative check (atol 1e-300), so it covers the small-σ and far-tail entries that the quadrature test
    can only bound absolutely; rtol 1e-12 allows a few roundings in values up to σ^{-5} ≈ 3e6.
    """
    means = torch.tensor([m for m, _ in GRID], dtype=torch.float64)
    stds = torch.tensor([s for _, s in GRID], dtype=torch.float64)
    z = torch.zeros_like(means, requires_grad=True)
    derivative = torch.exp(-0.5 * ((z - means) / stds) ** 2) / (stds * math.sqrt(2 * math.pi))
    expected = []
    for order in range(K_MAX - 1):
        expected.append((-1) ** order * derivative.detach())
        (derivative,) = torch.autograd.grad(derivative.sum(), z, create_graph=True)
    actual = wick_table("relu", means, stds**2, K_MAX, 1)[2:, 1]
    torch.testing.assert_close(actual, torch.stack(expected), rtol=1e-12, atol=1e-300)


def test_relu_below_the_power_is_a_truncated_moment() -> None:
    """For k < p, E[∂^k ReLU(Z)^p] = (p)_k E[ReLU(Z)^{p-k}], a positive integrand: quad with relative accuracy.

    The closed form expands (μ + σX)^{p-k} binomially; for μ < 0 its terms cancel, so the tolerance is
    rtol 1e-11 plus 1e-15·(p)_k·(|μ| + σ)^{p-k}, the round-off of terms that size (observed ≤ 2e-12 relative).
    """
    for mean, std in GRID:
        actual = table("relu", mean, std)
        lower = max(-mean / std, -QUADRATURE_HALF_WIDTH)
        for p in range(1, P_MAX + 1):
            for k in range(p):
                expected = math.perm(p, k) * integrate.quad(
                    lambda u: (mean + std * u) ** (p - k) * math.exp(-0.5 * u * u) / math.sqrt(2 * math.pi),
                    lower, lower + 2 * QUADRATURE_HALF_WIDTH, epsabs=0, epsrel=1e-13, limit=200,
                )[0]
                floor = 1e-15 * math.perm(p, k) * (abs(mean) + std) ** (p - k)
                assert actual[k, p] == pytest.approx(expected, rel=1e-11, abs=floor), (mean, std, k, p)


def test_relu_slope_is_the_normal_cdf() -> None:
    """rel 1e-13: Φ(α) itself carries a relative α²·eps from rounding α (3e-14 at α = -14)."""
    for mean, std in GRID:
        assert table("relu", mean, std)[1, 1] == pytest.approx(stats.norm.cdf(mean / std), rel=1e-13, abs=1e-300)


def test_relu_k_at_least_p_is_p_factorial_times_a_first_power_entry() -> None:
    for mean, std in GRID:
        values = table("relu", mean, std)
        for p in range(1, P_MAX + 1):
            for k in range(p, K_MAX + 1):
                assert values[k, p] == math.factorial(p) * values[k - p + 1, 1]


def test_heaviside_sgn_and_abs_relations() -> None:
    """w_H(k, p) = w_ReLU(k+1, 1); sgn^p ∈ {1, sgn}; |z|^p = ReLU(z)^p + ReLU(-z)^p."""
    for mean, std in GRID:
        relu = table("relu", mean, std, k_max=K_MAX + 1)
        mirrored = table("relu", -mean, std)
        heaviside, sgn, absolute = (table(name, mean, std) for name in ("heaviside", "sgn", "abs"))
        signs = (-1.0) ** np.arange(K_MAX + 1)[:, None]
        np.testing.assert_array_equal(heaviside[:, 1:], np.repeat(relu[1:, 1:2], P_MAX, axis=1))
        np.testing.assert_array_equal(sgn[:, 2::2], np.eye(K_MAX + 1)[:, :1].repeat(P_MAX // 2, axis=1))
        np.testing.assert_allclose(sgn[1:, 1::2], 2 * relu[2:, 1:2].repeat(3, axis=1), rtol=1e-15, atol=0)
        np.testing.assert_allclose(sgn[0, 1], 2 * stats.norm.cdf(mean / std) - 1, rtol=1e-14, atol=1e-16)
        np.testing.assert_allclose(absolute[:, 1:], (relu[:-1] + signs * mirrored)[:, 1:], rtol=1e-15, atol=0)


def test_polynomial_known_values() -> None:
    """E[Z⁴] = 3 at N(0, 1); E[Z² + Z⁴] = 5 + 73 = 78 at N(1, 4); derivatives of z^{2p} are exact."""
    assert table("square", 0.0, 1.0)[0, 2] == 3.0
    at_1_4 = table("square", 1.0, 2.0)
    assert at_1_4[0, 1] + at_1_4[0, 2] == 78.0
    # d²/dz² z⁶ = 30 z⁴ and d⁶/dz⁶ z⁶ = 720, so at N(1, 4): 30·73 and 720; d⁷ of it is 0.
    cube = table("cube", 1.0, 2.0, k_max=7, p_max=2)
    assert (cube[2, 2], cube[6, 2], cube[7, 2]) == (30.0 * 73.0, 720.0, 0.0)


def test_identity_is_the_gaussian_itself() -> None:
    for mean, std in GRID:
        values = table("identity", mean, std, p_max=2)
        assert values[0, 1] == mean and values[1, 1] == 1.0 and not values[2:, 1].any()
        assert values[0, 2] == pytest.approx(mean**2 + std**2, rel=1e-15)
        assert values[1, 2] == pytest.approx(2 * mean, rel=1e-15) and values[2, 2] == 2.0


@pytest.mark.parametrize("name", ACTIVATION_NAMES)
def test_power_zero_is_the_constant_one(name: str) -> None:
    values = table(name, -0.7, 0.3, p_max=1)
    np.testing.assert_array_equal(values[:, 0], np.eye(K_MAX + 1)[0])


# -------------------------------------------------------------------------------------- smooth activations


def autograd_reference(name: str, means: torch.Tensor, stds: torch.Tensor, p_max: int) -> torch.Tensor:
    """d^k/dh^k E[φ(Z + h)^p] at h = 0, shape (K_MAX+1, p_max, len(means)) for p = 1..p_max, by torch.autograd.

    E[φ(μ + h + σX)^p] uses a 400-point Gauss–Legendre rule on |u| ≤ 14 (no Gauss–Hermite, no Stein identity:
    it integrates the classical derivatives, with no σ^{-k} factor to amplify round-off). For σ ≤ 1 the
    integrands are analytic in a strip of half-width ≥ π/(2√2) around the real u axis, where the rule
    converges far below 1e-15.
    """
    nodes, weights = special.roots_legendre(400)
    u = torch.tensor(QUADRATURE_HALF_WIDTH * nodes, dtype=torch.float64)
    weights = (torch.tensor(QUADRATURE_HALF_WIDTH * weights, dtype=torch.float64)
               * torch.exp(-0.5 * u * u) / math.sqrt(2 * math.pi))
    shift = torch.zeros(p_max, len(means), dtype=torch.float64, requires_grad=True)  # one h per (p, neuron)
    activation = TORCH_REFERENCE_ACTIVATIONS[name](means[:, None] + shift[..., None] + stds[:, None] * u)
    # Integer powers: a float exponent would differentiate 0^(p - k) into NaN where gelu underflows to 0.
    value = (torch.stack([activation[p - 1] ** p for p in range(1, p_max + 1)]) * weights).sum(dim=-1)
    derivatives = [value.detach()]
    for _ in range(K_MAX):
        (value,) = torch.autograd.grad(value.sum(), shift, create_graph=True)
        derivatives.append(value.detach())
    return torch.stack(derivatives)


@pytest.mark.parametrize("name", SMOOTH)
@pytest.mark.parametrize("stds, nodes", [((0.05, 0.3), 100), ((1.0,), 200)])
def test_smooth_activations_match_autograd_derivatives(name: str, stds: tuple[float, ...], nodes: int) -> None:
    """The default 100-node rule at σ ≤ 0.3 (converged: tanh's poles at ±iπ/2 are ≥ 3.7 away in node units),
    a 200-node rule at σ = 1 (100 nodes leave up to 6e-6 relative for tanh at k = 6, p = 4; see below).

    Tolerance rtol 1e-10 plus 1e-15·σ^{-k}·√k!·(1 + |μ| + 2σ)^p: Stein's form loses eps·σ^{-k}·E|He_k φ^p|
    to round-off (≈ 2e-7 absolute at σ = 0.05, k = 6, on values of size ~1e8).
    """
    grid = [(m, s) for m in MEANS for s in stds]
    means = torch.tensor([m for m, _ in grid], dtype=torch.float64)
    sigma = torch.tensor([s for _, s in grid], dtype=torch.float64)
    actual = wick_table(name, means, sigma**2, K_MAX, 4, quadrature_nodes=nodes)
    orders = torch.arange(K_MAX + 1, dtype=torch.float64)[:, None]
    root_factorial = torch.exp(0.5 * torch.lgamma(orders + 1))
    expected = autograd_reference(name, means, sigma, 4)
    for power in range(1, 5):
        round_off = 1e-15 * sigma ** (-orders) * root_factorial * (1 + means.abs() + 2 * sigma) ** power
        error = (actual[:, power] - expected[:, power - 1]).abs()
        assert (error <= 1e-10 * expected[:, power - 1].abs() + round_off).all(), (power, float(error.max()))


@pytest.mark.parametrize("name", SMOOTH)
def test_smooth_activations_at_small_sigma_match_adaptive_quadrature(name: str) -> None:
    """σ ∈ {0.05, 0.3}, k ≤ 6, p ≤ 5, default 100 nodes: as tight as the closed forms (observed ≤ 1e-15·magnitude)."""
    for mean in MEANS:
        for std in (0.05, 0.3):
            assert_matches_stein_reference(name, mean, std, relative=1e-13)


@pytest.mark.parametrize("name", SMOOTH)
def test_hundred_node_rule_at_unit_sigma_and_low_powers(name: str) -> None:
    """σ = 1, p ≤ 2, k ≤ 6, the default 100 nodes vs adaptive quadrature: within 2e-9 absolute.

    Observed max: tanh 1.4e-9 (at k = 6), sigmoid 6e-16, gelu 2e-14. This is the regime of He-init networks.
    """
    for mean in MEANS:
        value, _ = stein_reference(name, mean, 1.0)
        np.testing.assert_allclose(table(name, mean, 1.0)[:, :3], value[:, :3], rtol=0, atol=2e-9)


@pytest.mark.parametrize("name", SMOOTH)
def test_accuracy_limit_of_the_hundred_node_rule_and_convergence_with_more_nodes(name: str) -> None:
    """The 100-node rule is not converged for large σ·p·k: at σ = 2.2 its error reaches 7e-4·magnitude
    (tanh, whose poles at ±iπ/2 sit only 0.5 from the real axis in node units), 4e-7 (gelu), 4e-8 (sigmoid).
    300 nodes bring that to 3e-7 (tanh) and ≤ 1e-12 (gelu, sigmoid). These bounds pin the documented limits."""
    limits = {"tanh": (1e-3, 1e-6), "gelu": (1e-6, 1e-11), "sigmoid": (1e-7, 1e-13)}[name]
    for mean in MEANS:
        for std in (1.0, 2.2):
            for nodes, relative in zip((100, 300), limits):
                assert_matches_stein_reference(name, mean, std, relative=relative, quadrature_nodes=nodes)


# ---------------------------------------------------------------------------------------- identities, API


@pytest.mark.parametrize("name", ACTIVATION_NAMES)
def test_mean_and_variance_derivatives_raise_the_order(name: str) -> None:
    """∂w(k, p)/∂μ = w(k+1, p) and ∂w(k, p)/∂σ² = w(k+2, p)/2 (heat equation), by autograd through wick_table.

    Exact identities of the true w; they tie the k < p and k ≥ p ReLU branches and the T_j recursion together.
    σ ∈ {0.3, 1} with 200 nodes for the smooth activations; tolerance rtol 1e-9 plus 1e-13·σ^{-k-2}.
    """
    grid = [(m, s) for m in MEANS for s in (0.3, 1.0)]
    means = torch.tensor([m for m, _ in grid], dtype=torch.float64, requires_grad=True)
    variances = torch.tensor([s * s for _, s in grid], dtype=torch.float64, requires_grad=True)
    k_max, p_max = 4, 4
    values = wick_table(name, means, variances, k_max + 2, p_max, quadrature_nodes=200)
    floor = 1e-13 * variances.detach() ** (-(k_max + 2) / 2)
    for k in range(k_max + 1):
        for p in range(1, p_max + 1):
            d_mean, d_var = torch.autograd.grad(values[k, p].sum(), (means, variances), retain_graph=True)
            torch.testing.assert_close(d_mean, values[k + 1, p].detach(), rtol=1e-9, atol=float(floor.max()))
            torch.testing.assert_close(d_var, values[k + 2, p].detach() / 2, rtol=1e-9, atol=float(floor.max()))


@pytest.mark.parametrize("name", ["relu", "tanh"])
def test_gradcheck_in_mean_and_variance(name: str) -> None:
    means = torch.tensor([-0.7, 0.0, 0.4], dtype=torch.float64, requires_grad=True)
    variances = torch.tensor([0.09, 1.0, 2.2**2], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda m, v: wick_table(name, m, v, 4, 3), (means, variances))


def test_variance_clamp_warns_and_equals_the_clamped_table() -> None:
    means = torch.tensor([0.3, -0.2], dtype=torch.float64)
    variances = torch.tensor([-0.5, 1.0], dtype=torch.float64, requires_grad=True)
    with pytest.warns(RuntimeWarning, match="Snapping negative variance to 1e-10"):
        clamped = wick_table("relu", means, variances, 3, 2)
    expected = wick_table("relu", means, torch.tensor([1e-10, 1.0], dtype=torch.float64), 3, 2)
    torch.testing.assert_close(clamped.detach(), expected, rtol=0, atol=0)
    (gradient,) = torch.autograd.grad(clamped[0, 1].sum(), variances)
    assert gradient[0] == 0 and torch.isfinite(gradient).all()


def test_no_warning_at_or_above_the_floor() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        wick_table("tanh", torch.zeros(2, dtype=torch.float64), torch.tensor([1e-10, 1.0], dtype=torch.float64), 2, 2)


def test_second_moments_give_the_he_init_gains() -> None:
    """1/E[φ(Z)²] for Z ~ N(0, 1); gelu and tanh values are the reference's 100-node Gauss–Hermite numbers."""
    gains = {"relu": 2.0, "heaviside": 2.0, "gelu": 2.351715614073372, "tanh": 2.536175433175718, "sgn": 1.0,
             "square": 1 / 3, "cube": 1 / 15, "abs": 1.0, "identity": 1.0}
    for name, gain in gains.items():
        assert 1 / second_moment(name) == pytest.approx(gain, rel=1e-14), name
    assert 1 / second_moment("sigmoid") == pytest.approx(3.40856, abs=5e-6)


def test_second_moments_with_a_bias_mean_match_the_reference_goldens() -> None:
    """w_var values stored in the reference goldens (README): biased ReLU, the LPE heaviside layer, biased tanh."""
    assert 1 / second_moment("relu", 0.1) == pytest.approx(1.7096315002483509, rel=1e-14)
    assert 1 / second_moment("heaviside", -2.0) == pytest.approx(43.95578901598566, rel=1e-14)
    assert 1 / second_moment("tanh", 0.1) == pytest.approx(2.5245537116706798, rel=1e-14)


@pytest.mark.parametrize("name", ACTIVATION_NAMES)
def test_float32_follows_the_dtype_and_agrees_with_float64(name: str) -> None:
    """k ≤ 3 at σ ∈ {0.3, 1}: float32 round-off (≈ 6e-8) amplified by Stein's σ^{-3} ≈ 37 and √3!."""
    means = torch.tensor(MEANS, dtype=torch.float64).repeat(2)
    variances = torch.tensor([0.09] * 5 + [1.0] * 5, dtype=torch.float64)
    single = wick_table(name, means.float(), variances.float(), 3, 3)
    assert single.dtype == torch.float32
    torch.testing.assert_close(single.double(), wick_table(name, means, variances, 3, 3), rtol=1e-5, atol=2e-5)


@pytest.mark.parametrize("name", ["relu", "gelu", "cube"])
def test_vectorised_over_any_shape_equals_one_neuron_at_a_time(name: str) -> None:
    means = torch.tensor([[-2.0, -0.7, 0.0], [0.4, 1.5, 0.1]], dtype=torch.float64)
    variances = torch.tensor([[0.0025, 0.09, 1.0], [4.84, 1.0, 0.5]], dtype=torch.float64)
    batch = wick_table(name, means, variances, 4, 3)
    assert batch.shape == (5, 4, 2, 3)
    for i in range(2):
        for j in range(3):
            single = wick_table(name, means[i, j], variances[i, j], 4, 3)
            # Summation order may differ with the batch shape; Stein's round-off at σ = 0.05 is ~1e-13 absolute.
            torch.testing.assert_close(batch[:, :, i, j], single, rtol=1e-13, atol=1e-12)
    broadcast = wick_table(name, means, torch.tensor(1.0, dtype=torch.float64), 1, 1)
    assert broadcast.shape == (2, 2, 2, 3)


def test_activation_functions() -> None:
    """rtol 1e-13: torch's gelu evaluates Φ as (1 + erf)/2 and loses ~4e-15 relative at z = -2.5."""
    z = torch.tensor([-2.5, -0.3, 0.0, 0.7, 3.0], dtype=torch.float64)
    for name in ACTIVATION_NAMES:
        expected = [REFERENCE_ACTIVATIONS[name](float(v)) for v in z]
        np.testing.assert_allclose(activation_function(name)(z).numpy(), expected, rtol=1e-13, atol=0, err_msg=name)


def test_bad_arguments_raise_one_line_value_errors() -> None:
    zero, one = torch.zeros(1, dtype=torch.float64), torch.ones(1, dtype=torch.float64)
    for call in (lambda: wick_table("swish", zero, one, 1, 1), lambda: activation_function("swish")):
        with pytest.raises(ValueError) as info:
            call()
        message = str(info.value)
        assert "\n" not in message and "swish" in message and all(name in message for name in ACTIVATION_NAMES)
    with pytest.raises(ValueError, match="k_max"):
        wick_table("relu", zero, one, -1, 1)
    with pytest.raises(ValueError, match="p_max"):
        wick_table("relu", zero, one, 1, -1)
