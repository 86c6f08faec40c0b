"""κ_1 and κ_2 through a linear map z = W a + b: the mean, W Σ Wᵀ and its diagonal."""

from __future__ import annotations

from typing import Any

from .layers import Sandwich
from .strassen import product


def linear_mean(xp: Any, weight: Any, bias: Any | None, mean: Any | None) -> Any:
    """κ_1 through z = W a + b (``mean`` None: the input's zero mean, not multiplied through W)."""
    out = xp.zeros(weight.shape[0], dtype=weight.dtype) if mean is None else weight @ mean
    return out if bias is None else out + bias


def symmetric_product(weight: Any, cov: Any | None, xp: Any = None, levels: int = 0,
                      sandwich: Sandwich | None = None) -> Any:
    """W Σ Wᵀ (W Wᵀ when ``cov`` is None, the identity): by the backend's ``sandwich`` where it has one (at the
    widths WhestBench uses, n ≤ 1024, cheaper than Strassen's products at any depth: 3n³ against ≥ 3.05n³ metered;
    Strassen's additions are O(n²), so far wider nets would favour it), else symmetrised against round-off, with
    ``levels`` > 0 the products by ``product`` (Strassen)."""
    value = sandwich(weight, cov) if sandwich is not None else None
    if value is not None:
        return value
    if levels:
        value = (product(xp, weight, weight, levels, transposed=True) if cov is None
                 else product(xp, weight, product(xp, cov, weight, levels, transposed=True), levels))
    else:
        value = weight @ weight.T if cov is None else weight @ cov @ weight.T
    return (value + value.T) / 2


def linear_variance(xp: Any, weight: Any, cov: Any | None, levels: int = 0) -> Any:
    """diag(W Σ Wᵀ) = Σ_j (W Σ)_ij W_ij without forming W Σ Wᵀ (Σ = I when ``cov`` is None: the squared row norms);
    W Σ by ``levels`` Strassen levels (``product``)."""
    if cov is None:
        return xp.sum(weight * weight, axis=1)
    return xp.sum(product(xp, weight, cov, levels) * weight, axis=1)
