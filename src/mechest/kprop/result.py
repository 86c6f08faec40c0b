"""What a cumulant propagation returns."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class Propagation:
    """Propagated cumulants of the output z_{L-1}, and of every hidden activation a_l.

    ``mean`` is κ_1 of the output; ``cov`` its second cumulant as propagated at this order (for K = 1 only
    the trace part survives: c·diag(W Wᵀ)); ``layer_means[l]`` and ``layer_covs[l]`` are κ_1 and κ_2 of a_l.
    ``third`` is the output's third cumulant where the order tracks it (None otherwise).
    """

    mean: torch.Tensor
    cov: torch.Tensor
    layer_means: list[torch.Tensor] = field(default_factory=list)
    layer_covs: list[torch.Tensor] = field(default_factory=list)
    third: torch.Tensor | None = None
