"""WhestBench's networks in mechest's convention.

WhestBench: row vectors, h_l = relu(h_{l−1} @ W_l), no biases, W_l square, no output map; the targets are
E[h_l] for l = 1..L. mechest: column vectors, weights out×in (as nn.Linear), a_l = φ(W_l a_{l−1} + b_l) for the
hidden layers and a final linear output map. So W_mechest = W_whestᵀ for every layer, and the mechest net gets
an identity output map; its hidden-layer means (Propagation.layer_means) are WhestBench's targets.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from mechest.errors import MechestError
from mechest.mlp import MLP


def mechest_net(whest_weights: Sequence[np.ndarray], dtype: torch.dtype = torch.float64) -> MLP:
    """The mechest MLP whose hidden activations a_0..a_{L−1} are WhestBench's h_1..h_L."""
    if not whest_weights:
        raise MechestError("a WhestBench network needs at least one weight matrix")
    width = np.asarray(whest_weights[0]).shape[0]
    weights = []
    for layer, weight in enumerate(whest_weights):
        array = np.asarray(weight)
        if array.shape != (width, width):
            raise MechestError(f"WhestBench weight {layer} has shape {array.shape}, expected ({width}, {width})")
        weights.append(torch.as_tensor(array.T.copy(), dtype=dtype))
    weights.append(torch.eye(width, dtype=dtype))
    return MLP(weights, [None] * len(weights), ["relu"] * len(whest_weights))
