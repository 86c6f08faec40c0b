"""Propagation by the exported plan (``planned``): K = 2 augment and factored K = 3 simple, core and closure,
the last hidden layer as its mean alone where only that is read (``last_mean``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .arrays import off_diagonal, release_buffers
from .conversions import dense_cumulants
from .fourth import FourthCore, core_next, core_slices, core_spec, mapped_core_diagonal
from .layers import Backend, Cumulants, Layers, check_outputs, layer_states
from .linear import linear_mean, linear_variance, symmetric_product
from .nonlinearity import next_third
from .options import PlanOptions
from .pieces import mapped_cores, piece_slices, projected_cores
from .plans import check_spec
from .pruning import kept_third, kept_units
from .source_compression import compressed
from .sources import mapped_third, third_cubic, third_slices
from .wick import activation_wick


@dataclass(frozen=True)
class PlannedState:
    """What ``planned`` carries from one hidden layer to the next: how many layers are done, κ_1 and κ_2 (None:
    the input's 0 and I), the κ_3 sources (``next_third``'s form; None: not carried), the radial pieces' cores
    and κ_4's matrix core G (``FourthCore``; None: not kept), and the mask of the units κ_2 and κ_3 are
    restricted to (``pruning``; None: every unit)."""

    layers_done: int = 0
    mean: Any = None
    cov: Any = None
    third: tuple | None = None
    cores: dict = field(default_factory=dict)
    fourth: Any = None
    kept: Any = None


def live_columns(weight: Any, kept: Any | None) -> Any:
    """The columns of W that act on the units carried (``PlannedState.kept``)."""
    return weight if kept is None else weight[:, kept]


def planned(backend: Backend, layers: Layers, spec: dict, window: int | None = None, outputs: str = "cov",
            core: FourthCore | None = None, options: PlanOptions = PlanOptions()) -> Cumulants:
    """Propagation by the exported plan: K = 3 simple with κ_3 factored (equals mechest's factored engine) or
    K = 2 augment (equals mechest's unfactorised engine at K = 2 augment).

    At K = 3, κ_3 is a list of sources, one per layer: Σ_s Sym(Σ_k P_k⊗P_k⊗v_k T_k + T_k⊗T_k⊗Q_k), the factors T,
    P, Q mapped through every later layer (T starts as the identity; ``third_slices``). The radial pieces (κ_4 at
    both orders, κ_3 at K = 2 augment) are carried as their cores, with metric W Wᵀ. Without an output map the
    last hidden layer is computed as its mean alone (``last_mean``). ``window`` = m < L carries κ_3 and the pieces
    only through the last m hidden layers (dropped after every earlier layer, whose means and covariances still
    get the dense terms); at K = 3 this approximation cuts the cost from Θ(n³L²) to Θ(n³(L + m²)). None carries
    them everywhere. ``outputs`` (OUTPUTS) says what the output map must give: its mean alone (then the last hidden
    layer is a ``last_mean`` too), also its covariance, or also its marginal κ_3 and κ_4, which need κ_3 and the
    pieces carried through the last hidden layer and every source mapped once more (at 256×4, K = 3: 1.1e9, 1.5e9
    and 1.9e9 FLOPs). ``core`` (K = 3 only; ``spec`` from mechest.kprop.spec.fourth_core_spec) keeps κ_4 with an
    n×n core (``FourthCore``, docs/method.md §7.8); None: the reference scheme. ``options`` (``PlanOptions``, each
    described there): how cheaply — compressed κ_3 sources, Strassen products, thin correction legs, dead units
    pruned; the default runs exactly and keeps every unit. A thin correction is refused below K = 3, pruning on a
    net with other activations than ReLU.
    """
    compression, strassen, correction, prune = options.compression, options.strassen, options.correction, options.prune
    if correction is not None and spec.get("order") != 3:
        raise ValueError("the thin correction is an option of the K = 3 plan")
    if prune is not None and any(activation != "relu" for activation in layers.activations):
        raise ValueError("dead-unit pruning is derived for ReLU units (a unit far below zero passes nothing on)")
    if core is not None:
        if spec.get("order") != 3:
            raise ValueError("the matrix core of κ_4 extends the K = 3 plan")
        spec = core_spec(spec, core)
    check_spec(spec)
    check_outputs(outputs)
    xp = backend.xp
    hidden = layers.hidden()
    mean_only_last = bool(hidden) and not (layers.output_map and outputs != "mean")
    full_steps = len(hidden) - mean_only_last
    first_carried = 0 if window is None else max(len(hidden) - window, 0)

    def step(state: PlannedState, full_weight: Any, bias: Any | None, activation: str) -> PlannedState:
        layer, cores = state.layers_done, state.cores
        levels = backend.strassen_levels(strassen, layer, len(hidden))
        pre_mean = linear_mean(xp, full_weight, bias, state.mean)
        weight = live_columns(full_weight, state.kept)  # the metric W Wᵀ of the pieces and κ_4 keeps every unit
        gram = (symmetric_product(full_weight, None, xp, levels, backend.sandwich)
                if state.cov is None or cores or state.fourth is not None else None)
        pre_cov = gram if state.cov is None else symmetric_product(weight, state.cov, xp, levels, backend.sandwich)
        slices = {(2, (1, 1)): off_diagonal(xp, pre_cov)}
        groups, feeds = None, None
        if state.third is not None:
            groups, feeds = mapped_third(xp, weight, state.third, levels)
            groups, feeds = compressed(xp, groups, compression, feeds)
            cubic, double = third_slices(xp, groups, levels, feeds)
            slices[(3, (3,))] = cubic
            slices[(3, (2, 1))] = off_diagonal(xp, double)
        if cores:
            slices.update(piece_slices(xp, spec, mapped_cores(full_weight, cores), gram))
        mapped = None
        if state.fourth is not None:  # κ_4 from its matrix core replaces its pure-trace slices
            mapped, fourth = core_slices(xp, full_weight, state.fourth, gram, pre_cov, levels, backend.sandwich)
            slices.update(fourth)
        wick = activation_wick(backend, activation, pre_mean, xp.diag(pre_cov), spec["k_max"], spec["p_max"])
        cumulants = dense_cumulants(xp, spec, slices, wick)
        mean, cov = cumulants[(1,)], xp.diag(cumulants[(2,)]) + cumulants[(1, 1)]
        keep = None if prune is None else kept_units(xp, pre_mean, xp.diag(pre_cov), prune)
        if keep is not None:
            cov = cov[keep][:, keep]
        if layer + 1 < first_carried or (layer + 1 == len(hidden) and outputs != "marginals"):
            return PlannedState(layer + 1, mean, cov, kept=keep)
        feed, slice_rank = None, 0
        if core is not None and (core.feed or core.slice_feed):
            multiple = state.fourth.multiple if core.feed and state.fourth is not None else None
            feed, slice_rank = (multiple, None if multiple is None else xp.diag(gram)), core.slice_feed
        third = (next_third(xp, spec, slices, groups, wick, cumulants, correction, feeds, feed, slice_rank)
                 if spec["order"] == 3 else None)
        fourth = None if core is None else core_next(xp, spec, core, slices, wick, cumulants, mapped, gram,
                                                     weight.shape[0])
        cores = projected_cores(spec, cumulants, weight.shape[0], covered=(4,) if core is not None else ())
        if keep is not None and third is not None:
            third = kept_third(xp, third, keep)
        return PlannedState(layer + 1, mean, cov, third, cores, fourth, keep)

    try:
        means, covs, state = [], [], PlannedState()
        for state in layer_states(layers.prefix(full_steps), state, step):  # one state alive at a time (memory)
            means.append(state.mean)
            covs.append(state.cov if state.kept is None else None)  # a pruned layer's covariance covers the kept units
        mean, cov, third, cores, fourth = state.mean, state.cov, state.third, state.cores, state.fourth
        if mean_only_last:
            weight, bias, activation = hidden[-1]
            levels = backend.strassen_levels(strassen, len(hidden) - 1, len(hidden))
            mean = last_mean(backend, spec, weight, bias, activation, mean, cov, cores, third, levels, fourth,
                             state.kept)
            means.append(mean)
            covs.append(None)
        result = Cumulants(means, covs)
        if layers.output_map:
            weight = layers.weights[-1]
            result.mean = linear_mean(xp, weight, layers.biases[-1], mean)
            if outputs != "mean":  # then the state is the last hidden layer's
                result.cov = symmetric_product(live_columns(weight, state.kept), cov, sandwich=backend.sandwich)
            if outputs == "marginals":
                slices = marginal_slices(xp, spec, weight, cores, third, fourth=fourth, pre_var=xp.diag(result.cov),
                                         kept=state.kept)
                result.third_diagonal, result.fourth_diagonal = slices.get((3, (3,))), slices.get((4, (4,)))
        return result
    finally:
        release_buffers()  # Strassen's scratch arrays live for one propagation


def marginal_slices(xp: Any, spec: dict, weight: Any, cores: dict, third: tuple | None, levels: int = 0,
                    fourth: Any | None = None, pre_var: Any | None = None, kept: Any | None = None) -> dict:
    """The one-coordinate slices (degree, (degree,)) of κ_3 and of the radial pieces after z = W a + b (a bias
    moves only κ_1): they read only the diagonal of the metric W Wᵀ, and κ_3's sources only through slice (3).
    With κ_4's matrix core G (``fourth``, ``FourthCore``) its (4) slice is diag(W G Wᵀ)·diag(W Wᵀ) (2n³; O(n²)
    for a ``ShapedCore``, which reads ``pre_var`` = diag(W Σ Wᵀ)). ``kept``: the units κ_3 is restricted to
    (``PlannedState.kept``; the metric and G keep every unit)."""
    slices = {}
    metric_diagonal = linear_variance(xp, weight, None)  # a one-coordinate slice reads only M_aa
    if cores:
        slices.update(piece_slices(xp, spec, mapped_cores(weight, cores), xp.diag(metric_diagonal),
                                   one_coordinate=True))
    live = live_columns(weight, kept)
    if third is not None:
        cubic = third_cubic(xp, *mapped_third(xp, live, third, levels))
        slices[(3, (3,))] = cubic if (3, (3,)) not in slices else slices[(3, (3,))] + cubic
    if fourth is not None:
        slices[(4, (4,))] = mapped_core_diagonal(xp, weight, fourth, pre_var, levels) * metric_diagonal
    return slices


def last_mean(backend: Backend, spec: dict, weight: Any, bias: Any | None, activation: str, mean: Any | None,
              cov: Any | None, cores: dict, third: tuple | None, levels: int = 0, fourth: Any | None = None,
              kept: Any | None = None) -> Any:
    """E[a_{L−1}] alone: pK_(1) reads only the diagonals of κ_2, κ_3 and κ_4, so the last layer skips the
    (2,1) slice of κ_3 and the off-diagonals of W Σ Wᵀ and W Wᵀ (same value as the full step); ``fourth``: κ_4's
    matrix core (``FourthCore``; 2n³ for the diagonal of W G Wᵀ, O(n²) for a ``ShapedCore``); ``kept``: the
    units the carried cumulants are restricted to (``PlannedState.kept``)."""
    xp = backend.xp
    pre_mean = linear_mean(xp, weight, bias, mean)
    pre_var = linear_variance(xp, live_columns(weight, kept), cov, levels)
    slices = marginal_slices(xp, spec, weight, cores, third, levels, fourth, pre_var, kept)
    wick = activation_wick(backend, activation, pre_mean, pre_var, spec["k_max"], spec["p_max"])
    return dense_cumulants(xp, spec, slices, wick, only=(1,))[(1,)]
