"""Slices the projection reads only through a sum over one axis, evaluated without their n^m array.

A slice p = (2, 1, …, 1), m = len(p) ≥ 3, of a degree-d piece kept as P_{≥1} (κ_4's (2,1,1) under K = 3
AUGMENT, κ_5's (2,1,1,1) under K = 4 AUGMENT) enters the projection only through L¹, i.e. through its capped sum
R[x_1…x_{m−1}] = Σ_{x_0 ∉ {x_1…x_{m−1}}} S_p[x_0, x_1, …] (docs/method.md §3.3; ``laplacian_power_slices``).
Every diagram and pK → K term of S_p is a product of factors on the m axes, so

    Σ_{x_0 ∉ {x_b}} Π_f F_f = E(Π_f F_f) − Σ_{b ≥ 1} E(Π_f F_f |_{x_0 = x_b}),    E = Σ over x_0 (one contraction),

each restriction x_0 = x_b being the same product with axis 0's letter replaced by b's. That costs O(n^m) FLOPs in
contractions and O(n^{m−1}) memory, where forming S_p costs O(n^m) memory and many elementwise n^m passes: for
K = 4 AUGMENT's (2, 1, 1, 1) slice at width 128, 2 GB per array and most of the run time. The remaining axes are
masked to distinct indices and symmetrized, as the dense path does.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import replace

import torch

from mechest.kprop.plan import Plan
from mechest.math.combinatorics import IntPartition
from mechest.math.tensors.diagonal_slices import LETTERS, symmetrize_slice, zero_repeated
from mechest.math.tensors.harmonic import HTensor, cap_weight, slice_products

SUMMED_AXIS = 0
MIN_WIDTH = 32  # below this width forming the slice is faster than the many small contractions (measured)
Operand = tuple[str, torch.Tensor]  # einsum subscripts over the slice's axes (axis t = LETTERS[t]), tensor


def is_summed_slice(p: IntPartition, radial: int) -> bool:
    """Whether the projection reads slice p only through its capped sum over axis 0: p = (2, 1, …, 1), m ≥ 3,
    of a piece with r = 1 (no other cap distribution of p reaches j ≥ 1)."""
    return radial == 1 and len(p) >= 3 and p[0] == 2 and all(part == 1 for part in p[1:])


def split_summed(plan: Plan, width: int, min_width: int = MIN_WIDTH) -> tuple[Plan, tuple[IntPartition, ...]]:
    """(the plan without its summed slices, the summed slices) for a layer of ``width`` neurons; none below
    ``min_width``. A summed slice must be no other slice's pK part."""
    if width < min_width:
        return plan, ()
    parts = {part.slice_type for p in plan.slice_types for c in plan.conversions[p] for part in c.parts
             if part.slice_type != p}
    summed = tuple(p for p in plan.slice_types if is_summed_slice(p, plan.radial[sum(p)]) and p not in parts)
    if not summed:
        return plan, ()
    dense_types = tuple(p for p in plan.slice_types if p not in summed)
    block_types = frozenset((b.degree, b.slice_type) for p in dense_types for t in plan.diagrams[p] for b in t.blocks)
    return replace(plan, slice_types=dense_types, block_types=block_types), summed


def capped_laplacian_term(p: IntPartition, summed: torch.Tensor) -> tuple[IntPartition, torch.Tensor]:
    """The (type q, value) that a summed slice adds to L¹T: cap_weight · R, q = (1, …, 1)."""
    q = p[1:]
    return q, cap_weight(p, (1,) + (0,) * len(q), q) * summed


def summed_cumulant(p: IntPartition, plan: Plan, tower: dict[int, HTensor], power: dict, wick: torch.Tensor
                    ) -> torch.Tensor:
    """R = Σ_{x_0 ∉ others} K_p[x_0, …] for a summed slice p, from the diagrams and pK → K terms of p."""
    m = len(p)
    power_sum = None
    for term in plan.diagrams[p]:
        if any(block.degree not in tower for block in term.blocks):
            continue
        vectors = [(LETTERS[j], wick[k, p[j]]) for j, k in enumerate(term.derivatives)]
        for choice in itertools.product(*(block_operands(tower[b.degree], b.slice_type, b.axes) for b in term.blocks)):
            weight = math.prod(w for w, _ in choice)
            blocks = [operand for _, operands in choice for operand in operands]
            value = (term.coefficient * weight) * masked_sum([*vectors, *blocks], m)
            power_sum = value if power_sum is None else power_sum.add_(value)
    power_sum = symmetrize_slice(power_sum, p[1:])
    total = None
    for conversion in plan.conversions[p]:
        if any(part.slice_type == p for part in conversion.parts):
            value = conversion.coefficient * power_sum
        else:
            factors = [(axes_letters(part.axes), power[part.slice_type]) for part in conversion.parts]
            value = conversion.coefficient * masked_sum(factors, m)
        total = value if total is None else total + value
    return symmetrize_slice(zero_repeated(total), p[1:])


def axes_letters(axes: Sequence[int]) -> str:
    return "".join(LETTERS[axis] for axis in axes)


def block_operands(piece: HTensor, q: IntPartition, axes: tuple[int, ...]) -> list[tuple[float, tuple[Operand, ...]]]:
    """The type-q slice of ``piece`` laid on ``axes``, unmasked, as a sum of weighted einsum products."""
    rename = str.maketrans(LETTERS[: len(q)], axes_letters(axes))
    return [(weight, tuple((subscripts.translate(rename), operand) for subscripts, operand in factors))
            for weight, factors in slice_products(piece, q)]


def masked_sum(factors: Sequence[Operand], m: int) -> torch.Tensor:
    """Σ_{x_0 ∉ {x_1…x_{m−1}}} Π_f F_f as a tensor on axes 1…m−1 (unmasked there)."""
    out = axes_letters(range(1, m))
    total = contract(factors, out)
    for axis in range(1, m):
        rename = str.maketrans(LETTERS[SUMMED_AXIS], LETTERS[axis])
        total = total - contract([(subscripts.translate(rename), operand) for subscripts, operand in factors], out)
    return total


def contract(factors: Sequence[Operand], out: str) -> torch.Tensor:
    """einsum(factors → out) by greedy pairwise contractions: each step the pair whose result grows the least."""
    factors = list(factors)
    n = factors[0][1].shape[0]
    while len(factors) > 1:
        steps = [pair_step(factors, i, j, out) for i, j in itertools.combinations(range(len(factors)), 2)]
        i, j, result = min(steps, key=lambda step: n ** len(step[2]) - factors[step[0]][1].numel()
                           - factors[step[1]][1].numel())
        merged = (result, torch.einsum(f"{factors[i][0]},{factors[j][0]}->{result}", factors[i][1], factors[j][1]))
        factors = [f for k, f in enumerate(factors) if k not in (i, j)] + [merged]
    subscripts, operand = factors[0]
    return torch.einsum(f"{subscripts}->{out}", operand)


def pair_step(factors: Sequence[Operand], i: int, j: int, out: str) -> tuple[int, int, str]:
    """(i, j, subscripts of their product keeping the letters that ``out`` or another factor still needs)."""
    needed = out + "".join(subscripts for k, (subscripts, _) in enumerate(factors) if k not in (i, j))
    return i, j, "".join(dict.fromkeys(c for c in factors[i][0] + factors[j][0] if c in needed))
