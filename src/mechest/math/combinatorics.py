"""Pure-Python combinatorics of cumulant propagation (docs/method.md §4.2, §6.3–§6.6, §7).

Everything is exact integer/rational bookkeeping derived by enumeration, and cached:

- integer, set and vector partitions;
- the variant tables: d_max, the radial index r_x(d), the diagram budget B, the tracked slice types;
- the admissible Edgeworth diagrams D_p of each tracked slice type p, with c(ν) and orbit sizes;
- the power-cumulant → cumulant coefficients C(ρ);
- the hypertree test of factored propagation.

A *vector* v ∈ ℕ^m puts v_j legs on coordinate j of a slice with m coordinates. A *diagram* (or vector
partition) is a multiset of nonzero vectors, stored as a tuple sorted in non-increasing lexicographic order.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from functools import cache

IntPartition = tuple[int, ...]
SetPartition = tuple[tuple[int, ...], ...]
Vector = tuple[int, ...]
Diagram = tuple[Vector, ...]


@cache
def integer_partitions(d: int) -> tuple[IntPartition, ...]:
    """All partitions of d as non-increasing tuples, in reverse-lexicographic order (d = 0 → ((),))."""
    if d < 0:
        raise ValueError(f"d must be >= 0, got {d}")

    def parts(rest: int, largest: int) -> list[IntPartition]:
        if rest == 0:
            return [()]
        return [(first, *tail) for first in range(min(rest, largest), 0, -1) for tail in parts(rest - first, first)]

    return tuple(parts(d, d))


@cache
def set_partitions(n: int) -> tuple[SetPartition, ...]:
    """All set partitions of range(n); blocks are sorted tuples, ordered by their smallest element."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if n == 0:
        return ((),)
    out: list[SetPartition] = []
    for part in set_partitions(n - 1):
        # element n-1 joins an existing block or opens a new one
        for b in range(len(part)):
            out.append(tuple(blk + (n - 1,) if i == b else blk for i, blk in enumerate(part)))
        out.append(part + ((n - 1,),))
    return tuple(out)


@cache
def set_partition_count_of_type(p: IntPartition) -> int:
    """Number of set partitions of a |p|-set with block sizes p: d!/(Π_j p_j! · Π_s mult(s)!)."""
    if any(s <= 0 for s in p):
        raise ValueError(f"block sizes must be positive, got {p}")
    denom = math.prod(math.factorial(s) for s in p) * math.prod(math.factorial(c) for c in Counter(p).values())
    return math.factorial(sum(p)) // denom


# ---------------------------------------------------------------------------------------------
# Vector partitions


@cache
def _weak_compositions_below(vec: Vector) -> tuple[Vector, ...]:
    """All u ∈ ℕ^m with 0 ≤ u ≤ vec componentwise, in lexicographic order."""
    if not vec:
        return ((),)
    return tuple((first, *rest) for first in range(vec[0] + 1) for rest in _weak_compositions_below(vec[1:]))


def _canonical(blocks: Iterable[Vector]) -> Diagram:
    """The canonical representation of a multiset of vectors: sorted in non-increasing order."""
    return tuple(sorted(blocks, reverse=True))


@cache
def vector_partitions(vec: Vector) -> tuple[Diagram, ...]:
    """All multisets of nonzero vectors u ≤ vec (componentwise) with Σ u = vec; vec = 0 → ((),).

    Each multiset is canonical (blocks in non-increasing lexicographic order); the single block (vec,) comes first.
    """
    if any(x < 0 for x in vec):
        raise ValueError(f"vector must be nonnegative, got {vec}")

    def parts(rest: Vector, largest: Vector) -> list[Diagram]:
        if not any(rest):
            return [()]
        return [
            (u, *tail)
            for u in reversed(_weak_compositions_below(rest))
            if any(u) and u <= largest
            for tail in parts(tuple(r - x for r, x in zip(rest, u, strict=True)), u)
        ]

    return tuple(parts(vec, vec))


def diagram_coefficient(diagram: Diagram) -> Fraction:
    """c(ν) = 1 / Π_{distinct v∈ν} [mult(v)! · (Π_j v_j!)^{mult(v)}] (docs/method.md §6.3).

    Equivalently c(ν) = N(ν)/Π_j k_j! with k = Σ_{v∈ν} v and N(ν) the number of set partitions of k_j labelled
    legs on each coordinate j whose blocks, counted per coordinate, are the vectors of ν.
    """
    denom = 1
    for v, mult in Counter(diagram).items():
        denom *= math.factorial(mult) * math.prod(math.factorial(x) for x in v) ** mult
    return Fraction(1, denom)


def leg_partition_count(diagram: Diagram) -> int:
    """N(ν) = Π_j k_j! · c(ν): the number of set partitions of type ν of the k_j = Σ_{v∈ν} v_j labelled legs on
    each j."""
    k = diagram_degrees(diagram)
    count = math.prod(math.factorial(x) for x in k) * diagram_coefficient(diagram)
    assert count.denominator == 1
    return count.numerator


def diagram_degrees(diagram: Diagram) -> Vector:
    """k(ν) = Σ_{v∈ν} v: the derivative (Hermite) order on each coordinate; () for the empty diagram."""
    return tuple(map(sum, zip(*diagram, strict=True)))


def support(v: Vector) -> tuple[int, ...]:
    """supp(v) = the coordinates j with v_j > 0."""
    return tuple(j for j, x in enumerate(v) if x)


def is_connected(diagram: Diagram, m: int) -> bool:
    """Whether the hypergraph on [m] with edges supp(v), v ∈ ν, is connected; the empty ν is connected iff m = 1."""
    if not diagram:
        return m == 1
    root = list(range(m))

    def find(j: int) -> int:
        while root[j] != j:
            j = root[j]
        return j

    for v in diagram:
        first, *rest = support(v)
        for j in rest:
            root[find(j)] = find(first)
    return len({find(j) for j in range(m)}) == 1


# ---------------------------------------------------------------------------------------------
# Variants (docs/method.md §4.2)


VARIANTS: tuple[str, ...] = ("simple", "augment", "base")


def _check(K: int, variant: str) -> None:
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; expected one of {VARIANTS}")
    if K < 1:
        raise ValueError(f"K must be >= 1, got {K}")


@cache
def d_max(K: int, variant: str) -> int:
    """Highest tracked cumulant degree: SIMPLE K+1 (K odd) or K; AUGMENT K+2 (K even) or K+1; BASE K."""
    _check(K, variant)
    if variant == "simple":
        return K + 1 if K % 2 else K
    if variant == "augment":
        return K + 1 if K % 2 else K + 2
    return K


@cache
def radial_index(d: int, K: int, variant: str) -> int:
    """r_x(d): the harmonic radial index kept for degree d (0 = full tensor, −1 = dropped), docs/method.md §4.2.

    d ≤ K: 0. d = K+1: SIMPLE d/2 if d is even (pure trace), AUGMENT 1. d = K+2: AUGMENT d/2 if d is even.
    Every other case, and every d > d_max, is −1.
    """
    _check(K, variant)
    if d < 1:
        raise ValueError(f"degree must be >= 1, got {d}")
    if d > d_max(K, variant):
        return -1
    if d <= K:
        return 0
    if variant == "augment" and d == K + 1:
        return 1
    return d // 2 if d % 2 == 0 else -1


@cache
def diagram_budget(K: int, variant: str) -> int:
    """B: the bound on Σ_{v∈ν} cost(v); K for AUGMENT, K − 1 for SIMPLE and BASE."""
    _check(K, variant)
    return K if variant == "augment" else K - 1


@cache
def tracked_slice_types(K: int, variant: str) -> tuple[IntPartition, ...]:
    """Every integer partition p with 1 ≤ |p| ≤ d_max and Σ_j ⌈p_j/2⌉ ≤ K, by degree then reverse-lex order."""
    return tuple(
        p
        for d in range(1, d_max(K, variant) + 1)
        for p in integer_partitions(d)
        if sum((x + 1) // 2 for x in p) <= K
    )


# ---------------------------------------------------------------------------------------------
# Admissible diagrams (docs/method.md §6.4)


def block_cost(v: Vector) -> int:
    """cost(v) = |v| − 1 − [all v_j even]: a block entry of κ_{|v|} is O(n^{−cost/2})."""
    return sum(v) - 1 - all(x % 2 == 0 for x in v)


def is_admissible_block(v: Vector, K: int, variant: str) -> bool:
    """Whether v may appear in a diagram: 2-mixed (not a single coordinate with |v| ≤ 2), cost ≤ B, r_x(|v|) ≥ 0."""
    if len(support(v)) == 1 and sum(v) <= 2:
        return False
    return block_cost(v) <= diagram_budget(K, variant) and radial_index(sum(v), K, variant) >= 0


def is_admissible(diagram: Diagram, m: int, K: int, variant: str) -> bool:
    """ν ∈ D_p for a slice with m coordinates: admissible blocks, connected on [m], Σ cost(v) ≤ B."""
    return (
        all(is_admissible_block(v, K, variant) for v in diagram)
        and is_connected(diagram, m)
        and sum(map(block_cost, diagram)) <= diagram_budget(K, variant)
    )


@cache
def slice_symmetries(p: IntPartition) -> tuple[tuple[int, ...], ...]:
    """The coordinate permutations σ with p[σ(j)] = p[j] (they permute coordinates of equal block size)."""
    return tuple(s for s in itertools.permutations(range(len(p))) if all(p[j] == p[s[j]] for j in range(len(p))))


def diagram_orbit(diagram: Diagram, p: IntPartition) -> tuple[Diagram, ...]:
    """The distinct canonical images of ν under the slice symmetries of p, sorted."""
    return tuple(sorted({_canonical(tuple(v[j] for j in s) for v in diagram) for s in slice_symmetries(p)}))


@dataclass(frozen=True)
class DiagramTerm:
    """One orbit of admissible diagrams on slice type p, standing for orbit_size terms of equal coefficient.

    The term contributes c(ν) · Π_{v∈ν} κ_{|v|}[i_1^{v_1} … i_m^{v_m}] · Π_j w_{i_j}(k_j(ν), p_j) to pK_p[i],
    for each ν in the orbit; ``diagram`` is the smallest canonical member of the orbit.
    """

    p: IntPartition
    diagram: Diagram
    coefficient: Fraction
    orbit_size: int

    @property
    def degrees(self) -> Vector:
        """k(ν): the Wick derivative order on each coordinate (zeros for the empty diagram)."""
        return diagram_degrees(self.diagram) or (0,) * len(self.p)

    @property
    def cost(self) -> int:
        """Σ_{v∈ν} cost(v)."""
        return sum(map(block_cost, self.diagram))


@cache
def admissible_diagrams(p: IntPartition, K: int, variant: str) -> tuple[DiagramTerm, ...]:
    """D_p grouped into orbits under the slice symmetries of p, one DiagramTerm per orbit.

    Enumerates multisets of admissible blocks (each costs ≥ 1, so at most B of them) of total cost ≤ B and keeps
    the connected ones; this is the set {ν ⊢ k : |k| ≤ 2B, ν admissible} of docs/method.md §6.4.
    """
    m, budget = len(p), diagram_budget(K, variant)
    blocks = tuple(
        v
        for d in range(1, 2 * budget + 1)
        for v in itertools.product(range(d + 1), repeat=m)
        if sum(v) == d and is_admissible_block(v, K, variant)
    )

    def multisets(start: int, left: int) -> Iterator[Diagram]:
        yield ()
        for i in range(start, len(blocks)):
            if block_cost(blocks[i]) <= left:
                for rest in multisets(i, left - block_cost(blocks[i])):
                    yield (blocks[i], *rest)

    found = {_canonical(nu) for nu in multisets(0, budget) if is_admissible(nu, m, K, variant)}
    orbits = {diagram_orbit(nu, p) for nu in found}
    return tuple(
        DiagramTerm(p, orbit[0], diagram_coefficient(orbit[0]), len(orbit)) for orbit in sorted(orbits, key=_orbit_key)
    )


def _orbit_key(orbit: tuple[Diagram, ...]) -> tuple[int, int, Diagram]:
    """Order orbits by total cost, then number of blocks, then representative."""
    return sum(map(block_cost, orbit[0])), len(orbit[0]), orbit[0]


@cache
def term_counts(K: int, variant: str) -> tuple[int, int]:
    """(terms, isomorphism classes) over all tracked slices: Σ_p |D_p| and the number of slice-symmetry orbits."""
    terms = [t for p in tracked_slice_types(K, variant) for t in admissible_diagrams(p, K, variant)]
    return sum(t.orbit_size for t in terms), len(terms)


# ---------------------------------------------------------------------------------------------
# Power cumulants → cumulants (docs/method.md §6.6)


def power_type(u: Vector) -> IntPartition:
    """The slice type of pK_u: the nonzero entries of u in non-increasing order."""
    return tuple(sorted((x for x in u if x), reverse=True))


@cache
def power_to_cumulant_terms(p: IntPartition) -> tuple[tuple[int, Diagram], ...]:
    """The terms (C(ρ), ρ) of K_p[i] = Σ_ρ C(ρ) Π_{u∈ρ} pK_u[i restricted to supp u], zero C(ρ) dropped.

    ρ runs over the vector partitions of the vector p; C(ρ) = N(ρ) · Σ_τ (−1)^{|τ|−1} (|τ|−1)!, where N(ρ) is the
    number of set partitions of the |p| labelled legs of type ρ and τ runs over the set partitions of the blocks
    of ρ in which no τ-block holds two ρ-blocks that share a coordinate.
    """
    out = []
    for rho in vector_partitions(p):
        mobius = 0
        for tau in set_partitions(len(rho)):
            if all(
                not set(support(rho[a])) & set(support(rho[b]))
                for block in tau
                for a, b in itertools.combinations(block, 2)
            ):
                mobius += (-1) ** (len(tau) - 1) * math.factorial(len(tau) - 1)
        if mobius:
            out.append((leg_partition_count(rho) * mobius, rho))
    return tuple(out)


# ---------------------------------------------------------------------------------------------
# Factored propagation (docs/method.md §7)


def is_hypertree(diagram: Diagram) -> bool:
    """Whether the hypergraph of ν (edges supp(v) on the vertices they cover) is a hypertree.

    Parallel blocks on the same 2 coordinates merge into one edge; any other repeated support fails. Then the
    edges must pairwise share ≤ 1 vertex and satisfy Σ_e (|e| − 1) = #vertices − 1. The empty ν is a hypertree.
    """
    supports = Counter(support(v) for v in diagram)
    if any(count > 1 and len(edge) != 2 for edge, count in supports.items()):
        return False
    edges = list(supports)
    if any(len(set(e) & set(f)) > 1 for e, f in itertools.combinations(edges, 2)):
        return False
    vertices = {j for e in edges for j in e}
    return sum(len(e) - 1 for e in edges) == max(len(vertices) - 1, 0)


def factored_keeps_term(p: IntPartition, diagram: Diagram, K: int) -> bool:
    """Whether factored propagation (K = 3, 4) keeps ν on slice p (the reference's term set, docs/method.md §7.4).

    Two rules: on the top slice p = (1,)*K, ν must be a hypertree; on every slice, κ_K's all-distinct block
    (1,…,1) may only appear alone (its products with other blocks are dropped). Every SIMPLE/BASE diagram
    passes; AUGMENT loses some (e.g. the κ_2 triangle on the top slice, κ_3 × κ_2 on slice (2,1,1) at K = 3).
    The rule set is pinned by the reference's factored AUGMENT goldens, which it reproduces to round-off.
    """
    reads_top_block = any(sum(v) == K and max(v) == 1 for v in diagram)
    if reads_top_block and len(diagram) > 1:
        return False
    return p != (1,) * K or is_hypertree(diagram)
