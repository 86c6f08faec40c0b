"""Factored cumulant propagation for K = 3 (docs/method.md §7.2): κ_3 is carried in CP form, never as a dense n³ array.

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

from mechest.errors import MechestError
from mechest.kprop.backends import layers_of
from mechest.kprop.engine import (
    Slices,
    Tower,
    collect_propagation,
    cumulants_from_power_cumulants,
    input_tower,
    linear_step,
    power_cumulants,
)
from mechest.kprop.executor.layers import layer_states
from mechest.kprop.plan import (
    Conversion,
    Factor,
    Plan,
    SliceTerm,
    compile_plan,
    needed_slice_types,
)
from mechest.kprop.result import Propagation
from mechest.math.combinatorics import IntPartition, set_partition_count_of_type
from mechest.math.tensors.diagonal_slices import (
    LETTERS,
    symmetrize,
    symmetrize_slice,
    zero_repeated,
)
from mechest.math.tensors.harmonic import (
    cap_weight,
    project_slices,
    slice_of,
    slice_products,
)
from mechest.math.wick import wick_table
from mechest.mlp import MLP

ORDER = 3
TOP: IntPartition = (1,) * ORDER
VARIANTS = ("simple", "augment")


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


def dense_slice_types(plan: Plan) -> tuple[IntPartition, ...]:
    """The slices computed densely: those the plan computes except TOP, closed under pK → K without TOP.

    TOP enters other slices only through ``split_dense_plan``'s traced terms.
    """
    return needed_slice_types(plan.slice_types, plan.radial, plan.conversions, frozenset({TOP}))


def reads_top(term: SliceTerm) -> bool:
    """Whether a diagram term reads κ_3's all-distinct block (never formed densely)."""
    return any((block.degree, block.slice_type) == (ORDER, TOP) for block in term.blocks)


def converts_top(conversion: Conversion) -> bool:
    """Whether a pK → K term multiplies the new all-distinct pK_3 (held only in factored form)."""
    return any(part.slice_type == TOP for part in conversion.parts)


@dataclass(frozen=True)
class Traced:
    """What the dense slices need from the all-distinct 3-tensors, per slice p = (2, 1, 1) (AUGMENT).

    ``terms``: diagrams c·w(k_0, 2)(a) w(k_1, 1)(b) w(k_2, 1)(c)·κ_3[a, b, c] (the previous layer's κ_3);
    ``conversions``: pK → K terms c·pK_3[a, b, c]·Π (single-coordinate pK factors), the new pK_3.
    """

    terms: dict[IntPartition, tuple[SliceTerm, ...]]
    conversions: dict[IntPartition, tuple[Conversion, ...]]


def split_dense_plan(plan: Plan) -> tuple[Plan, Traced]:
    """The plan of the dense slices without anything that reads an all-distinct 3-tensor, and those pieces.

    The pieces must lie on slices (2, 1, …, 1) whose projection reads them only through one cap on the doubled
    coordinate (radial index 1), whose pK_p enters K_p alone with coefficient 1 and no other slice's K, with
    κ_3/pK_3 as the only multi-coordinate factor: ``traced_laplacian`` then adds them from the factors.
    """
    types = dense_slice_types(plan)
    terms = {p: tuple(t for t in plan.diagrams[p] if reads_top(t)) for p in types}
    conversions = {p: tuple(c for c in plan.conversions[p] if converts_top(c)) for p in types}
    traced = Traced({p: t for p, t in terms.items() if t}, {p: c for p, c in conversions.items() if c})
    for p in set(traced.terms) | set(traced.conversions):
        own = [c for c in plan.conversions[p] if any(part.slice_type == p for part in c.parts)]
        elsewhere = [q for q in types if q != p and any(part.slice_type == p for c in plan.conversions[q]
                                                         for part in c.parts)]
        singles = all(len(part.axes) == 1 or part.slice_type == TOP
                      for c in traced.conversions.get(p, ()) for part in c.parts)
        if (p != (2,) + (1,) * (ORDER - 1) or plan.radial[sum(p)] != 1 or elsewhere or not singles
                or len(own) != 1 or own[0].coefficient != 1 or len(own[0].parts) != 1
                or any(len(t.blocks) != 1 for t in traced.terms.get(p, ()))):
            raise NotImplementedError(f"factored {plan.variant} K={plan.order}: cannot trace slice {p}")
    dense = replace(plan, slice_types=types,
                    diagrams={p: tuple(t for t in plan.diagrams[p] if not reads_top(t)) for p in types},
                    conversions={p: tuple(c for c in plan.conversions[p] if not converts_top(c)) for p in types})
    return dense, traced


def check_top_is_power_cumulant(plan: Plan) -> None:
    """pK → K is the identity on the all-distinct slice (docs/method.md §6.6); the factored step relies on it."""
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


Forest = tuple[list[torch.Tensor], dict[tuple[int, int], torch.Tensor]]


def block_forests(block: Factor, slices: dict, tower: Tower) -> list[Forest]:
    """A diagram block on the all-distinct slice as a sum of forests: vectors per vertex and matrices per edge.

    Blocks on one or two coordinates are one vector or one edge matrix E[i_u, i_v] (u < v). A three-coordinate
    block of a harmonic piece Sym(C ⊗ M^{⊗r}) (κ_4's (2,1,1) slice in AUGMENT) expands into its slice products
    (``slice_products``), each a product of vectors and matrices on the block's coordinates.
    """
    ones = torch.ones_like(tower[1].core)
    if len(block.axes) < 3:
        return [_forest_of(((LETTERS[: len(block.axes)], slices[(block.degree, block.slice_type)]),), block.axes,
                           ones)]
    forests = []
    for weight, factors in slice_products(tower[block.degree], block.slice_type):
        vectors, edges = _forest_of(factors, block.axes, ones)
        vectors[block.axes[0]] = weight * vectors[block.axes[0]]
        forests.append((vectors, edges))
    return forests


def _forest_of(factors, axes: tuple[int, ...], ones: torch.Tensor) -> Forest:
    """Vectors and edge matrices on the TOP coordinates from einsum factors over letters (letter t ↔ axes[t])."""
    vectors = [ones] * ORDER
    edges: dict[tuple[int, int], torch.Tensor] = {}
    for subscripts, operand in factors:
        coordinates = [axes[LETTERS.index(letter)] for letter in subscripts]
        if len(set(coordinates)) == 1 and operand.ndim <= 2:
            vector = operand if operand.ndim == 1 else torch.diagonal(operand)
            vectors[coordinates[0]] = vectors[coordinates[0]] * vector
        elif len(coordinates) == 2 and len(set(coordinates)) == 2:
            u, v = coordinates
            matrix = operand if u < v else operand.T
            key = (min(u, v), max(u, v))
            edges[key] = edges[key] * matrix if key in edges else matrix
        else:
            raise NotImplementedError(f"a factor {subscripts} on {len(coordinates)} coordinates")
    return vectors, edges


def forest_factors(vectors: list[torch.Tensor], edges: dict[tuple[int, int], torch.Tensor]) -> FactoredTensor:
    """Π_j v_j(i_j) Π_{(u,v)} E_uv(i_u, i_v) on three coordinates (a forest of ≤ 2 edges) in CP form.

    Factoring through one index k of a vertex that touches every edge (the centre of a two-edge path, or an end
    of a single edge) gives rank n: column k has e_k·v_c(k) on the centre, v_x ⊙ E(k, ·) on each neighbour x and
    v_w on a vertex w without edges. No edges: rank 1.
    """
    n = vectors[0].shape[0]
    if not edges:
        return FactoredTensor(tuple(vector[:, None] for vector in vectors))
    shared = set.intersection(*(set(edge) for edge in edges))
    if len(edges) > 2 or not shared:
        raise NotImplementedError(f"not a forest with a centre: edges {sorted(edges)}")
    centre = min(shared)
    factors = [vector[:, None].expand(n, n) for vector in vectors]
    factors[centre] = torch.diag(vectors[centre])
    for (u, v), matrix in edges.items():
        other, oriented = (v, matrix) if u == centre else (u, matrix.T)
        factors[other] = vectors[other][:, None] * oriented.T
    return FactoredTensor(tuple(factors))


def hypertree_term_factors(term: SliceTerm, slices: dict, tower: Tower, wick: torch.Tensor) -> FactoredTensor:
    """A hypertree term on the all-distinct slice (no κ_3 all-distinct block) as CP factors, rank ≤ n per forest."""
    vectors = [wick[k, power] for k, power in zip(term.derivatives, TOP, strict=True)]
    vectors[0] = term.coefficient * vectors[0]
    forests: list[Forest] = [(vectors, {})]
    for block in term.blocks:
        expanded = []
        for vectors, edges in forests:
            for block_vectors, block_edges in block_forests(block, slices, tower):
                merged = dict(edges)
                for key, matrix in block_edges.items():
                    merged[key] = merged[key] * matrix if key in merged else matrix
                expanded.append(([a * b for a, b in zip(vectors, block_vectors, strict=True)], merged))
        forests = expanded
    return concatenate([forest_factors(vectors, edges) for vectors, edges in forests])


def top_slice_factors(plan: Plan, slices: dict, state: FactoredState, wick: torch.Tensor) -> FactoredTensor:
    """pK_(1,1,1) = K_(1,1,1) on distinct indices, as CP factors: the carried κ_3 block plus the hypertree terms."""
    parts = []
    for term in plan.diagrams[TOP]:
        if any(block.degree != ORDER and block.degree not in state.tower for block in term.blocks):
            continue  # a cumulant not tracked yet (the input has only κ_1 and κ_2)
        if reads_top(term):
            if len(term.blocks) != 1:
                raise NotImplementedError(f"κ_3's all-distinct block times other blocks: {term.blocks}")
            parts.append(carried_term_factors(term, state.third, wick))
        else:
            parts.append(hypertree_term_factors(term, slices, state.tower, wick))
    return concatenate(parts)


def contract_vector(tensor: FactoredTensor, vector: torch.Tensor) -> torch.Tensor:
    """Σ_a v_a T[a, b, c] for T = Sym(Σ_r A_r ⊗ B_r ⊗ C_r): the n×n matrix, O(n²R).

    Each of the three factors takes the contracted leg in a third of the permutations, so the result is
    (1/3)·Σ over that choice of (vᵀF)·sym(G ⊗ H) for the other two factors G, H.
    """
    first, second, third = tensor.factors
    total = sum(((g * (vector @ f)) @ h.T) for f, g, h in ((first, second, third), (second, first, third),
                                                           (third, first, second)))
    return (total + total.T) / 6


def traced_laplacian(p: IntPartition, coefficient: float, vectors: list[torch.Tensor],
                     tensor: FactoredTensor) -> torch.Tensor:
    """The (1,1) slice of L¹ of c·v_0(a) v_1(b) v_2(c)·X[a, b, c] laid on slice p = (2,1,1), X in CP form.

    One cap on the doubled coordinate a sums over a ∉ {b, c}: Σ_a v_0(a) X[a,b,c] − v_0(b) X[b,b,c] −
    v_0(c) X[c,c,b], from the contraction and the (2,1) slice of the factors (O(n²R), valid for any full
    tensor X, exact or not on repeated indices), times the cap weight of ``laplacian_power_slices``.
    """
    caps = (1,) + (0,) * (len(p) - 1)
    q = p[1:]
    doubled, left, right = vectors
    double_slice = factored_slice(tensor, (2, 1))
    summed = contract_vector(tensor, doubled) - doubled[:, None] * double_slice - doubled[None, :] * double_slice.T
    value = coefficient * cap_weight(p, caps, q) * left[:, None] * right[None, :] * summed
    return zero_repeated(symmetrize_slice(value, q))


def traced_laplacians(traced: Traced, degree: int, previous: FactoredTensor, top: FactoredTensor,
                      wick: torch.Tensor, power: Slices) -> list[tuple[IntPartition, torch.Tensor]]:
    """Every traced piece of slices of ``degree``, as (q, value) additions to the slices of L¹."""
    out = []
    for p, terms in traced.terms.items():
        if sum(p) == degree:
            for term in terms:
                vectors = [wick[k, power_] for k, power_ in zip(term.derivatives, p, strict=True)]
                out.append((p[1:], traced_laplacian(p, term.coefficient, vectors, previous)))
    for p, conversions in traced.conversions.items():
        if sum(p) == degree:
            for conversion in conversions:
                vectors = [torch.ones_like(wick[0, 1]) for _ in p]
                for part in conversion.parts:
                    if part.slice_type != TOP:
                        vectors[part.axes[0]] = vectors[part.axes[0]] * power[part.slice_type]
                out.append((p[1:], traced_laplacian(p, conversion.coefficient, vectors, top)))
    return out


# ---------------------------------------------------------------------------------------------
# Steps and propagation


def read_block_slices(state: FactoredState, plan: Plan, dense_plan: Plan) -> dict:
    """Every (degree, q) slice read by the dense diagrams, and the ≤ 2-coordinate blocks of the TOP terms.

    κ_3's all-distinct block is never formed; three-coordinate blocks of the TOP terms are read in factored form
    by ``block_forests``.
    """
    needed = {(block.degree, block.slice_type) for p in dense_plan.slice_types for term in dense_plan.diagrams[p]
              for block in term.blocks}
    needed |= {(block.degree, block.slice_type) for term in plan.diagrams[TOP] for block in term.blocks
               if len(block.axes) < ORDER}
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
    """Cumulants of a = φ(z): dense slices as in the engine, κ_3 as top factors plus the lower-slice correction.

    Whatever dense slices need from an all-distinct 3-tensor enters their projection through
    ``traced_laplacians`` (AUGMENT).
    """
    mean = state.tower[1].core
    wick = wick_table(activation, mean, slice_of(state.tower[2], (2,)), plan.k_max, plan.p_max)
    dense_plan, traced = split_dense_plan(plan)
    slices = read_block_slices(state, plan, dense_plan)
    power = power_cumulants(dense_plan, slices, wick)
    cumulants = cumulants_from_power_cumulants(dense_plan, power)
    top = top_slice_factors(plan, slices, state, wick)
    n = mean.numel()
    tower = {}
    for degree, r in plan.radial.items():
        if degree == ORDER:
            continue
        of_degree = {p: s for p, s in cumulants.items() if sum(p) == degree}
        extra = traced_laplacians(traced, degree, state.third, top, wick, power)
        tower[degree] = project_slices(of_degree, n, degree, r, extra)
    return FactoredState(tower, with_exact_lower_slices(top, cumulants))


def factored_plan(order: int, variant: str) -> Plan:
    """The compiled plan, after checking that the factored path supports (order, variant)."""
    if order != ORDER or variant not in VARIANTS:
        raise MechestError(f"factored propagation supports order {ORDER} in {VARIANTS}, got {order} {variant!r}")
    plan = compile_plan(order, variant, "factored")
    check_top_is_power_cumulant(plan)
    return plan


def hidden_states(net: MLP, plan: Plan) -> Iterator[FactoredState]:
    """The factored state after every hidden activation a_l, l = 0..depth−1, starting from x ~ N(0, I)."""
    tower = input_tower(net.input_dim, plan, net.weights[0])

    def step(state: FactoredState, weight: torch.Tensor, bias: torch.Tensor | None, activation: str) -> FactoredState:
        return factored_nonlinear_step(factored_linear_step(state, weight, bias), activation, plan)

    return layer_states(layers_of(net), FactoredState(tower, empty_factored(net.input_dim, net.weights[0])), step)


def output_marginals(net: MLP, order: int, variant: str) -> torch.Tensor:
    """Rows μ_i, σ_i², κ_3(i,i,i), κ_4(i,i,i,i) of ``net``'s output (its last pre-activation) with κ_3 factored.

    κ_3(i,i,i) = Σ_r (WA)_ir (WB)_ir (WC)_ir is read from the factors in O(nR); κ_4 is its tracked trace piece
    (0 where the plan does not carry degree 4). The same values as the unfactorised engine for SIMPLE.
    """
    plan = factored_plan(order, variant)
    state = FactoredState(input_tower(net.input_dim, plan, net.weights[0]),
                          empty_factored(net.input_dim, net.weights[0]))
    for state in hidden_states(net, plan):  # noqa: B007 (the last state is what the output map reads)
        pass
    state = factored_linear_step(state, net.weights[-1], net.biases[-1])
    mean = state.tower[1].core
    fourth = slice_of(state.tower[4], (4,)) if 4 in state.tower else torch.zeros_like(mean)
    return torch.stack([mean, slice_of(state.tower[2], (2,)), factored_slice(state.third, (ORDER,)), fourth])


def propagate_factored(net: MLP, order: int, variant: str) -> Propagation:
    """Propagate x ~ N(0, I) through ``net`` at (order, variant) with κ_3 factored; same result as the engine.

    ``third`` is None: the output's third cumulant exists only in factored form (densifying it would cost
    O(n³R)).
    """
    plan = factored_plan(order, variant)
    hidden = (state.tower for state in hidden_states(net, plan))
    return collect_propagation(net, input_tower(net.input_dim, plan, net.weights[0]), hidden)
