"""Factored cumulant propagation for K = 3 (design §6): κ_3 is carried in CP form, never as a dense n³ array.

Convention. The third cumulant is a ``FactoredTensor`` (A, B, C), three n×R matrices, standing for the *full*
symmetric tensor

    κ_3 = Sym(Σ_r A_r ⊗ B_r ⊗ C_r),

repeated-index entries included; there are no separate dense corrections in the state. Its repeated slices
(3) and (2,1) are read from the factors in O(n²R) (``factored_slice``); its all-distinct slice (1,1,1) is never
formed. Every other degree is an HTensor piece exactly as in the unfactorised engine (mechest.kprop.engine).

One layer:

1. linear step: A, B, C ← W A, W B, W C (3 · 2n²R FLOPs); the other pieces as in the engine.
2. nonlinear step, all-distinct slice p = (1,1,1): pK_p = K_p (pK → K is the identity there) is
   Sym(Σ_terms value) on distinct indices, and every diagram on it is a hypertree (SIMPLE), so each term is
   a CP tensor:
   - the carried block κ_3(1,1,1) with Wick vector w = w(1,1) on each leg: Sym((wA) ⊗ (wB) ⊗ (c·wC));
   - a path through a shared (centre) coordinate k, value c·Π_a v_a(i_a)·E(k, i)·E'(k, j): rank n, column k
     being (v ⊙ E[k, :], v' ⊙ E'[k, :], c·v_k(k)·e_k).
   This top part T is right on distinct indices and arbitrary on repeated ones.
3. every slice that the projections actually read, except (1,1,1), densely as in the engine (O(n²) memory):
   at K = 3 SIMPLE that is (1), (2), (1,1), (3), (2,1), (4), (2,2). The (3,1) and (2,1,1) slices of κ_4 are
   not computed: κ_4 is kept as its pure trace (r = 2), which reads only slices with two caps.
4. lower-slice correction: with g_q = K_q − slice_q(T) for q = (3), (2,1), the new κ_3 is
   T + Sym(Σ_a e_a ⊗ e_a ⊗ h_a), h_a = N(2,1)·g_(2,1)[a, :] + N(3)·g_(3)[a]·e_a (N(q) = number of set
   partitions of type q), because Sym(e_a ⊗ e_a ⊗ h)[a, a, b] = h_b / N(2,1) for b ≠ a and h_a / N(3) at
   (a, a, a), and it vanishes on distinct indices. So every slice of the new κ_3 is exact.

Each layer appends n columns per path orbit plus n correction columns: R_l = 2n(l + 1) after hidden layer l
at K = 3 SIMPLE, and the layer costs O(n³ l) instead of the O(n⁴) of the dense core.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass, replace

import torch

from mechest.combinatorics import IntPartition, set_partition_count_of_type
from mechest.errors import MechestError
from mechest.kprop.engine import (
    Slices,
    Tower,
    cumulants_from_power_cumulants,
    input_tower,
    linear_step,
    power_cumulants,
)
from mechest.kprop.plan import Factor, Plan, SliceTerm, compile_plan
from mechest.kprop.result import Propagation
from mechest.mlp import MLP
from mechest.tensors.diagonal_slices import LETTERS, symmetrize, zero_repeated
from mechest.tensors.harmonic import project_slices, slice_of
from mechest.wick import wick_table

ORDER = 3
TOP: IntPartition = (1,) * ORDER
VARIANTS = ("simple",)


@dataclass(frozen=True, eq=False)
class FactoredTensor:
    """The symmetric 3-tensor Sym(Σ_r A_r ⊗ B_r ⊗ C_r) held as its factors (A, B, C), each n×R."""

    factors: tuple[torch.Tensor, torch.Tensor, torch.Tensor]

    def __post_init__(self) -> None:
        shapes = {tuple(f.shape) for f in self.factors}
        if len(self.factors) != ORDER or len(shapes) != 1 or len(shapes.pop()) != 2:
            raise ValueError(f"need three n×R factors, got shapes {[tuple(f.shape) for f in self.factors]}")

    @property
    def n(self) -> int:
        """Width (rows of each factor)."""
        return self.factors[0].shape[0]

    @property
    def rank(self) -> int:
        """R, the number of columns."""
        return self.factors[0].shape[1]

    def to_dense(self) -> torch.Tensor:
        """The dense n³ tensor (for tests and small n only)."""
        return symmetrize(torch.einsum("ir,jr,kr->ijk", *self.factors))


@dataclass(frozen=True)
class FactoredState:
    """The propagated cumulants between layers: HTensor pieces of every degree but 3, and κ_3 factored."""

    tower: Tower
    third: FactoredTensor


def empty_factored(n: int, like: torch.Tensor) -> FactoredTensor:
    """The zero 3-tensor as rank 0."""
    empty = torch.zeros(n, 0, dtype=like.dtype, device=like.device)
    return FactoredTensor((empty, empty, empty))


def concatenate(parts: list[FactoredTensor]) -> FactoredTensor:
    """Sym(Σ) of several CP tensors: their columns side by side."""
    return FactoredTensor(tuple(torch.cat([part.factors[t] for part in parts], dim=1) for t in range(ORDER)))


def factored_linear_map(tensor: FactoredTensor, weight: torch.Tensor) -> FactoredTensor:
    """W^{⊗3} Sym(Σ A_r⊗B_r⊗C_r) = Sym(Σ (W A_r)⊗(W B_r)⊗(W C_r)): 3·2·n_out·n_in·R FLOPs."""
    return FactoredTensor(tuple(weight @ factor for factor in tensor.factors))


def factored_slice(tensor: FactoredTensor, p: IntPartition) -> torch.Tensor:
    """The type-p diagonal slice (plain values, zero on repeats) of Sym(Σ A⊗B⊗C) for p = (3) or (2,1).

    Sym averages over the 3! assignments of the factors to the positions. On the slice the positions of block b
    share index i_b, so an assignment matters only through which factors land in each block; these classes are
    equally large, so the slice is their average, one einsum over the rank each, O(n^{len p}·R).
    """
    if sum(p) != ORDER or len(p) == ORDER:
        raise ValueError(f"only the repeated slices (3) and (2,1) are read from factors, got {p}")
    blocks = LETTERS[: len(p)]
    positions = "".join(letter * part for letter, part in zip(blocks, p, strict=True))
    subscripts = ",".join(f"{letter}r" for letter in positions) + f"->{blocks}"
    classes = {_blocks_of(ordering, p): ordering for ordering in itertools.permutations(range(ORDER))}
    total = sum(torch.einsum(subscripts, *(tensor.factors[t] for t in ordering)) for ordering in classes.values())
    return zero_repeated(total / len(classes))


def _blocks_of(ordering: tuple[int, ...], p: IntPartition) -> tuple[frozenset[int], ...]:
    """The set of factors that an assignment of factors to positions puts in each block of p."""
    ends = list(itertools.accumulate(p))
    return tuple(frozenset(ordering[end - part:end]) for part, end in zip(p, ends, strict=True))


def lower_slice_factors(cubic: torch.Tensor, double: torch.Tensor) -> FactoredTensor:
    """Rank n: the tensor that is g_(3) on slice (3), g_(2,1) on slice (2,1) and 0 on distinct indices.

    Sym(e_a ⊗ e_a ⊗ h_a) with h_a = N(2,1)·g_(2,1)[a, :] + N(3)·g_(3)[a]·e_a, N(q) the number of set partitions
    of type q (``double`` must vanish on its diagonal).
    """
    identity = torch.eye(cubic.shape[0], dtype=cubic.dtype, device=cubic.device)
    third = set_partition_count_of_type((2, 1)) * double.T + set_partition_count_of_type((3,)) * torch.diag(cubic)
    return FactoredTensor((identity, identity, third))


def with_exact_lower_slices(top: FactoredTensor, cumulants: Slices) -> FactoredTensor:
    """``top`` (right on distinct indices) plus the rank-n correction that makes its (3) and (2,1) slices exact."""
    cubic = cumulants[(3,)] - factored_slice(top, (3,))
    double = cumulants[(2, 1)] - factored_slice(top, (2, 1))
    return concatenate([top, lower_slice_factors(cubic, double)])


# ---------------------------------------------------------------------------------------------
# Which slices are computed densely


def reads_at_radial_index(p: IntPartition, r: int) -> bool:
    """Whether slice p of a degree-|p| tensor enters its projection P_{≥r}.

    P_{≥r} reads L^j T for j ≥ r (design §5.2), and on a slice L^j needs j caps inside blocks, at most
    Σ_b ⌊p_b/2⌋ of them; so p is read iff Σ_b ⌊p_b/2⌋ ≥ r.
    """
    return sum(part // 2 for part in p) >= r


def dense_slice_types(plan: Plan) -> tuple[IntPartition, ...]:
    """The tracked slices computed densely: those some projection reads, except TOP, closed under pK → K.

    Raises NotImplementedError if the closure needs TOP densely (e.g. AUGMENT's (2,1,1) slice at K = 3) or if a
    dense slice reads κ_3's all-distinct block.
    """
    wanted = {p for p in plan.slice_types if reads_at_radial_index(p, plan.radial[sum(p)]) and p != TOP}
    frontier = list(wanted)
    while frontier:
        p = frontier.pop()
        for conversion in plan.conversions[p]:
            for part in conversion.parts:
                if part.slice_type not in wanted:
                    wanted.add(part.slice_type)
                    frontier.append(part.slice_type)
    reads_top = [p for p in wanted for term in plan.diagrams[p] for block in term.blocks if block.slice_type == TOP]
    if TOP in wanted or reads_top:
        raise NotImplementedError(f"factored {plan.variant} K={plan.order} needs the all-distinct slice densely")
    return tuple(p for p in plan.slice_types if p in wanted)


def check_top_is_power_cumulant(plan: Plan) -> None:
    """pK → K is the identity on the all-distinct slice (design §4.4); the factored step relies on it."""
    conversions = plan.conversions[TOP]
    if len(conversions) != 1 or conversions[0].coefficient != 1 or len(conversions[0].parts) != 1:
        raise AssertionError(f"pK → K on {TOP} is not the identity: {conversions}")


# ---------------------------------------------------------------------------------------------
# The all-distinct slice in factored form


def carried_term_factors(term: SliceTerm, third: FactoredTensor, wick: torch.Tensor) -> FactoredTensor:
    """c·(w⊗w⊗w) ⊙ κ_3 on distinct indices = Sym((wA) ⊗ (wB) ⊗ (c·wC)), w = w(k, 1) equal on every leg."""
    ks = set(term.derivatives)
    if len(ks) != 1:
        raise NotImplementedError(f"the carried κ_3 block needs equal Wick orders on its legs, got {term.derivatives}")
    w = wick[ks.pop(), TOP[0]][:, None]
    first, second, last = third.factors
    return FactoredTensor((w * first, w * second, term.coefficient * w * last))


def oriented(block: Factor, slices: dict, centre: int) -> torch.Tensor:
    """A two-axis block as the matrix E[k, x] with k the index on ``centre``."""
    matrix = slices[(block.degree, block.slice_type)]
    return matrix if block.axes[0] == centre else matrix.T


def path_term_factors(term: SliceTerm, slices: dict, wick: torch.Tensor) -> FactoredTensor:
    """A hypertree term made of two-axis blocks through one centre axis c, as rank n CP factors.

    value[i] = coef · Π_a v_a(i_a) · E(i_c, i_a) · E'(i_c, i_b), with v_a = w(k_a, 1) and E, E' the products of
    the parallel blocks on the edges {c, a} and {c, b}; column k is
    (v_a ⊙ E[k, :], v_b ⊙ E'[k, :], coef·v_c(k)·e_k).
    """
    edges: dict[frozenset[int], list[Factor]] = {}
    for block in term.blocks:
        edges.setdefault(frozenset(block.axes), []).append(block)
    shared = set.intersection(*(set(edge) for edge in edges))
    if len(edges) != 2 or len(shared) != 1:
        raise NotImplementedError(f"not a two-edge path on {TOP}: {term.blocks}")
    centre = shared.pop()
    vectors = [wick[k, power] for k, power in zip(term.derivatives, TOP, strict=True)]
    legs = []
    for edge, blocks in edges.items():
        (other,) = edge - {centre}
        matrix = torch.stack([oriented(block, slices, centre) for block in blocks]).prod(dim=0)
        legs.append(vectors[other][:, None] * matrix.T)
    return FactoredTensor((legs[0], legs[1], torch.diag(term.coefficient * vectors[centre])))


def top_slice_factors(plan: Plan, slices: dict, third: FactoredTensor, wick: torch.Tensor) -> FactoredTensor:
    """pK_(1,1,1) = K_(1,1,1) on distinct indices, as CP factors: the carried κ_3 block plus one path per orbit."""
    parts = []
    for term in plan.diagrams[TOP]:
        if len(term.blocks) == 1 and term.blocks[0].slice_type == TOP:
            parts.append(carried_term_factors(term, third, wick))
        else:
            parts.append(path_term_factors(term, slices, wick))
    return concatenate(parts)


# ---------------------------------------------------------------------------------------------
# Steps and propagation


def read_block_slices(state: FactoredState, plan: Plan, types: tuple[IntPartition, ...]) -> dict:
    """Every (degree, q) slice read by the diagrams of ``types`` and of TOP, except κ_3's all-distinct one."""
    needed = {(block.degree, block.slice_type) for p in (*types, TOP) for term in plan.diagrams[p]
              for block in term.blocks if (block.degree, block.slice_type) != (ORDER, TOP)}
    return {
        (degree, q): factored_slice(state.third, q) if degree == ORDER else slice_of(state.tower[degree], q)
        for degree, q in needed
        if degree == ORDER or degree in state.tower
    }


def factored_linear_step(state: FactoredState, weight: torch.Tensor, bias: torch.Tensor | None) -> FactoredState:
    """The exact image under z = W a + b: the engine's linear step on the pieces, W on every factor of κ_3."""
    return FactoredState(linear_step(state.tower, weight, bias, set(state.tower)),
                         factored_linear_map(state.third, weight))


def factored_nonlinear_step(state: FactoredState, activation: str, plan: Plan) -> FactoredState:
    """Cumulants of a = φ(z): dense slices as in the engine, κ_3 as top factors plus the lower-slice correction."""
    mean = state.tower[1].core
    wick = wick_table(activation, mean, slice_of(state.tower[2], (2,)), plan.k_max, plan.p_max)
    dense_plan = replace(plan, slice_types=dense_slice_types(plan))
    slices = read_block_slices(state, plan, dense_plan.slice_types)
    cumulants = cumulants_from_power_cumulants(dense_plan, power_cumulants(dense_plan, slices, wick))
    third = with_exact_lower_slices(top_slice_factors(plan, slices, state.third, wick), cumulants)
    tower = {
        degree: project_slices({p: s for p, s in cumulants.items() if sum(p) == degree}, mean.numel(), degree, r)
        for degree, r in plan.radial.items()
        if degree != ORDER
    }
    return FactoredState(tower, third)


def factored_plan(order: int, variant: str) -> Plan:
    """The compiled plan, after checking that the factored path supports (order, variant)."""
    if order != ORDER or variant not in VARIANTS:
        raise MechestError(f"factored propagation supports order {ORDER} in {VARIANTS}, got {order} {variant!r}")
    plan = compile_plan(order, variant)
    check_top_is_power_cumulant(plan)
    return plan


def hidden_states(net: MLP, plan: Plan) -> Iterator[FactoredState]:
    """The factored state after every hidden activation a_l, l = 0..depth−1, starting from x ~ N(0, I)."""
    tower = input_tower(net.input_dim, plan, net.weights[0])
    state = FactoredState(tower, empty_factored(net.input_dim, net.weights[0]))
    for layer in range(net.depth):
        state = factored_linear_step(state, net.weights[layer], net.biases[layer])
        state = factored_nonlinear_step(state, net.activations[layer], plan)
        yield state


def propagate_factored(net: MLP, order: int, variant: str) -> Propagation:
    """Propagate x ~ N(0, I) through ``net`` at (order, variant) with κ_3 factored; same result as the engine.

    ``third`` is None: the output's third cumulant exists only in factored form (densifying it would cost
    O(n³R)).
    """
    plan = factored_plan(order, variant)
    tower = input_tower(net.input_dim, plan, net.weights[0])
    layer_means, layer_covs = [], []
    for state in hidden_states(net, plan):
        tower = state.tower
        layer_means.append(tower[1].core)
        layer_covs.append(tower[2].to_dense())
    out = linear_step(tower, net.weights[-1], net.biases[-1], {1, 2})
    return Propagation(out[1].core, out[2].to_dense(), layer_means, layer_covs, None)
