"""The propagation plan for one (K, variant): which pieces, slices, diagrams and conversions (no tensors).

Compiled once from mechest.math.combinatorics and cached; the engine only executes it. A block v of a diagram on a
slice with m coordinates reads the type-q slice of κ_|v|, q = the nonzero entries of v in non-increasing
order, laid on the coordinates supp(v) sorted to match q (larger v_j first, ties by coordinate).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

from mechest.math.combinatorics import (
    Diagram,
    IntPartition,
    Vector,
    admissible_diagrams,
    d_max,
    factored_keeps_term,
    power_to_cumulant_terms,
    power_type,
    radial_index,
    tracked_slice_types,
)


@dataclass(frozen=True)
class Factor:
    """A slice of type ``slice_type`` (of a degree-``degree`` tensor) laid on product axes ``axes``."""

    degree: int
    slice_type: IntPartition
    axes: tuple[int, ...]


@dataclass(frozen=True)
class SliceTerm:
    """One orbit of diagrams: coefficient c(ν)·|orbit|, block factors, and Wick derivative orders k_j."""

    coefficient: float
    blocks: tuple[Factor, ...]
    derivatives: tuple[int, ...]


@dataclass(frozen=True)
class Conversion:
    """One term C(ρ) Π_{u∈ρ} pK_u of the power-cumulant → cumulant map for a slice."""

    coefficient: float
    parts: tuple[Factor, ...]


@dataclass(frozen=True)
class Plan:
    """Everything the engine needs for one (order, variant)."""

    order: int
    variant: str
    term_set: str
    radial: dict[int, int]
    slice_types: tuple[IntPartition, ...]
    diagrams: dict[IntPartition, tuple[SliceTerm, ...]]
    conversions: dict[IntPartition, tuple[Conversion, ...]]
    block_types: frozenset[tuple[int, IntPartition]]
    k_max: int
    p_max: int


def factor_of(v: Vector) -> Factor:
    """The slice of κ_|v| (or pK_v) that vector v denotes, and the axes it lies on."""
    axes = tuple(sorted((j for j, x in enumerate(v) if x), key=lambda j: (-v[j], j)))
    return Factor(sum(v), power_type(v), axes)


def slice_term(diagram: Diagram, coefficient: float, m: int) -> SliceTerm:
    derivatives = tuple(sum(v[j] for v in diagram) for j in range(m))
    return SliceTerm(coefficient, tuple(factor_of(v) for v in diagram), derivatives)


TERM_SETS = ("full", "factored")


def reads_at_radial_index(p: IntPartition, r: int) -> bool:
    """Whether slice p of a degree-|p| tensor enters its projection P_{≥r}.

    P_{≥r} reads L^j T for j ≥ r (docs/method.md §3.3), and on a slice L^j needs j caps inside blocks, at most
    Σ_b ⌊p_b/2⌋ of them; so p is read iff Σ_b ⌊p_b/2⌋ ≥ r.
    """
    return sum(part // 2 for part in p) >= r


def needed_slice_types(
    tracked: tuple[IntPartition, ...],
    radial: dict[int, int],
    conversions: dict[IntPartition, tuple[Conversion, ...]],
    excluded: frozenset[IntPartition] = frozenset(),
) -> tuple[IntPartition, ...]:
    """The tracked slices some projection reads, closed under the parts their pK → K terms multiply.

    The others (e.g. κ_6's (2, 2, 1, 1) slice under K = 4 AUGMENT, whose piece is a pure trace) are tracked
    by the diagram rules but change no output, so the engine never forms them. ``excluded`` slices are left
    out of the result and of the closure.
    """
    wanted = {p for p in tracked if reads_at_radial_index(p, radial[sum(p)]) and p not in excluded}
    frontier = list(wanted)
    while frontier:
        for conversion in conversions[frontier.pop()]:
            for part in conversion.parts:
                if part.slice_type not in wanted and part.slice_type not in excluded:
                    wanted.add(part.slice_type)
                    frontier.append(part.slice_type)
    return tuple(p for p in tracked if p in wanted)


@cache
def compile_plan(order: int, variant: str, term_set: str = "full") -> Plan:
    """Enumerate the tracked pieces, the slice types that reach an output, their diagram orbits and pK → K terms.

    ``term_set="factored"`` keeps only the diagrams that factored propagation evaluates
    (``factored_keeps_term``: hypertrees on the all-distinct slice); it differs from "full" only for AUGMENT.
    """
    if term_set not in TERM_SETS:
        raise ValueError(f"unknown term set {term_set!r}; expected one of {TERM_SETS}")
    radial = {d: r for d in range(1, d_max(order, variant) + 1) if (r := radial_index(d, order, variant)) >= 0}
    tracked = tracked_slice_types(order, variant)
    all_conversions = {
        p: tuple(Conversion(float(c), tuple(factor_of(u) for u in rho)) for c, rho in power_to_cumulant_terms(p))
        for p in tracked
    }
    slice_types = needed_slice_types(tracked, radial, all_conversions)
    conversions = {p: all_conversions[p] for p in slice_types}
    diagrams = {
        p: tuple(slice_term(t.diagram, float(t.coefficient) * t.orbit_size, len(p))
                 for t in admissible_diagrams(p, order, variant)
                 if term_set == "full" or factored_keeps_term(p, t.diagram, order))
        for p in slice_types
    }
    needed = {part.slice_type for terms in conversions.values() for term in terms for part in term.parts}
    missing = needed - set(slice_types)
    if missing:
        raise AssertionError(f"power-cumulant slices {sorted(missing)} are needed but not tracked")
    block_types = frozenset((b.degree, b.slice_type) for terms in diagrams.values() for t in terms for b in t.blocks)
    k_max = max(max(t.derivatives) for terms in diagrams.values() for t in terms)
    return Plan(order, variant, term_set, radial, slice_types, diagrams, conversions, block_types, k_max, max(radial))
