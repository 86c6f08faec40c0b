"""What the executor reads and returns: the array namespace (``Backend``), the network (``Layers``), the
layer loop every engine runs (``layer_states``) and a propagation's result (``Cumulants``, ``OUTPUTS``)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

WickFunction = Callable[[str, Any, Any, int, int], Any]
"""(activation, mean, variance, k_max, p_max) -> table[k, p, i] = E[∂^k φ(Z_i)^p], Z_i ~ N(mean_i, variance_i)."""


Sandwich = Callable[[Any, Any | None], Any | None]
"""(W, M) -> W M Wᵀ for a symmetric matrix M, a vector M (standing for diag M) or None (the identity); None where
the namespace cannot form it as a symmetric result (then the executor's plain products)."""


@dataclass(frozen=True)
class Backend:
    """An array namespace and what differs between namespaces: its normal cdf Φ, the Wick tables of activations
    other than ReLU (``wick``; None: ReLU only) and the products W M Wᵀ whose result it can bill for its distinct
    entries (``sandwich``, e.g. flopscope's einsum with a symmetric result, half a product; None: plain products).
    ``strassen_allowed(done, total)``, asked before each layer with the number of layers done and their total,
    says whether that layer may use the Strassen levels of ``PlanOptions.strassen`` (a caller under a time limit
    turns them off when they run too slowly; None: always). Constants are made with ``xp.asarray``, ``xp.eye`` and
    ``xp.zeros``: a namespace for another device wraps those (mechest.kprop.run)."""

    xp: Any
    normal_cdf: Callable[[Any], Any]
    wick: WickFunction | None = None
    sandwich: Sandwich | None = None
    strassen_allowed: Callable[[int, int], bool] | None = None

    def strassen_levels(self, levels: int, done: int, total: int) -> int:
        """The Strassen levels the next layer uses: ``levels`` unless ``strassen_allowed`` says no."""
        return levels if levels == 0 or self.strassen_allowed is None or self.strassen_allowed(done, total) else 0


@dataclass(frozen=True)
class Layers:
    """A network as the executor reads it: hidden layers z_l = W_l a_{l−1} + b_l, a_l = φ_l(z_l) (one activation
    name per hidden layer, a bias or None per weight), then a linear output map z = W a + b when there is one more
    weight than activations."""

    weights: Sequence[Any]
    biases: Sequence[Any | None]
    activations: Sequence[str]

    def __post_init__(self) -> None:
        if len(self.biases) != len(self.weights) or len(self.weights) - len(self.activations) not in (0, 1):
            raise ValueError(f"{len(self.weights)} weights, {len(self.biases)} biases and {len(self.activations)} "
                             "activations: need one bias per weight and one activation per hidden layer")

    @property
    def output_map(self) -> bool:
        """Whether the last weight is a linear output map (no activation after it)."""
        return len(self.weights) > len(self.activations)

    def hidden(self) -> list[tuple[Any, Any | None, str]]:
        """(W_l, b_l, φ_l) of every hidden layer."""
        return list(zip(self.weights, self.biases, self.activations))

    def prefix(self, count: int) -> Layers:
        """The first ``count`` hidden layers, without output map."""
        return Layers(list(self.weights[:count]), list(self.biases[:count]), list(self.activations[:count]))


Step = Callable[[Any, Any, Any, str], Any]
"""One hidden layer of a representation: (state of a_{l−1}, W_l, b_l or None, φ_l) -> state of a_l."""


def layer_states(layers: Layers, state: Any, step: Step) -> Iterator[Any]:
    """The layer loop of every engine: from the input's ``state``, the state after each hidden layer
    z_l = W_l a_{l−1} + b_l, a_l = φ_l(z_l), ``step`` being one layer of the engine's representation."""
    for weight, bias, activation in layers.hidden():
        state = step(state, weight, bias, activation)
        yield state


def relu_layers(weights: Sequence[Any]) -> Layers:
    """A bias-free ReLU network without output map (WhestBench's nets, in mechest's column convention)."""
    return Layers(weights, [None] * len(weights), ["relu"] * len(weights))


@dataclass
class Cumulants:
    """What a propagation returns. ``layer_means[l]`` = E[a_l] and ``layer_covs[l]`` = Cov(a_l) for every hidden
    layer (at K = 1 the scalar c of its trace part c·I; None for a last hidden layer computed as its mean alone).
    With an output map, ``mean`` and ``cov`` are κ_1 and κ_2 of the output z and ``third_diagonal`` and
    ``fourth_diagonal`` its marginal κ_3(i,i,i) and κ_4(i,i,i,i) (None where the scheme does not track them)."""

    layer_means: list[Any]
    layer_covs: list[Any]
    mean: Any = None
    cov: Any = None
    third_diagonal: Any = None
    fourth_diagonal: Any = None


OUTPUTS = ("mean", "cov", "marginals")
"""What a propagation with an output map returns of it, each level adding to the one before: κ_1, κ_2, the
marginal κ_3(i,i,i) and κ_4(i,i,i,i)."""


def check_outputs(outputs: str) -> None:
    if outputs not in OUTPUTS:
        raise ValueError(f"outputs must be one of {OUTPUTS}, got {outputs!r}")
