"""Weighted sums of stacked matrices, K_q = Σ_u diag(A[:, q, u]) M_u diag(b_u) for every q, in a fixed number of
operations whatever the number of terms u and results q (phase 2's residual-time gate bills every operation):
the diagram sums (``power_matrices``) and the pK → K conversions (``cumulants_from_powers``)."""

from __future__ import annotations

from typing import Any

from .arrays import buffer
from .strassen import takes_out


def table_weighted_sums(xp: Any, coefficients: Any, table: Any, products: Any) -> Any:
    """Σ_s U[..., s] ⊙ B_s with U[..., s] = Σ_{k,p} c[..., s, k, p] w(k, p): ``coefficients`` c (..., S, k, p)
    constant, ``table`` the Wick table w (k, p, n), ``products`` B (S, n) stacked; two einsums, shape (..., n)."""
    return xp.einsum("...si,si->...i", xp.einsum("...skp,kpi->...si", coefficients, table), products)


def stacked(xp: Any, matrices: list) -> Any:
    """S[i, u, j] = M_u[ij], the n × n ``matrices`` stacked on axis 1 (one operation; into a scratch array reused
    from call to call where the namespace takes ``out=``, ``takes_out``)."""
    shape = (matrices[0].shape[0], len(matrices), matrices[0].shape[1])
    return xp.stack(matrices, axis=1, out=buffer(xp, matrices[0], "stacked", shape) if takes_out(xp) else None)


def weighted_sums(xp: Any, rows: Any, matrices: Any, columns: Any) -> Any:
    """K[i, q, :] = Σ_u A[i, q, u] M_u[i, :] ⊙ b_u for ``rows`` A (n, Q, U), ``matrices`` S (n, U, n, ``stacked``)
    and ``columns`` b (U, n): S ⊙ b (into a scratch array where the namespace takes ``out=``), then one batched
    matmul over the rows i, A[i] (S ⊙ b)[i]. K_q is the view K[:, q]."""
    weighted = xp.multiply(matrices, columns, out=buffer(xp, matrices, "weighted", tuple(matrices.shape))
                           if takes_out(xp) else None)
    return xp.matmul(rows, weighted)


def summed_weighted_sums(xp: Any, rows: Any, matrices: Any, columns: Any) -> Any:
    """Σ_ij K_q[ij] of ``weighted_sums`` for every q, Σ_{i,u} A[i, q, u] (S[i, u, :] · b_u): two einsums, no
    n × n temporary."""
    return xp.einsum("iqu,iu->q", rows, xp.einsum("iuj,uj->iu", matrices, columns))
