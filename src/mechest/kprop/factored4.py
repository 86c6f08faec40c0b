"""Factored cumulant propagation for K = 4 SIMPLE (docs/method.md §7.5): κ_4 in pair form, never as a dense n⁴ array.

Convention. The fourth cumulant is a ``PairFactoredTensor`` (A, B), two R×n×n stacks of symmetric matrices,
standing for the *full* symmetric tensor

    κ_4 = Sym(Σ_r A_r ⊗ B_r),

repeated-index entries included. Its repeated slices (4), (3,1), (2,2), (2,1,1) are read from the factors in
O(n³R) (``pair_slice``); its all-distinct slice is never formed. κ_1, κ_2, κ_3 are dense pieces (r = 0).

One layer:

1. linear step: A_r, B_r ← W A_r Wᵀ, W B_r Wᵀ (O(n³R)); the other pieces as in the engine.
2. nonlinear step, all-distinct slice: every SIMPLE diagram on it is a hypertree; fixing the index k of one
   vertex c (the "centre") splits it into a function of one more vertex x and a function of the other two
   y, z, so it is Sym(Σ_k A_k ⊗ B_k) with A_k = sym(e_k ⊗ f_k) on (c, x) and B_k on (y, z): rank n per term.
   The carried κ_4 block takes the Wick vector w(1,1) on every leg: A_r, B_r ← (w wᵀ) ⊙ A_r, (w wᵀ) ⊙ B_r.
3. every other slice densely as in the engine (O(n³) memory).
4. lower-slice correction: with g_q = K_q − slice_q(top) for the repeated slices q, add Sym(Σ_a e_a e_aᵀ ⊗ H_a)
   with H_a built from g (``lower_slice_pairs``), which is zero on distinct indices. So every slice is exact.

Rank grows by n per hypertree orbit and n for the correction every layer: R_l = 4n·l at K = 4 SIMPLE.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, replace

import torch

from mechest.errors import MechestError
from mechest.kprop.backends import layers_of
from mechest.kprop.engine import (
    Tower,
    collect_propagation,
    cumulants_from_power_cumulants,
    input_tower,
    linear_step,
    power_cumulants,
)
from mechest.kprop.executor.layers import layer_states
from mechest.kprop.plan import Factor, Plan, SliceTerm, compile_plan
from mechest.kprop.result import Propagation
from mechest.math.combinatorics import IntPartition
from mechest.math.tensors.diagonal_slices import LETTERS, symmetrize, zero_repeated
from mechest.math.tensors.harmonic import project_slices, slice_of
from mechest.math.wick import wick_table
from mechest.mlp import MLP

ORDER = 4
TOP: IntPartition = (1,) * ORDER
PAIR_PLACEMENTS = math.comb(ORDER, 2)  # positions of the A factor among the four


@dataclass(frozen=True, eq=False)
class PairFactoredTensor:
    """The symmetric 4-tensor Sym(Σ_r A_r ⊗ B_r), A and B of shape R×n×n, symmetric in their last two axes."""

    first: torch.Tensor
    second: torch.Tensor

    def __post_init__(self) -> None:
        if self.first.shape != self.second.shape or self.first.ndim != 3 or self.first.shape[1] != self.first.shape[2]:
            raise ValueError(f"need two R×n×n stacks, got {tuple(self.first.shape)} and {tuple(self.second.shape)}")

    @property
    def n(self) -> int:
        """Width."""
        return self.first.shape[1]

    @property
    def rank(self) -> int:
        """R, the number of pairs."""
        return self.first.shape[0]

    def to_dense(self) -> torch.Tensor:
        """The dense n⁴ tensor (for tests and small n only)."""
        return symmetrize(torch.einsum("rab,rcd->abcd", self.first, self.second))


def empty_pairs(n: int, like: torch.Tensor) -> PairFactoredTensor:
    """The zero 4-tensor as rank 0."""
    empty = torch.zeros(0, n, n, dtype=like.dtype, device=like.device)
    return PairFactoredTensor(empty, empty)


def concatenate_pairs(parts: list[PairFactoredTensor]) -> PairFactoredTensor:
    """Sym(Σ) of several pair-factored tensors: their pairs stacked."""
    return PairFactoredTensor(torch.cat([part.first for part in parts]), torch.cat([part.second for part in parts]))


def symmetric_pairs(first: torch.Tensor, second: torch.Tensor) -> PairFactoredTensor:
    """Pairs from arbitrary R×n×n stacks, each matrix replaced by its symmetric part (Sym does not see the rest)."""
    return PairFactoredTensor((first + first.transpose(1, 2)) / 2, (second + second.transpose(1, 2)) / 2)


def pair_linear_map(tensor: PairFactoredTensor, weight: torch.Tensor) -> PairFactoredTensor:
    """W^{⊗4} Sym(Σ A_r ⊗ B_r) = Sym(Σ (W A_r Wᵀ) ⊗ (W B_r Wᵀ)): 8·n³·R FLOPs for square W."""
    return PairFactoredTensor(weight @ tensor.first @ weight.T, weight @ tensor.second @ weight.T)


def pair_slice(tensor: PairFactoredTensor, p: IntPartition) -> torch.Tensor:
    """The type-p diagonal slice (plain values, zero on repeats) of Sym(Σ A_r ⊗ B_r).

    Sym averages over which 2 of the 4 positions A occupies (B takes the other two; both are symmetric). On the
    slice, position t carries the index of its block, so each choice is one einsum over r; choices that give the
    same subscripts are merged.
    """
    if sum(p) != ORDER:
        raise ValueError(f"need a partition of {ORDER}, got {p}")
    blocks = LETTERS[: len(p)]
    letters = "".join(letter * part for letter, part in zip(blocks, p, strict=True))
    classes: Counter[tuple[str, str]] = Counter()
    for chosen in itertools.combinations(range(ORDER), 2):
        rest = [t for t in range(ORDER) if t not in chosen]
        classes[("".join(sorted(letters[t] for t in chosen)), "".join(sorted(letters[t] for t in rest)))] += 1
    total = sum(count * torch.einsum(f"z{a},z{b}->{blocks}", tensor.first, tensor.second)
                for (a, b), count in classes.items())
    return zero_repeated(total / PAIR_PLACEMENTS)


# ---------------------------------------------------------------------------------------------
# Lower-slice correction


def correction_weight(q: IntPartition) -> float:
    """X_q with Sym(e_a e_aᵀ ⊗ H_a) equal to g_q on slice q when H_a holds X_q·g_q.

    e_a e_aᵀ must sit on two positions of a block with index a: Σ_β C(q_β, 2) of the C(4, 2) placements, each
    reading H at the other two positions; so X_q = C(4, 2) / Σ_β C(q_β, 2).
    """
    return PAIR_PLACEMENTS / sum(math.comb(part, 2) for part in q)


def lower_slice_pairs(slices: dict[IntPartition, torch.Tensor]) -> PairFactoredTensor:
    """Rank n: the tensor that equals g_q on the repeated slices q = (4), (3,1), (2,2), (2,1,1), 0 on distinct ones.

    Column a is e_a e_aᵀ ⊗ H_a with H_a[b, c] = X·g_(2,1,1)[a, b, c], H_a[b, b] = X·g_(2,2)[a, b],
    H_a[a, b] = H_a[b, a] = X·g_(3,1)[a, b], H_a[a, a] = X·g_(4)[a] (X = ``correction_weight`` of each type).
    """
    n = slices[(4,)].shape[0]
    rows = torch.arange(n, device=slices[(4,)].device)
    second = correction_weight((2, 1, 1)) * slices[(2, 1, 1)]
    second = second + torch.diag_embed(correction_weight((2, 2)) * slices[(2, 2)])
    triple = correction_weight((3, 1)) * slices[(3, 1)]
    second[rows, rows, :] += triple
    second[rows, :, rows] += triple
    second[rows, rows, rows] += correction_weight((4,)) * slices[(4,)]
    first = torch.zeros_like(second)
    first[rows, rows, rows] = 1.0
    return PairFactoredTensor(first, second)


def with_exact_lower_slices(top: PairFactoredTensor, cumulants: dict) -> PairFactoredTensor:
    """``top`` (right on distinct indices) plus the rank-n correction that makes its repeated slices exact."""
    gaps = {q: cumulants[q] - pair_slice(top, q) for q in ((4,), (3, 1), (2, 2), (2, 1, 1))}
    return concatenate_pairs([top, lower_slice_pairs(gaps)])


# ---------------------------------------------------------------------------------------------
# The all-distinct slice in pair form


def carried_pairs(term: SliceTerm, fourth: PairFactoredTensor, wick: torch.Tensor) -> PairFactoredTensor:
    """c·(w⊗w⊗w⊗w) ⊙ κ_4 = Sym(Σ (w wᵀ ⊙ A_r) ⊗ (c·w wᵀ ⊙ B_r)), w = w(k, 1) equal on every leg."""
    ks = set(term.derivatives)
    if len(ks) != 1:
        raise NotImplementedError(f"the carried κ_4 block needs equal Wick orders on its legs, got {term.derivatives}")
    w = wick[ks.pop(), 1]
    outer = w[:, None] * w[None, :]
    return PairFactoredTensor(outer * fourth.first, term.coefficient * outer * fourth.second)


def split_through_centre(term: SliceTerm) -> tuple[int, int, tuple[int, int]]:
    """(c, x, (y, z)): a centre vertex c and a vertex x such that, with i_c fixed, every block lies on {x} or {y, z}."""
    for centre, partner in itertools.permutations(range(ORDER), 2):
        others = tuple(v for v in range(ORDER) if v not in (centre, partner))
        if all(set(block.axes) - {centre} <= {partner} or set(block.axes) - {centre} <= set(others)
               for block in term.blocks):
            return centre, partner, others
    raise NotImplementedError(f"no centre splits the term {term.blocks}")


def laid(block: Factor, slices: dict, order: tuple[int, ...]) -> torch.Tensor:
    """The block's slice with its axes permuted to follow ``order`` (a sub-tuple of the term's vertices)."""
    value = slices[(block.degree, block.slice_type)]
    return value.permute([block.axes.index(v) for v in order]) if value.ndim > 1 else value


def hypertree_pairs(term: SliceTerm, slices: dict, wick: torch.Tensor) -> PairFactoredTensor:
    """A hypertree term on the all-distinct slice as rank-n pairs through its centre c.

    value = coef·Π_j v_j(i_j)·Π_blocks = Σ_k δ(i_c, k)·f_k(i_x)·B_k(i_y, i_z): column k has A_k = sym(e_k ⊗ f_k)
    with f_k(x) = coef·v_c(k) v_x(x) Π_{blocks on {c, x}} E(k, x), and B_k(y, z) = v_y(y) v_z(z) Π_{other blocks}
    (blocks on {c, y, z} read with i_c = k).
    """
    centre, partner, (y, z) = split_through_centre(term)
    vectors = [wick[k, 1] for k in term.derivatives]
    n = vectors[0].shape[0]
    f = term.coefficient * vectors[centre][:, None] * vectors[partner][None, :]  # f[k, x]
    b = vectors[y][None, :, None] * vectors[z][None, None, :]  # B[k, y, z]
    for block in term.blocks:
        on = set(block.axes)
        if on <= {centre, partner}:
            order = tuple(v for v in (centre, partner) if v in on)
            value = laid(block, slices, order)
            f = f * (value if len(order) == 2 else (value[:, None] if order == (centre,) else value[None, :]))
        else:
            order = tuple(v for v in (centre, y, z) if v in on)
            value = laid(block, slices, order)
            shape = [n if v in on else 1 for v in (centre, y, z)]
            b = b * value.reshape(shape)
    rows = torch.arange(n, device=f.device)
    first = torch.zeros(n, n, n, dtype=f.dtype, device=f.device)
    first[rows, rows, :] = f  # A_k = e_k ⊗ f_k, symmetrised below
    return symmetric_pairs(first, b.expand(n, n, n).clone())


def top_slice_pairs(plan: Plan, slices: dict, fourth: PairFactoredTensor, wick: torch.Tensor) -> PairFactoredTensor:
    """pK_TOP = K_TOP on distinct indices in pair form: the carried κ_4 block plus one hypertree per orbit."""
    parts = []
    for term in plan.diagrams[TOP]:
        if any(block.degree != ORDER and (block.degree, block.slice_type) not in slices for block in term.blocks):
            continue  # a cumulant not tracked yet (the input has only κ_1 and κ_2)
        if any(block.degree == ORDER for block in term.blocks):
            parts.append(carried_pairs(term, fourth, wick))
        else:
            parts.append(hypertree_pairs(term, slices, wick))
    return concatenate_pairs(parts)


# ---------------------------------------------------------------------------------------------
# Steps and propagation


@dataclass(frozen=True)
class PairFactoredState:
    """The propagated cumulants between layers: dense pieces of degree < 4 and κ_4 in pair form."""

    tower: Tower
    fourth: PairFactoredTensor


def read_block_slices(state: PairFactoredState, plan: Plan) -> dict:
    """Every (degree, q) slice that some diagram reads, except κ_4's all-distinct one."""
    needed = {(block.degree, block.slice_type) for terms in plan.diagrams.values() for term in terms
              for block in term.blocks if (block.degree, block.slice_type) != (ORDER, TOP)}
    return {
        (degree, q): pair_slice(state.fourth, q) if degree == ORDER else slice_of(state.tower[degree], q)
        for degree, q in needed
        if degree == ORDER or degree in state.tower
    }


def factored_nonlinear_step(state: PairFactoredState, activation: str, plan: Plan) -> PairFactoredState:
    """Cumulants of a = φ(z): dense slices as in the engine, κ_4 as top pairs plus the lower-slice correction."""
    mean = state.tower[1].core
    wick = wick_table(activation, mean, slice_of(state.tower[2], (2,)), plan.k_max, plan.p_max)
    dense_plan = replace(plan, slice_types=tuple(p for p in plan.slice_types if p != TOP))
    slices = read_block_slices(state, plan)
    cumulants = cumulants_from_power_cumulants(dense_plan, power_cumulants(dense_plan, slices, wick))
    fourth = with_exact_lower_slices(top_slice_pairs(plan, slices, state.fourth, wick), cumulants)
    tower = {
        degree: project_slices({p: s for p, s in cumulants.items() if sum(p) == degree}, mean.numel(), degree, r)
        for degree, r in plan.radial.items()
        if degree != ORDER
    }
    return PairFactoredState(tower, fourth)


def factored_plan4(order: int, variant: str) -> Plan:
    """The compiled plan, after checking that the pair-factored path supports (order, variant)."""
    if (order, variant) != (ORDER, "simple"):
        raise MechestError(f"pair-factored propagation supports order {ORDER} simple, got {order} {variant!r}")
    plan = compile_plan(order, variant)
    if any(d > ORDER or r != 0 for d, r in plan.radial.items()) or any(
            p != TOP and any(block.degree == ORDER and block.slice_type == TOP for term in terms
                             for block in term.blocks) for p, terms in plan.diagrams.items()):
        raise AssertionError("K = 4 SIMPLE is expected to track dense pieces of degree ≤ 4 and read κ_4's "
                             "all-distinct block only on its own slice")
    return plan


def hidden_states4(net: MLP, plan: Plan) -> Iterator[PairFactoredState]:
    """The pair-factored state after every hidden activation, starting from x ~ N(0, I)."""

    def step(state: PairFactoredState, weight: torch.Tensor, bias: torch.Tensor | None,
             activation: str) -> PairFactoredState:
        tower = linear_step(state.tower, weight, bias, set(state.tower))
        return factored_nonlinear_step(PairFactoredState(tower, pair_linear_map(state.fourth, weight)), activation,
                                       plan)

    first = PairFactoredState(input_tower(net.input_dim, plan, net.weights[0]), empty_pairs(net.input_dim,
                                                                                            net.weights[0]))
    return layer_states(layers_of(net), first, step)


def propagate_factored4(net: MLP, order: int, variant: str) -> Propagation:
    """Propagate x ~ N(0, I) through ``net`` at K = 4 SIMPLE with κ_4 pair-factored; same result as the engine."""
    plan = factored_plan4(order, variant)
    hidden = (state.tower for state in hidden_states4(net, plan))
    return collect_propagation(net, input_tower(net.input_dim, plan, net.weights[0]), hidden)
