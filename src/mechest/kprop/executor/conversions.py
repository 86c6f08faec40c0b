"""A layer's dense cumulants K_p (``dense_cumulants``): the power cumulants by diagram sums, then the plan's
pK → K conversions (``cumulants_from_powers``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

from .arrays import constant, off_diagonal
from .diagrams import power_matrices, power_vectors, prefix_product
from .plans import spec_cached, summed_types
from .weighted import stacked, weighted_sums


def placed(value: Any, axes: Sequence[int], m: int) -> Any:
    """A slice laid on ``axes`` of an m-coordinate product (m ≤ 2)."""
    if m == 1 or len(axes) == 2:
        return value if list(axes) in ([0], [0, 1]) else value.T
    return value[:, None] if axes[0] == 0 else value[None, :]


def dense_cumulants(xp: Any, spec: dict, slices: dict, wick: Any, only: tuple | None = None) -> dict:
    """K_p for the dense slice types (only K_``only`` and what it needs, if given): power cumulants by diagram
    sums, then pK → K (docs/method.md §6.3–§6.6). A two-coordinate type that is read only through its full sum
    (``summed_types``) is returned as Σ_ij K_p."""
    power = power_vectors(xp, spec, slices, wick, only)
    summed = summed_types(spec)
    if only is None or len(only) == 2:
        power.update(power_matrices(xp, spec, slices, wick, summed))
    return cumulants_from_powers(xp, spec, power, only, summed)


def memoised_product(parts: tuple, power: dict, m: int, products: dict) -> Any:
    """Π_parts pK_q laid on their axes, reusing (and filling) ``products``, keyed by prefixes of ``parts``."""
    return prefix_product(parts, lambda part: placed(power[part[0]], part[1], m), products)


class Conversions(NamedTuple):
    """The plan's pK → K conversions as data for ``cumulants_from_powers``: ``direct`` the (p, q) with K_p = pK_q;
    ``monomials`` the products of one-coordinate pK that the other types read (tuples of their types; the first,
    ``()``, is 1); the one-coordinate types ``vector_types`` with c[type, monomial] (``vector_rows``); the
    two-coordinate ones ``matrix_types`` with their terms u (two-coordinate parts, column monomial) and
    c[type, u, row monomial] (``matrix_rows``); whether those have a term without a two-coordinate part
    (``has_diagonal``); and the ``summed`` types with their terms ((parts, c), ...)."""

    direct: tuple
    monomials: tuple
    vector_types: tuple
    vector_rows: list
    matrix_types: tuple
    terms: tuple
    matrix_rows: list
    has_diagonal: bool
    summed: tuple


def cumulants_from_powers(xp: Any, spec: dict, power: dict, only: tuple | None,
                          summed: frozenset = frozenset()) -> dict:
    """K_p = Σ_terms c · Π_parts pK_q laid on their axes (the spec's pK → K conversions, ``conversions``), in a
    fixed number of operations: the products of one-coordinate pK that the terms read (monomials, shared prefixes
    once, ``prefix_product``) stacked as V, then the one-coordinate K = C V (one matmul with constant c), and the
    two-coordinate K_p = Σ_u diag(A[:, p, u]) M_u diag(V_u) with the row weights A = Σ c · V (one einsum) over the
    terms' distinct (two-coordinate parts M_u, column monomial V_u) (``weighted_sums``). A two-coordinate K is zero
    on the diagonal: it is where every term has a two-coordinate part (the power matrices are), else it is zeroed.
    A type in ``summed`` is computed as Σ_ij K_p, term by term (``summed_product``; ``power`` holds the same sums of
    the summed power types)."""
    plan = spec_cached(spec, ("conversions", only, summed), lambda: conversions(spec, only, summed))
    cumulants = {p: power[q] for p, q in plan.direct}
    products: dict[tuple, Any] = {}
    if plan.vector_types or plan.matrix_types:
        like = power[(1,)]
        ones = constant(xp, like, ("ones", like.shape[0]), lambda: [1.0] * like.shape[0])
        vectors: dict[tuple, Any] = {}
        monomials = xp.stack([ones, *(prefix_product(monomial, power.__getitem__, vectors)
                                      for monomial in plan.monomials[1:])])
        key = (id(spec), "conversions", only, summed)
        if plan.vector_types:
            values = constant(xp, like, (*key, "vectors"), lambda: plan.vector_rows) @ monomials
            cumulants.update({p: values[index] for index, p in enumerate(plan.vector_types)})
        if plan.matrix_types:
            width = like.shape[0]
            matrices = stacked(xp, [memoised_product(parts, power, 2, products) if parts else
                                    constant(xp, like, ("ones", width, width), lambda: [[1.0] * width] * width)
                                    for parts, _ in plan.terms])
            rows = xp.einsum("vi,quv->iqu", monomials, constant(xp, like, (*key, "matrices"),
                                                               lambda: plan.matrix_rows))
            values = weighted_sums(xp, rows, matrices, monomials[[column for _, column in plan.terms]])
            cumulants.update({p: off_diagonal(xp, values[:, index]) if plan.has_diagonal else values[:, index]
                              for index, p in enumerate(plan.matrix_types)})
    for p, row in plan.summed:
        value = None
        for parts, c in row:
            term = summed_product(xp, parts, power, products, summed)
            term = term if c == 1 else c * term
            value = term if value is None else value + term
        cumulants[p] = value
    return cumulants


def summed_product(xp: Any, parts: tuple, power: dict, products: dict, summed: frozenset) -> Any:
    """Σ_ij Π_parts pK_q laid on their axes: a summed type's own sum, or (Π matrices) contracted with the products
    u, v of the vectors on axes 0 and 1, uᵀ M v."""
    if any(q in summed for q, _ in parts):
        ((q, _),) = parts
        return power[q]
    matrices = tuple(part for part in parts if len(part[1]) == 2)  # a prefix: parts are sorted matrices first
    if not matrices:
        raise ValueError(f"a summed two-coordinate term without a two-coordinate part is not supported: {parts}")
    vectors = [None, None]
    for q, axes in parts[len(matrices):]:
        vectors[axes[0]] = power[q] if vectors[axes[0]] is None else vectors[axes[0]] * power[q]
    left, right = vectors
    matrix = memoised_product(matrices, power, 2, products)
    rows = xp.sum(matrix, axis=1) if right is None else matrix @ right
    return xp.sum(rows if left is None else rows * left)


def conversion_terms(spec: dict, m: int, only: tuple | None) -> tuple[list, list]:
    """(types, per type its terms: parts sorted so that products share prefixes, summed coefficient) of the plan's
    pK → K conversions on m coordinates."""
    entries = [e for e in spec["conversions"] if len(e["p"]) == m and (only is None or tuple(e["p"]) == only)]
    rows = []
    for entry in entries:
        row: dict[tuple, float] = {}
        for term in entry["terms"]:
            parts = tuple(sorted(((tuple(q), tuple(axes)) for q, axes in term["parts"]),
                                 key=lambda part: (-len(part[1]), part)))
            row[parts] = row.get(parts, 0.0) + term["c"]
        rows.append([(parts, c) for parts, c in row.items() if c])
    return [tuple(entry["p"]) for entry in entries], rows


def conversions(spec: dict, only: tuple | None, summed: frozenset) -> Conversions:
    """``Conversions`` for ``cumulants_from_powers``: a term's parts split into its two-coordinate parts and the
    monomials (sorted types) of its one-coordinate parts on each axis."""
    direct, vector_types, matrix_types, summed_rows = [], [], [], []
    vector_terms, matrix_terms = [], []
    for m in (1, 2):
        for p, row in zip(*conversion_terms(spec, m, only), strict=True):
            if p in summed:
                summed_rows.append((p, tuple(row)))
            elif len(row) == 1 and row[0][1] == 1 and len(row[0][0]) == 1 and row[0][0][0][1] == tuple(range(m)):
                direct.append((p, row[0][0][0][0]))
            else:
                (vector_types if m == 1 else matrix_types).append(p)
                split = [(tuple(part for part in parts if len(part[1]) == 2),
                          *(tuple(sorted(q for q, axes in parts if axes == (axis,))) for axis in range(m)), c)
                         for parts, c in row]
                (vector_terms if m == 1 else matrix_terms).append(split)
    monomials = sorted({(), *(monomial for row in vector_terms for _, monomial, _ in row),
                        *(monomial for row in matrix_terms for _, left, right, _ in row for monomial in (left, right))},
                       key=lambda monomial: (len(monomial), monomial))
    vector_rows = [[0.0] * len(monomials) for _ in vector_types]
    for index, row in enumerate(vector_terms):
        for _, monomial, c in row:
            vector_rows[index][monomials.index(monomial)] += c
    terms = sorted({(parts, monomials.index(right)) for row in matrix_terms for parts, _, right, _ in row})
    matrix_rows = [[[0.0] * len(monomials) for _ in terms] for _ in matrix_types]
    for index, row in enumerate(matrix_terms):
        for parts, left, right, c in row:
            matrix_rows[index][terms.index((parts, monomials.index(right)))][monomials.index(left)] += c
    has_diagonal = any(not parts for parts, _ in terms)
    return Conversions(tuple(direct), tuple(monomials), tuple(vector_types), vector_rows, tuple(matrix_types),
                       tuple(terms), matrix_rows, has_diagonal, tuple(summed_rows))
