"""General cumulant propagation for any order K ≤ 4 and variant (docs/method.md §4–§6), unfactorised.

The state between layers is a *tower*: for each tracked degree d a harmonic piece (HTensor) standing for
the projection P_{≥r}(κ_d) with r = r_x(d) (docs/method.md §4.2). Each layer applies

1. the exact linear step to every piece: core ← W^{⊗s} core, metric ← W M Wᵀ, κ_1 ← W κ_1 + b;
2. the nonlinear step, slice by slice: power cumulants pK_p by connected Edgeworth diagram sums (§6.3–§6.5),
   pK → K by the vector-partition coefficients C(ρ) (§6.6), then projection back to harmonic pieces (§6.7).

Every diagram term is a broadcast product over the m = len(p) coordinates of a slice: one factor per block v
(the type-v slice of κ_|v|, laid on the coordinates in supp v) and one Wick coefficient w_i(k_j, p_j) per
coordinate.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch

from mechest.kprop.backends import layers_of
from mechest.kprop.executor.layers import layer_states
from mechest.kprop.plan import Plan, SliceTerm, compile_plan
from mechest.kprop.result import Propagation
from mechest.kprop.summed import capped_laplacian_term, split_summed, summed_cumulant
from mechest.math.tensors.diagonal_slices import symmetrize_slice, zero_repeated
from mechest.math.tensors.harmonic import (
    HTensor,
    linear_map,
    map_metric,
    project_slices,
    slice_of,
)
from mechest.math.wick import wick_table
from mechest.mlp import MLP

Tower = dict[int, HTensor]
Slices = dict[tuple[int, ...], torch.Tensor]


def input_tower(dim: int, plan: Plan, like: torch.Tensor) -> Tower:
    """x ~ N(0, I): κ_1 = 0 and κ_2 = I, projected onto the tracked pieces (κ_2 = Sym(1·I) when r_x(2) = 1)."""
    zeros = torch.zeros(dim, dtype=like.dtype, device=like.device)
    eye = torch.eye(dim, dtype=like.dtype, device=like.device)
    one = torch.ones((), dtype=like.dtype, device=like.device)
    second = HTensor(eye) if plan.radial[2] == 0 else HTensor(one, 1, None, n=dim)
    return {1: HTensor(zeros), 2: second}


def linear_step(tower: Tower, weight: torch.Tensor, bias: torch.Tensor | None, degrees: set[int]) -> Tower:
    """The exact image of every piece of degree in ``degrees`` under z = W a + b (one shared W M Wᵀ)."""
    needs_metric = any(piece.r > 0 for d, piece in tower.items() if d in degrees)
    metric = map_metric(weight) if needs_metric else None
    out = {degree: linear_map(piece, weight, metric) for degree, piece in tower.items() if degree in degrees}
    if bias is not None:
        out[1] = HTensor(out[1].core + bias)
    return out


def block_slices(tower: Tower, plan: Plan) -> dict[tuple[int, tuple[int, ...]], torch.Tensor]:
    """Every slice (degree, type q) of the input cumulants that some diagram block reads."""
    return {(degree, q): slice_of(tower[degree], q) for degree, q in plan.block_types if degree in tower}


def broadcast(tensor: torch.Tensor, axes: tuple[int, ...], m: int) -> torch.Tensor:
    """Lay ``tensor`` (one axis per entry of ``axes``, in that order) on axes ``axes`` of an m-axis product."""
    order = sorted(range(len(axes)), key=lambda position: axes[position])
    placed = tensor.permute(*order) if len(axes) > 1 else tensor
    shape = [1] * m
    for axis in sorted(axes):
        shape[axis] = tensor.shape[0]
    return placed.reshape(shape)


def term_factors(term: SliceTerm, slices: dict, wick: torch.Tensor, p: tuple[int, ...]) -> list[torch.Tensor] | None:
    """Broadcast factors whose product is c(ν)·|orbit|·Π_v κ_v · Π_j w(k_j, p_j) for one representative diagram.

    Cheap factors go first: everything on a single axis is multiplied into one vector per axis, each vector
    into the smallest multi-axis block that holds its axis; the blocks are left for the caller to multiply out
    (``accumulate``). None when a block's piece is not tracked.
    """
    if any((block.degree, block.slice_type) not in slices for block in term.blocks):
        return None
    m = len(p)
    vectors = [wick[k, power] for k, power in zip(term.derivatives, p)]
    vectors[0] = term.coefficient * vectors[0]
    wide = []
    for block in term.blocks:
        if len(block.axes) == 1:
            vectors[block.axes[0]] = vectors[block.axes[0]] * slices[(block.degree, block.slice_type)]
        else:
            wide.append([block.axes, broadcast(slices[(block.degree, block.slice_type)], block.axes, m)])
    if not wide:
        return [vectors[0]]
    wide.sort(key=lambda entry: len(entry[0]))
    for axis, vector in enumerate(vectors):
        holder = next(entry for entry in wide if axis in entry[0])
        holder[1] = holder[1] * broadcast(vector, (axis,), m)
    return [factor for _, factor in wide]


def accumulate(total: torch.Tensor, factors: list[torch.Tensor], coefficient: float = 1.0) -> None:
    """total += coefficient · Π factors, the last product fused into the update (no n^m temporary for it)."""
    head = factors[0]
    for factor in factors[1:-1]:
        head = head * factor
    if len(factors) == 1:
        total.add_(head, alpha=coefficient)
    else:
        total.addcmul_(head, factors[-1], value=coefficient)


def power_cumulants(plan: Plan, slices: dict, wick: torch.Tensor) -> Slices:
    """pK_p for every tracked slice type: connected diagram sums, symmetrised, zero on repeated indices."""
    n = wick.shape[-1]
    out: Slices = {}
    for p in plan.slice_types:
        total = wick.new_zeros((n,) * len(p))
        for term in plan.diagrams[p]:
            factors = term_factors(term, slices, wick, p)
            if factors is not None:
                accumulate(total, factors)
        if len(p) > 1:
            total = zero_repeated(symmetrize_slice(total, p))
        out[p] = total
    return out


def cumulants_from_power_cumulants(plan: Plan, power: Slices) -> Slices:
    """K_p = Σ_ρ C(ρ) Π_{u∈ρ} pK_u (docs/method.md §6.6), zero on repeated indices."""
    out: Slices = {}
    for p in plan.slice_types:
        m = len(p)
        total = power[p].new_zeros(power[p].shape)
        for conversion in plan.conversions[p]:
            accumulate(total, [broadcast(power[part.slice_type], part.axes, m) for part in conversion.parts],
                       conversion.coefficient)
        out[p] = zero_repeated(total) if m > 1 else total
    return out


def nonlinear_step(tower: Tower, activation: str, plan: Plan) -> Tower:
    """Approximate cumulants of a = φ(z) from the tower of z, as harmonic pieces with identity metric.

    From mechest.kprop.summed.MIN_WIDTH neurons on, slices that the projection reads only through a capped sum
    are evaluated as that sum (mechest.kprop.summed).
    """
    mean = tower[1].core
    variance = slice_of(tower[2], (2,))
    wick = wick_table(activation, mean, variance, plan.k_max, plan.p_max)
    dense_plan, summed = split_summed(plan, mean.numel())
    power = power_cumulants(dense_plan, block_slices(tower, dense_plan), wick)
    cumulant_slices = cumulants_from_power_cumulants(dense_plan, power)
    capped = [capped_laplacian_term(p, summed_cumulant(p, plan, tower, power, wick)) + (sum(p),) for p in summed]
    out: Tower = {}
    n = mean.numel()
    for degree, radial in plan.radial.items():
        of_degree = {p: s for p, s in cumulant_slices.items() if sum(p) == degree}
        extra = [(q, value) for q, value, d in capped if d == degree]
        out[degree] = project_slices(of_degree, n, degree, radial, extra)
    return out


def dense_towers(net: MLP, plan: Plan) -> Iterator[Tower]:
    """The tower after every hidden layer of ``net`` (the executor's layer loop, ``layer_states``), from x ~ N(0, I)."""
    degrees = set(plan.radial)

    def step(tower: Tower, weight: torch.Tensor, bias: torch.Tensor | None, activation: str) -> Tower:
        return nonlinear_step(linear_step(tower, weight, bias, degrees), activation, plan)

    return layer_states(layers_of(net), input_tower(net.input_dim, plan, net.weights[0]), step)


def propagate_general(net: MLP, order: int, variant: str, term_set: str = "full") -> Propagation:
    """Propagate x ~ N(0, I) through ``net`` keeping the pieces of (order, variant); unfactorised.

    ``term_set="factored"`` evaluates only the diagrams that factored propagation keeps (see compile_plan): the
    dense oracle for factored AUGMENT.
    """
    plan = compile_plan(order, variant, term_set)
    return collect_propagation(net, input_tower(net.input_dim, plan, net.weights[0]), dense_towers(net, plan))


def collect_propagation(net: MLP, first: Tower, hidden: Iterable[Tower]) -> Propagation:
    """The result from the towers after every hidden layer: their means and covariances, and the output's mean,
    covariance and (where the tower holds a dense κ_3 piece) third cumulant through the last linear map."""
    tower = first
    layer_means, layer_covs = [], []
    for tower in hidden:
        layer_means.append(tower[1].core)
        layer_covs.append(tower[2].to_dense())
    out = linear_step(tower, net.weights[-1], net.biases[-1], {d for d in (1, 2, 3) if d in tower})
    third = out[3].to_dense() if 3 in out else None
    return Propagation(out[1].core, out[2].to_dense(), layer_means, layer_covs, third)
