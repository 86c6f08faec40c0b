"""Harmonic pieces of symmetric tensors: HTensor, the projections P_{≥r}, slices and the linear step.

docs/method.md §3.2–§3.4, §5. A symmetric d-tensor T is the polynomial f_T(x) = ⟨T, x^{⊗d}⟩. Two operators:

- L (Laplacian): L T = d(d−1) tr_{12} T, i.e. f_{LT} = Δ f_T;
- R_M (multiplication by xᵀMx): R_M A = Sym(A ⊗ M); R = R_I multiplies by |x|².

T = Σ_{r'} R^{r'} h_{r'} with h_{r'} harmonic (traceless) of order d − 2r', an orthogonal decomposition
for the Frobenius inner product. P_{≥r} T = Σ_{r' ≥ r} R^{r'} h_{r'} is the Frobenius-orthogonal
projection onto {Sym(A ⊗ I^{⊗r})}; its core A = C is

    C = Σ_{j ≥ r} ā_j R^{j−r} L^j T,     ā_j = Σ_{r'=r..j} a_j(n, d, r'),
    a_j(n, d, r') = (−1)^{r'} (c − r') / [4^j r'! (j − r')! c (1 − c)^{(j)}],   c = d − r' + n/2 − 1,

with x^{(j)} the rising factorial. An ``HTensor`` (C, r, M) stands for Sym(C ⊗ M^{⊗r}) and is what the
linear step maps exactly: Sym(C ⊗ M^{⊗r}) ↦ Sym((W^{⊗s} C) ⊗ (W M Wᵀ)^{⊗r}).

Diagonal slices follow the plain-value convention of ``mechest.math.tensors.diagonal_slices``.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from functools import cache
from typing import NamedTuple

import torch

from mechest.math.combinatorics import set_partition_count_of_type
from mechest.math.tensors.diagonal_slices import (
    LETTERS,
    IntPartition,
    Slices,
    slice_from_dense,
    symmetrize,
    symmetrize_slice,
    to_dense,
    zero_repeated,
)


@dataclass(frozen=True, eq=False)
class HTensor:
    """The symmetric tensor Sym(C ⊗ M^{⊗r}) of order d = s + 2r, s = ord(C).

    ``core`` C is a symmetric n^s tensor, ``r`` the radial index, ``metric`` M a symmetric n×n matrix or
    None for the identity. ``n`` is read from the core or the metric; it must be given only when both
    are silent (scalar core with identity metric). Instances compare by identity (tensor fields).
    """

    core: torch.Tensor
    r: int = 0
    metric: torch.Tensor | None = None
    n: int | None = None

    def __post_init__(self) -> None:
        if self.r < 0:
            raise ValueError(f"radial index must be >= 0, got {self.r}")
        sizes = set(self.core.shape)
        if self.metric is not None:
            if self.metric.ndim != 2:
                raise ValueError(f"metric must be a matrix, got shape {tuple(self.metric.shape)}")
            sizes |= set(self.metric.shape)
        if self.n is not None:
            sizes.add(self.n)
        if len(sizes) != 1:
            raise ValueError(f"core {tuple(self.core.shape)}, metric and n={self.n} disagree on the width")
        object.__setattr__(self, "n", sizes.pop())

    @property
    def core_order(self) -> int:
        """s = ord(C)."""
        return self.core.ndim

    @property
    def order(self) -> int:
        """d = s + 2r, the order of the represented tensor."""
        return self.core.ndim + 2 * self.r

    def metric_matrix(self) -> torch.Tensor:
        """M as an explicit n×n matrix (the identity when ``metric`` is None)."""
        if self.metric is not None:
            return self.metric
        return torch.eye(self.n, dtype=self.core.dtype, device=self.core.device)

    def to_dense(self) -> torch.Tensor:
        """The dense n^d tensor Sym(C ⊗ M^{⊗r}) = R_M^r C (for tests and small n)."""
        metric = self.metric_matrix()
        out = self.core
        for _ in range(self.r):
            out = radial_multiply(out, metric)
        return out


# ---------------------------------------------------------------------------------------------
# Dense operators


def laplacian(tensor: torch.Tensor) -> torch.Tensor:
    """L T = d(d−1) tr_{12} T, the Laplacian of f_T, for a symmetric tensor of order d ≥ 2."""
    d = tensor.ndim
    if d < 2:
        raise ValueError(f"the Laplacian needs order >= 2, got {d}")
    return d * (d - 1) * torch.diagonal(tensor, dim1=0, dim2=1).sum(-1)


def radial_multiply(tensor: torch.Tensor, metric: torch.Tensor) -> torch.Tensor:
    """R_M A = Sym(A ⊗ M) for a symmetric tensor A of order s and a symmetric matrix M.

    With A and M symmetric, Sym(A ⊗ M) is the average over the C(s+2, 2) position pairs {a < b} of
    the tensor carrying M on positions (a, b) and A on the others.
    """
    s = tensor.ndim
    outer = torch.tensordot(tensor, metric, dims=0)
    pairs = list(itertools.combinations(range(s + 2), 2))
    return sum(torch.movedim(outer, (s, s + 1), pair) for pair in pairs) / len(pairs)


# ---------------------------------------------------------------------------------------------
# Projection P_{≥r}


@cache
def projection_coefficients(n: int, d: int, r: int) -> tuple[float, ...]:
    """ā_j = Σ_{r'=r..j} a_j(n, d, r') for j = r..⌊d/2⌋ (entry j − r), exactly in rationals.

    With (1 − c)^{(j)} = Π_{i=1..j} (i − c), the factor (c − r') in the numerator cancels against the
    i = r' factor (r' − c) of the rising factorial when r' ≥ 1 (and against c when r' = 0). The
    cancelled form is used: it is the same rational function, and it stays finite at n = 2, where
    c = r' can happen and the uncancelled form reads 0/0.
    """
    if not 0 <= 2 * r <= d:
        raise ValueError(f"need 0 <= 2r <= d, got r={r}, d={d}")
    if n < 1:
        raise ValueError(f"width must be >= 1, got {n}")
    return tuple(float(sum(_radial_coefficient(n, d, j, rp) for rp in range(r, j + 1))) for j in range(r, d // 2 + 1))


def _radial_coefficient(n: int, d: int, j: int, rp: int) -> Fraction:
    """a_j(n, d, r') of docs/method.md §3.2, in the cancelled form described in projection_coefficients."""
    c = Fraction(2 * (d - rp) + n - 2, 2)
    others = math.prod((i - c for i in range(1, j + 1) if i != rp), start=Fraction(1))
    if rp == 0:
        return 1 / (4**j * math.factorial(j) * others)
    return Fraction((-1) ** (rp + 1)) / (4**j * math.factorial(rp) * math.factorial(j - rp) * c * others)


def projection_core(tensor: torch.Tensor, r: int) -> torch.Tensor:
    """Core C of P_{≥r} T = Sym(C ⊗ I^{⊗r}) for a dense symmetric tensor T (order d − 2r).

    C = Σ_{j ≥ r} ā_j R^{j−r} L^j T, evaluated by Horner's rule in R.
    """
    d, n = tensor.ndim, (tensor.shape[0] if tensor.ndim else 1)
    laplacians = [tensor]
    for _ in range(d // 2):
        laplacians.append(laplacian(laplacians[-1]))
    return _horner(laplacians[r:], projection_coefficients(n, d, r), n)


def _horner(terms: list[torch.Tensor], coefficients: tuple[float, ...], n: int) -> torch.Tensor:
    """Σ_k coefficients[k] R^k terms[k] = c_0 t_0 + R(c_1 t_1 + R(c_2 t_2 + …))."""
    identity = torch.eye(n, dtype=terms[0].dtype, device=terms[0].device)
    out = coefficients[-1] * terms[-1]
    for coefficient, term in zip(reversed(coefficients[:-1]), reversed(terms[:-1]), strict=True):
        out = coefficient * term + radial_multiply(out, identity)
    return out


# ---------------------------------------------------------------------------------------------
# Projection on diagonal-slice input


def laplacian_power_slices(slices: Mapping[IntPartition, torch.Tensor], d: int, j: int) -> Slices:
    """Diagonal slices of L^j T (order d − 2j) from those of T, without densifying.

    On the polynomial side, f_T = Σ_p N(p) Σ_{i distinct} S_p[i] Π_b x_{i_b}^{p_b} with N(p) the number of
    set partitions of type p. On a monomial with distinct variables Δ = Σ_b ∂²_{i_b}, so Δ^j chooses
    g_b caps in block b (Σ g_b = j, 2g_b ≤ p_b) with weight j! Π_b (p_b)_{2g_b} / g_b!; fully capped
    blocks are summed over their index and the rest is a slice of type q = sort(p − 2g) (zero parts
    dropped). Reading back plain values divides by N(q):

        (L^j T)_q += N(p)/N(q) · j! Π_b (p_b)_{2g_b}/g_b! · Σ_{capped axes} S_p   (axes sorted to q),

    then every output slice is symmetrized over its equal-part axes.
    """
    if not 0 <= 2 * j <= d:
        raise ValueError(f"need 0 <= 2j <= d, got j={j}, d={d}")
    out: Slices = {}
    for p, s in slices.items():
        for caps in _cap_distributions(p, j):
            q, kept_axes, summed_axes = _capped_layout(p, caps)
            weight = cap_weight(p, caps, q)
            term = s.sum(dim=summed_axes) if summed_axes else s
            term = weight * term.permute(_rank_order(kept_axes))
            out[q] = out[q] + term if q in out else term
    return {q: symmetrize_slice(s, q) for q, s in out.items()}


def _cap_distributions(p: IntPartition, j: int) -> Iterator[tuple[int, ...]]:
    """All g with 0 ≤ 2 g_b ≤ p_b and Σ_b g_b = j."""
    for caps in itertools.product(*(range(part // 2 + 1) for part in p)):
        if sum(caps) == j:
            yield caps


def _capped_layout(p: IntPartition, caps: tuple[int, ...]) -> tuple[IntPartition, tuple[int, ...], tuple[int, ...]]:
    """(q, axes of S_p kept in the order of q, axes summed over) after g caps."""
    remaining = [part - 2 * g for part, g in zip(p, caps, strict=True)]
    kept = sorted((axis for axis, rest in enumerate(remaining) if rest), key=lambda axis: -remaining[axis])
    summed = tuple(axis for axis, rest in enumerate(remaining) if not rest)
    return tuple(remaining[axis] for axis in kept), tuple(kept), summed


def _rank_order(kept_axes: tuple[int, ...]) -> tuple[int, ...]:
    """Permutation taking the kept axes (in their original relative order after the sum) to ``kept_axes`` order."""
    ranks = sorted(kept_axes)
    return tuple(ranks.index(axis) for axis in kept_axes)


def cap_weight(p: IntPartition, caps: tuple[int, ...], q: IntPartition) -> float:
    """N(p)/N(q) · j! Π_b (p_b)_{2g_b} / g_b!  with j = Σ g_b."""
    weight = Fraction(math.factorial(sum(caps)) * set_partition_count_of_type(p), set_partition_count_of_type(q))
    for part, g in zip(p, caps, strict=True):
        weight *= Fraction(math.perm(part, 2 * g), math.factorial(g))
    return float(weight)


def projection_core_from_slices(slices: Mapping[IntPartition, torch.Tensor], n: int, d: int, r: int) -> torch.Tensor:
    """Core of P_{≥r} T (a dense symmetric tensor of order d − 2r) from the diagonal slices of T.

    Same formula as ``projection_core``; each L^j T (order d − 2j ≤ d − 2r) is formed from the slices
    by ``laplacian_power_slices`` and densified, so the cost is O(Σ_p n^{len p}) plus the dense
    R^{j−r} products at the core order.
    """
    if r == 0:
        return to_dense(slices, n, d)  # P_{≥0} is the identity
    laplacians = {j: laplacian_power_slices(slices, d, j) for j in range(r, d // 2 + 1)}
    return projection_core_from_laplacians(laplacians, n, d, r)


def projection_core_from_laplacians(laplacians: Mapping[int, Slices], n: int, d: int, r: int) -> torch.Tensor:
    """Core of P_{≥r} T = Σ_{j ≥ r} ā_j R^{j−r} L^j T, given the diagonal slices of every L^j T, j = r..⌊d/2⌋."""
    coefficients = projection_coefficients(n, d, r)
    terms = [to_dense(laplacians[j], n, d - 2 * j) for j in range(r, d // 2 + 1)]
    return _horner(terms, coefficients, n)


def project(tensor: torch.Tensor, r: int) -> HTensor:
    """P_{≥r} T of a dense symmetric tensor as an HTensor with identity metric."""
    return HTensor(projection_core(tensor, r), r, n=tensor.shape[0] if tensor.ndim else 1)


def project_slices(slices: Mapping[IntPartition, torch.Tensor], n: int, d: int, r: int,
                   extra: Sequence[tuple[IntPartition, torch.Tensor]] = ()) -> HTensor:
    """P_{≥r} T of a tensor given by diagonal slices, as an HTensor with identity metric (docs/method.md §6.7).

    ``extra`` holds (type q, value) slices of L^r T contributed by parts of T given only through their capped
    sums (never as slices of T); they are added to L^r T before the projection.
    """
    if not extra:
        return HTensor(projection_core_from_slices(slices, n, d, r), r, n=n)
    laplacians = {j: laplacian_power_slices(slices, d, j) for j in range(r, d // 2 + 1)}
    for q, value in extra:
        laplacians[r][q] = laplacians[r][q] + value if q in laplacians[r] else value
    return HTensor(projection_core_from_laplacians(laplacians, n, d, r), r, n=n)


# ---------------------------------------------------------------------------------------------
# Slices of an HTensor


class _SliceTerm(NamedTuple):
    """One class of splittings: weight · einsum(core_subscripts, metric_subscripts… → blocks)."""

    weight: float
    core_subscripts: str
    metric_subscripts: tuple[str, ...]
    has_cross_edge: bool


def slice_of(h: HTensor, p: IntPartition) -> torch.Tensor:
    """The type-p diagonal slice of Sym(C ⊗ M^{⊗r}) (zero on repeated indices).

    At index ι, Sym(C ⊗ M^{⊗r})[ι] is the average, over the d!/(s! 2^r r!) splittings of the d
    positions into s core positions and r unordered pairs, of C[ι_core] Π_pairs M[ι_pair]. On a type-p
    slice a splitting only matters through how many core positions fall in each block and through the
    multigraph its pairs draw on the blocks; each such class is one einsum term (``slice_products``).
    """
    if h.r == 0:
        return slice_from_dense(h.core, p)
    blocks = LETTERS[: len(p)]
    out = torch.zeros((h.n,) * len(p), dtype=h.core.dtype, device=h.core.device)
    for weight, factors in slice_products(h, p):
        subscripts = ",".join(subscript for subscript, _ in factors)
        out = out + weight * torch.einsum(f"{subscripts}->{blocks}", *(operand for _, operand in factors))
    return zero_repeated(out)


def slice_products(h: HTensor, p: IntPartition) -> Iterator[tuple[float, tuple[tuple[str, torch.Tensor], ...]]]:
    """The terms of the type-p slice of Sym(C ⊗ M^{⊗r}): (weight, ((subscripts, operand), …)), block b = LETTERS[b].

    Off the repeated indices the slice is Σ weight · Π operand[subscripts]. With the identity metric, pairs
    joining two distinct blocks vanish (those terms are skipped) and loops contribute 1 (a ones vector keeps
    every block covered).
    """
    if sum(p) != h.order:
        raise ValueError(f"partition {p} does not match an HTensor of order {h.order}")
    blocks = LETTERS[: len(p)]
    for term in _slice_terms(p, h.core_order, h.r):
        if h.metric is None:
            if term.has_cross_edge:
                continue
            ones = torch.ones(h.n, dtype=h.core.dtype, device=h.core.device)
            uncovered = [letter for letter in blocks if letter not in term.core_subscripts]
            yield term.weight, ((term.core_subscripts, h.core), *((letter, ones) for letter in uncovered))
        else:
            yield term.weight, ((term.core_subscripts, h.core), *((m, h.metric) for m in term.metric_subscripts))


@cache
def _slice_terms(p: IntPartition, s: int, r: int) -> tuple[_SliceTerm, ...]:
    """Enumerate the splittings of the positions of a type-p slice and group them into einsum terms."""
    block_of = [b for b, part in enumerate(p) for _ in range(part)]
    d = len(block_of)
    classes: Counter[tuple[tuple[int, ...], tuple[tuple[int, int], ...]]] = Counter()
    for core_positions in itertools.combinations(range(d), s):
        rest = tuple(k for k in range(d) if k not in core_positions)
        core_counts = tuple(sum(1 for k in core_positions if block_of[k] == b) for b in range(len(p)))
        for matching in _perfect_matchings(rest):
            edges = tuple(sorted(tuple(sorted((block_of[a], block_of[b]))) for a, b in matching))
            classes[(core_counts, edges)] += 1
    total = sum(classes.values())
    assert total == math.factorial(d) // (math.factorial(s) * 2**r * math.factorial(r))
    return tuple(
        _SliceTerm(
            weight=count / total,
            core_subscripts="".join(LETTERS[b] * c for b, c in enumerate(core_counts)),
            metric_subscripts=tuple(LETTERS[a] + LETTERS[b] for a, b in edges),
            has_cross_edge=any(a != b for a, b in edges),
        )
        for (core_counts, edges), count in classes.items()
    )


def _perfect_matchings(positions: tuple[int, ...]) -> Iterator[tuple[tuple[int, int], ...]]:
    """All ways to split an even-length tuple into unordered pairs."""
    if not positions:
        yield ()
        return
    first, rest = positions[0], positions[1:]
    for k, partner in enumerate(rest):
        for matching in _perfect_matchings(rest[:k] + rest[k + 1 :]):
            yield ((first, partner), *matching)


# ---------------------------------------------------------------------------------------------
# Linear step


def contract_legs(core: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """W^{⊗s} C = C ×_1 W ×_2 W … ×_s W, one leg at a time (W is out×in), re-symmetrized."""
    out = core
    for _ in range(core.ndim):
        out = torch.tensordot(out, weight, dims=([0], [1]))
    return symmetrize(out)


def map_metric(weight: torch.Tensor, metric: torch.Tensor | None = None) -> torch.Tensor:
    """W M Wᵀ (W Wᵀ when ``metric`` is None, the identity), symmetrized against round-off."""
    left = weight if metric is None else weight @ metric
    out = left @ weight.T
    return 0.5 * (out + out.T)


def linear_map(h: HTensor, weight: torch.Tensor, mapped_metric: torch.Tensor | None = None) -> HTensor:
    """Exact image of Sym(C ⊗ M^{⊗r}) under x ↦ W x on every leg: Sym((W^{⊗s} C) ⊗ (W M Wᵀ)^{⊗r}).

    ``mapped_metric`` is W M Wᵀ if the caller has it already (one per layer, shared by all degrees,
    docs/method.md §5); it is trusted, not checked. With r = 0 the metric plays no role and the result
    carries None.
    """
    core = contract_legs(h.core, weight)
    n_out = weight.shape[0]
    if h.r == 0:
        return HTensor(core, 0, None, n=n_out)
    metric = map_metric(weight, h.metric) if mapped_metric is None else mapped_metric
    if metric.shape != (n_out, n_out):
        raise ValueError(f"mapped metric has shape {tuple(metric.shape)}, expected {(n_out, n_out)}")
    return HTensor(core, h.r, metric, n=n_out)
