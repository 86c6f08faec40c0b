"""The cost options of a planned propagation (``PlanOptions``): how cheaply ``planned`` computes, not what."""

from __future__ import annotations

from dataclasses import dataclass

from .source_compression import Compression
from .thin import ThinCorrection


@dataclass(frozen=True)
class PlanOptions:
    """How cheaply ``planned`` runs a plan (the default: exactly, every unit kept). What it computes is told apart:
    the scheme (the plan ``spec`` and κ_4's ``core``), the ``window`` and the ``outputs``.

    ``compression`` (K = 3 only) compresses the κ_3 sources older than its age (``Compression``, docs/method.md
    §7.6); None: exact. ``strassen`` > 0 runs the n³ products (the sources' mapping and (2,1) slices, and W Σ Wᵀ
    and W Wᵀ where the backend has no ``sandwich``) by that many levels of Strassen's recursion (``product``,
    §7.7); 0: plain products. ``correction`` (K = 3 only) keeps each new source's correction leg thin
    (``ThinCorrection``, §7.10): T and P mapped, Q = T diag(s) + P diag(f) + Z Lᵀ with a rank-r residual; it
    combines with ``compression`` (a thin source is expanded when it is compressed) and ``strassen``; None: the
    exact Q. ``prune`` = t > 0 drops, after every hidden layer, the units whose pre-activation mean is more than t
    standard deviations below zero from the covariance and κ_3 sources carried on (``pruning``, §7.11; ReLU nets
    only); a pruned layer's covariance is not returned (None in ``layer_covs``), and Strassen's products fall back
    to dense ones on the pruned widths. None: keeps every unit. The cost bounds (``planned_flops``) ignore
    ``prune``: pruning only lowers the count.

    ``Compression`` and ``ThinCorrection`` check their own values; which options a scheme accepts (a thin
    correction only at K = 3, pruning only on ReLU nets) ``planned`` checks."""

    compression: Compression | None = None
    strassen: int = 0
    correction: ThinCorrection | None = None
    prune: float | None = None

    def __post_init__(self) -> None:
        if self.strassen < 0:
            raise ValueError(f"Strassen's recursion needs levels ≥ 0; got {self.strassen}")
        if self.prune is not None and not self.prune > 0:
            raise ValueError(f"dead-unit pruning needs a threshold t > 0 or None; got {self.prune}")
