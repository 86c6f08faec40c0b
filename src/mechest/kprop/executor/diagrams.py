"""Power cumulants pK_p by the plan's diagram sums: the one-coordinate types by one product with the Wick table
(``power_vectors``), the two-coordinate ones by one batched product per group of types over their stacked terms
(``power_matrices``)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from .arrays import constant
from .plans import TOP, spec_cached
from .weighted import stacked, summed_weighted_sums, table_weighted_sums, weighted_sums

Signature = tuple  # ((degree, slice type, axes), ...): the slices a diagram term multiplies, and where


def signature(blocks: Sequence, transpose: bool = False) -> Signature:
    """A term's blocks as a sorted tuple; a symmetric two-coordinate slice type always lies on axes (0, 1).
    ``transpose`` swaps the two coordinates (the term's mirror image)."""
    out = []
    for degree, q, axes in blocks:
        axes = tuple(1 - a for a in axes) if transpose else tuple(axes)
        if len(axes) == 2 and q[0] == q[1]:
            axes = (0, 1)
        out.append((degree, tuple(q), axes))
    return tuple(sorted(out))


def diagram_coefficients(spec: dict, available: set, m: int, only: tuple | None) -> tuple[list, list, dict]:
    """The power-cumulant diagrams on m coordinates as data: (types p, signatures, {(q, s, k_0[, k_1]): c}),
    with pK_p = Σ_{s,k} c · Π_j w(k_j, p_j) ⊙ Π_{blocks of s} κ_block. Terms reading an absent slice drop out;
    on p_0 = p_1 each term is averaged with its mirror image, so the sum is already symmetric."""
    types, coefficients = [], {}
    for entry in spec["diagrams"]:
        p = tuple(entry["p"])
        if len(p) != m or p == TOP or (only is not None and sum(p) > sum(only)):
            continue
        types.append(p)
        mirrored = m == 2 and p[0] == p[1]
        for term in entry["terms"]:
            if any((degree, tuple(q)) not in available for degree, q, _ in term["blocks"]):
                continue
            images = [(signature(term["blocks"]), tuple(term["k"]), term["c"] / (2 if mirrored else 1))]
            if mirrored:
                images.append((signature(term["blocks"], transpose=True), tuple(term["k"])[::-1], term["c"] / 2))
            for sig, k, c in images:
                key = (types.index(p), sig, *k)
                coefficients[key] = coefficients.get(key, 0.0) + c
    coefficients = {key: c for key, c in coefficients.items() if c}  # terms that cancel (``sum_blocks`` divides by c)
    signatures = sorted({key[1] for key in coefficients})
    return types, signatures, coefficients


def placed_block(slices: dict, block: tuple, m: int) -> Any:
    """The slice κ_block of a signature's (degree, type, axes) laid on its axes of an m-coordinate slice."""
    degree, q, axes = block
    value = slices[(degree, q)]
    if len(axes) == 2:
        return value if axes == (0, 1) else value.T
    if m == 2:
        return value[:, None] if axes == (0,) else value[None, :]
    return value


def prefix_product(parts: tuple, factor: Callable[[Any], Any], products: dict) -> Any:
    """Π_{part in parts} factor(part), reusing (and filling) ``products``, keyed by prefixes of ``parts``: products
    whose parts share a prefix multiply it once."""
    if parts not in products:
        value = factor(parts[-1])
        products[parts] = value if len(parts) == 1 else prefix_product(parts[:-1], factor, products) * value
    return products[parts]


def power_vectors(xp: Any, spec: dict, slices: dict, table: Any, only: tuple | None) -> dict:
    """pK_p for the one-coordinate types p: U[q,s] = Σ_k c[q,s,k] w(k, p_q) (one einsum with the Wick table and
    constant c), then pK = Σ_s U[q,s] ⊙ B_s (one einsum over the stacked block products B_s;
    ``table_weighted_sums``)."""
    types, signatures, coefficients = spec_cached(spec, ("power vectors", frozenset(slices), only),
                                                  lambda: vector_coefficients(spec, set(slices), only, table.shape))
    memo: dict[tuple, Any] = {}
    products = xp.stack([prefix_product(sig, lambda block: placed_block(slices, block, 1), memo) if sig
                         else table[0][0] for sig in signatures])
    weights = constant(xp, table, (id(spec), "power vectors", frozenset(slices), only), lambda: coefficients)
    values = table_weighted_sums(xp, weights, table, products)
    return {p: values[i] for i, p in enumerate(types)}


def vector_coefficients(spec: dict, available: set, only: tuple | None, shape: tuple) -> tuple[list, list, list]:
    """(types, signatures, c[q][s][k][p] over the Wick table's (k, p), nonzero at p = p_q) for ``power_vectors``."""
    types, signatures, coefficients = diagram_coefficients(spec, available, 1, only)
    weights = [[[[0.0] * shape[1] for _ in range(shape[0])] for _ in signatures] for _ in types]
    for (q, sig, k), c in coefficients.items():
        weights[q][signatures.index(sig)][k][types[q][0]] += c
    return types, signatures, weights


class MatrixGroup(NamedTuple):
    """The two-coordinate types with one p_1 and one form (``summed``: returned as Σ_ij pK_p) in ``power_matrices``:
    ``types`` in order, ``rows`` the constant weights c[type, term u, k_0, p] (nonzero at p = the type's p_0) that
    make its row weights A[i, type, u] = Σ_{k_0} c w(k_0, p_0)_i from the Wick table."""

    summed: bool
    p1: int
    types: tuple
    rows: list


class MatrixTerms(NamedTuple):
    """The two-coordinate diagram sums as data for ``power_matrices``: ``types`` the plan's two-coordinate types,
    ``terms`` the stacked terms u, each (signature, k_1), and the ``groups`` (``MatrixGroup``) that read them."""

    types: list
    terms: tuple
    groups: tuple


def power_matrices(xp: Any, spec: dict, slices: dict, table: Any, summed: frozenset) -> dict:
    """pK_p for the two-coordinate types p: Σ_{s,k_0,k_1} c[p,s,k_0,k_1] w(k_0, p_0) ⊗ w(k_1, p_1) ⊙ B_s, zero on
    the diagonal because every B_s has a two-coordinate block, which is. Each distinct (s, k_1) is a term u with
    matrix B_u and column weight w(k_1, p_1), and the k_0 sum goes into the row weights A[i, p, u] =
    Σ_{k_0} c w(k_0, p_0)_i, so that pK_p = Σ_u diag(A[:, p, u]) B_u diag(w(k_1(u), p_1)) (``matrix_terms``). The
    block products B_u are formed once (shared prefixes once, ``prefix_product``) and stacked, and each group of
    types with one p_1 (``MatrixGroup``) takes four operations, whatever its number of types and terms: its row
    weights (one einsum with constant coefficients), its column weights (one gather from the Wick table) and
    ``weighted_sums`` (two). A type in ``summed`` is returned as Σ_ij pK_p (``summed_weighted_sums``, no n × n
    temporary). A type with no terms is None."""
    terms = spec_cached(spec, ("power matrices", frozenset(slices), summed, tuple(table.shape[:2])),
                        lambda: matrix_terms(spec, set(slices), summed, tuple(table.shape[:2])))
    out: dict[tuple, Any] = {}
    if terms.groups:
        products: dict[tuple, Any] = {}
        matrices = stacked(xp, [prefix_product(sig, lambda block: placed_block(slices, block, 2), products)
                                for sig, _ in terms.terms])
        for index, group in enumerate(terms.groups):
            coefficients = constant(xp, table, (id(spec), "power matrices", frozenset(slices), summed, index),
                                    lambda group=group: group.rows)
            rows = xp.einsum("kpi,qukp->iqu", table, coefficients)
            columns = table[[k1 for _, k1 in terms.terms], group.p1]
            if group.summed:
                values = summed_weighted_sums(xp, rows, matrices, columns)
                out.update({p: values[position, ...] for position, p in enumerate(group.types)})  # 0-d arrays
            else:
                values = weighted_sums(xp, rows, matrices, columns)
                out.update({p: values[:, position] for position, p in enumerate(group.types)})
    return {p: out.get(p) for p in terms.types}


def matrix_terms(spec: dict, available: set, summed: frozenset, shape: tuple) -> MatrixTerms:
    """``MatrixTerms`` for ``power_matrices`` from the plan's two-coordinate diagram coefficients on a Wick table
    of ``shape`` (k, p): the terms u are the distinct (signature, k_1) in sorted order, the groups the types'
    distinct (summed, p_1), each type's row weights c[u, k_0, p_0] its coefficients."""
    types, _, coefficients = diagram_coefficients(spec, available, 2, None)
    if any(all(len(axes) < 2 for _, _, axes in sig) for _, sig, _, _ in coefficients):
        raise ValueError("a two-coordinate diagram term without a two-coordinate block is not supported")
    terms = sorted({(sig, k1) for _, sig, _, k1 in coefficients})
    members: dict[tuple, list] = {}
    for q in sorted({key[0] for key in coefficients}):
        p = types[q]
        members.setdefault((p in summed, p[1]), []).append(q)
    groups = []
    for (is_summed, p1), indices in sorted(members.items()):
        rows = [[[[0.0] * shape[1] for _ in range(shape[0])] for _ in terms] for _ in indices]
        for (q, sig, k0, k1), c in coefficients.items():
            if q in indices:
                rows[indices.index(q)][terms.index((sig, k1))][k0][types[q][0]] += c
        groups.append(MatrixGroup(is_summed, p1, tuple(types[q] for q in indices), rows))
    return MatrixTerms(types, tuple(terms), tuple(groups))
