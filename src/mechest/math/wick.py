"""Wick coefficients w(k, p) = E[∂^k/∂z^k (φ(Z)^p)], Z ~ N(μ, σ²), for every supported activation φ.

docs/method.md §6.2. With α = μ/σ, ϕ and Φ the standard normal pdf and cdf and He_m the probabilists'
Hermite polynomials:

- relu, heaviside, sgn, abs: closed forms (derivatives are taken in the sense of distributions);
- identity, square, cube: the k-th derivative of q^p as a polynomial, then Gaussian moments;
- gelu (z·Φ(z)), tanh, sigmoid: Gauss–Hermite quadrature of Stein's identity
  E[g^{(k)}(Z)] = σ^{-k} E[He_k(X) g(μ + σX)], X ~ N(0, 1), with 100 nodes by default as the reference
  implementation does. Accuracy against adaptive quadrature (k ≤ 6, p ≤ 5, tests/test_wick.py): converged
  for σ ≤ 1 except tanh (≤ 4e-8 of the integrand's size at σ = 1, 1.4e-9 absolute for p ≤ 2); at σ = 2.2 the
  error reaches 7e-4 (tanh), 4e-7 (gelu), 4e-8 (sigmoid) of it, and 300 nodes cut that to 3e-7 (tanh).
  Stein's form also multiplies round-off by σ^{-k}: about 2e-7 absolute at σ = 0.05, k = 6 in float64,
  and far more in float32.

Everything is vectorised over neurons (the elementwise entries of μ and σ²) and differentiable in both.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import numpy as np
import torch

from mechest.math.gaussian import gauss_hermite, gaussian_moments, hermite_he, normal_cdf, normal_pdf

ACTIVATION_NAMES: tuple[str, ...] = (
    "relu",
    "gelu",
    "tanh",
    "sigmoid",
    "abs",
    "sgn",
    "square",
    "cube",
    "heaviside",
    "identity",
)

MIN_VARIANCE = 1e-10

_ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "relu": torch.relu,
    "gelu": torch.nn.functional.gelu,
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
    "abs": torch.abs,
    "sgn": torch.sign,
    "square": torch.square,
    "cube": lambda z: z * z * z,
    "heaviside": lambda z: (z > 0).to(z.dtype),
    "identity": lambda z: z,
}

_POLYNOMIALS: dict[str, tuple[int, ...]] = {"identity": (0, 1), "square": (0, 0, 1), "cube": (0, 0, 0, 1)}
_QUADRATURE = ("gelu", "tanh", "sigmoid")

# Columns p = 1..p_max of one Wick table: _Columns[k][p - 1] = w(k, p).
_Columns = list[list[torch.Tensor]]


def activation_function(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """The elementwise torch function φ named ``name`` (gelu is the exact erf form z·Φ(z); heaviside is 1{z > 0})."""
    return _ACTIVATIONS[_check_name(name)]


def wick_table(
    activation: str,
    mean: torch.Tensor,
    var: torch.Tensor,
    k_max: int,
    p_max: int,
    *,
    quadrature_nodes: int = 100,
) -> torch.Tensor:
    """W[k, p, ...] = E[d^k/dz^k φ(Z)^p] for Z ~ N(mean, var) elementwise; shape (k_max+1, p_max+1, *mean.shape).

    ``mean`` and ``var`` are broadcast together (the shape is their broadcast shape) and promoted to a common
    floating dtype. Variances below 1e-10 are raised to 1e-10 with a RuntimeWarning. gelu, tanh and sigmoid
    use a ``quadrature_nodes``-point Gauss–Hermite rule (at most 370 nodes), which loses about
    eps·σ^{-k}·√k! to round-off and converges slowly for large σ (see the module docstring).
    """
    name = _check_name(activation)
    if k_max < 0 or p_max < 0:
        raise ValueError(f"k_max and p_max must be non-negative, got k_max={k_max}, p_max={p_max}")
    dtype = torch.promote_types(mean.dtype, var.dtype)
    if not dtype.is_floating_point:
        raise ValueError(f"mean and var must be floating-point tensors, got {mean.dtype} and {var.dtype}")
    mean, var = torch.broadcast_tensors(mean.to(dtype), var.to(dtype))
    var = _clamp_variance(var)
    power_zero = torch.stack([torch.ones_like(mean)] + [torch.zeros_like(mean)] * k_max)[:, None]  # φ^0 = 1
    if p_max == 0:
        return power_zero
    if name in _QUADRATURE:
        positive = _quadrature(_ACTIVATIONS[name], mean, var.sqrt(), k_max, p_max, quadrature_nodes)
    else:
        positive = torch.stack([torch.stack(row) for row in _closed_form(name, mean, var, k_max, p_max)])
    return torch.cat([power_zero, positive], dim=1)


def second_moment(activation: str, mean: float = 0.0) -> float:
    """E[φ(Z + mean)²] with Z ~ N(0, 1), in float64 (He init uses w_var = 1 / E[φ²])."""
    table = wick_table(activation, torch.tensor(mean, dtype=torch.float64),
                       torch.tensor(1.0, dtype=torch.float64), 0, 2)
    return float(table[0, 2])


def _check_name(name: str) -> str:
    """``name`` if it is in ACTIVATION_NAMES, else a one-line ValueError listing them."""
    if name not in ACTIVATION_NAMES:
        raise ValueError(f"unknown activation {name!r}; expected one of {', '.join(ACTIVATION_NAMES)}")
    return name


def _clamp_variance(var: torch.Tensor) -> torch.Tensor:
    """Raise variances below MIN_VARIANCE to it (docs/method.md §6.1), warning once per call about finite ones (an
    infinite one is an overflow, which mechest.limits' checks of the result report as an error)."""
    below = var < MIN_VARIANCE
    if bool(below.any()):
        finite_below = var.detach()[below & torch.isfinite(var)]
        if finite_below.numel():
            warnings.warn(
                f"Snapping negative variance to {MIN_VARIANCE:g} "
                f"(smallest variance was {float(finite_below.min()):.3g})",
                RuntimeWarning,
                stacklevel=3,
            )
        return torch.clamp(var, min=MIN_VARIANCE)
    return var


def _closed_form(name: str, mean: torch.Tensor, var: torch.Tensor, k_max: int, p_max: int) -> _Columns:
    """Columns p ≥ 1 of the activations whose Wick coefficients are exact formulas."""
    if name in _POLYNOMIALS:
        return _polynomial(_POLYNOMIALS[name], mean, var, k_max, p_max)
    std = var.sqrt()
    if name == "relu":
        return _relu(mean, std, k_max, p_max)
    if name == "abs":
        return _abs(mean, std, k_max, p_max)
    relu_slopes = _relu_first_power(mean, std, k_max + 1)[1:]  # E[ReLU^{(k+1)}(Z)] = E[H^{(k)}(Z)]
    if name == "heaviside":
        return [[relu_slopes[k]] * p_max for k in range(k_max + 1)]
    return _sgn(mean, std, relu_slopes, p_max)


def _relu_first_power(mean: torch.Tensor, std: torch.Tensor, k_max: int) -> list[torch.Tensor]:
    """E[ReLU^{(k)}(Z)] for k = 0..k_max.

    k = 0: σϕ(α) + μΦ(α); k = 1: Φ(α); k ≥ 2: E[δ^{(k-2)}(Z)] = (-1)^k σ^{-(k-1)} He_{k-2}(α) ϕ(α).
    """
    alpha = mean / std
    pdf = normal_pdf(alpha)
    values = [std * pdf + mean * normal_cdf(alpha), normal_cdf(alpha)]
    if k_max >= 2:
        hermite = hermite_he(k_max - 2, alpha)
        values += [(-1) ** k * std ** (1 - k) * hermite[k - 2] * pdf for k in range(2, k_max + 1)]
    return values[: k_max + 1]


def _truncated_moments(alpha: torch.Tensor, j_max: int) -> list[torch.Tensor]:
    """T_j(α) = E[X^j 1{X > -α}] for j = 0..j_max: T_0 = Φ(α), T_1 = ϕ(α), T_j = (j-1) T_{j-2} + (-α)^{j-1} ϕ(α)."""
    pdf = normal_pdf(alpha)
    moments = [normal_cdf(alpha), pdf]
    for j in range(2, j_max + 1):
        moments.append((j - 1) * moments[j - 2] + (-alpha) ** (j - 1) * pdf)
    return moments[: j_max + 1]


def _relu(mean: torch.Tensor, std: torch.Tensor, k_max: int, p_max: int) -> _Columns:
    """w(k, p) for ReLU^p, p ≥ 1.

    k ≥ p: ∂^k ReLU^p = p!·∂^{k-p+1} ReLU, so w(k, p) = p!·w(k-p+1, 1).
    k < p: w(k, p) = (p)_k E[(μ + σX)^{p-k} 1{X > -α}] = (p)_k Σ_j C(p-k, j) μ^{p-k-j} σ^j T_j(α).
    """
    first = _relu_first_power(mean, std, k_max)
    truncated = _truncated_moments(mean / std, p_max)

    def entry(k: int, p: int) -> torch.Tensor:
        if k >= p:
            return math.factorial(p) * first[k - p + 1]
        m = p - k
        terms = [math.comb(m, j) * mean ** (m - j) * std**j * truncated[j] for j in range(m + 1)]
        return math.perm(p, k) * torch.stack(terms).sum(dim=0)

    return [[entry(k, p) for p in range(1, p_max + 1)] for k in range(k_max + 1)]


def _abs(mean: torch.Tensor, std: torch.Tensor, k_max: int, p_max: int) -> _Columns:
    """|z|^p = ReLU(z)^p + ReLU(-z)^p, so w_abs(k, p; μ, σ) = w_ReLU(k, p; μ, σ) + (-1)^k w_ReLU(k, p; -μ, σ)."""
    right = _relu(mean, std, k_max, p_max)
    left = _relu(-mean, std, k_max, p_max)
    return [[r + (-1) ** k * left_value for r, left_value in zip(right[k], left[k])] for k in range(k_max + 1)]


def _sgn(mean: torch.Tensor, std: torch.Tensor, relu_slopes: list[torch.Tensor], p_max: int) -> _Columns:
    """sgn^p is 1 (p even) or sgn (p odd); E[sgn(Z)] = 2Φ(α) - 1 and sgn^{(k)} = 2 ReLU^{(k+1)} for k ≥ 1."""
    one, zero = torch.ones_like(mean), torch.zeros_like(mean)
    odd = [2 * normal_cdf(mean / std) - 1] + [2 * slope for slope in relu_slopes[1:]]
    even = [one] + [zero] * (len(relu_slopes) - 1)
    return [[odd[k] if p % 2 else even[k] for p in range(1, p_max + 1)] for k in range(len(relu_slopes))]


def _polynomial(
    coefficients: tuple[int, ...], mean: torch.Tensor, var: torch.Tensor, k_max: int, p_max: int
) -> _Columns:
    """w(k, p) = Σ_i c_i E[Z^i], where Σ_i c_i z^i = d^k/dz^k q(z)^p for the polynomial q with these coefficients."""
    degree = (len(coefficients) - 1) * p_max
    moments = gaussian_moments(degree, mean, var)
    polynomial = np.polynomial.polynomial

    def entry(k: int, p: int) -> torch.Tensor:
        derivative = polynomial.polyder(polynomial.polypow(coefficients, p), k)
        weights = torch.as_tensor(derivative, dtype=mean.dtype, device=mean.device)
        return torch.tensordot(weights, moments[: len(derivative)], dims=1)

    return [[entry(k, p) for p in range(1, p_max + 1)] for k in range(k_max + 1)]


def _quadrature(
    function: Callable[[torch.Tensor], torch.Tensor],
    mean: torch.Tensor,
    std: torch.Tensor,
    k_max: int,
    p_max: int,
    num_nodes: int,
) -> torch.Tensor:
    """Columns p = 1..p_max, shape (k_max+1, p_max, *mean.shape), by Gauss–Hermite on Stein's identity.

    w(k, p) ≈ σ^{-k} π^{-1/2} Σ_l ω_l He_k(√2 t_l) f(μ + σ√2 t_l)^p.
    """
    nodes, weights = gauss_hermite(num_nodes, mean.dtype, mean.device)
    x = math.sqrt(2.0) * nodes
    weighted_hermite = hermite_he(k_max, x) * (weights / math.sqrt(math.pi))  # (k, l)
    values = function(mean[..., None] + std[..., None] * x)  # (..., l)
    powers = torch.stack([values**p for p in range(1, p_max + 1)])  # (p, ..., l)
    sums = torch.einsum("kl,p...l->kp...", weighted_hermite, powers)
    inverse_scale = torch.stack([std ** (-k) for k in range(k_max + 1)])  # (k, ...)
    return sums * inverse_scale[:, None]
