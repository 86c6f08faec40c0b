"""Thin correction legs (``ThinCorrection``, docs/method.md §7.10): a new source's correction Q split as
diag(s) + P diag(f) + a low-rank residual Z Lᵀ."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .arrays import constant
from .diagrams import diagram_coefficients, prefix_product
from .plans import spec_cached
from .range_finder import range_basis, test_matrix
from .weighted import table_weighted_sums


@dataclass(frozen=True)
class ThinCorrection:
    """κ_3 sources whose correction leg Q is never mapped as a full matrix (docs/method.md §7.10). At a source's
    birth Q = diag(s) + P diag(f) + 3 Rᵀ: s the (3) slice's correction, P diag(f) the part of the (2,1) slice's
    correction that comes from the single-κ_2-edge diagrams (e_a Σ_ab u_b, u the path leg's Wick vector, so it is
    P's columns rescaled, f = 3e), and R the rest. R is replaced by a rank-``rank`` factorisation 3Rᵀ ≈ Z Lᵀ
    (randomized range finder: a fixed test matrix, ``power`` power iterations, QR; exact at rank ≥ the width), so
    Q = T diag(s) + P diag(f) + Z Lᵀ holds at every later layer (every later map acts on rows) with only T, P
    (n×m) and Z (n×rank) mapped: 4n²m + 2n²r a layer for the mapping, and the (2,1) slice grouped by right factor
    (X Tᵀ + Y Pᵀ + ((T∘T)L) Zᵀ)/3 costs the same, against 6n²m each for a full source. Rank 0 drops R."""

    rank: int
    power: int = 1

    def __post_init__(self) -> None:
        if self.rank < 0 or self.power < 0:
            raise ValueError(f"the thin correction needs rank ≥ 0, power ≥ 0; got {self}")


def thin_split(xp: Any, spec: dict, path: dict, slices: dict, wick: Any, cumulants: dict, p: Any, cubic: Any,
               double: Any) -> tuple[Any, Any, Any]:
    """The new source's correction Q = diag(s) + P diag(f) + residual (``ThinCorrection``): s = N(3)·g_(3) and,
    with g_(2,1) = S + R where S[a,b] = e_a Σ_ab u_b is the single-κ_2-edge part of K_(2,1) (``separable_left``;
    u = w(k, 1) the Wick vector of the path's legs, so that P[b,a] = u_b Σ_ab), f = N(2,1)·e and
    residual = N(2,1)·Rᵀ. Returns (s, f, residual) (n × m, zero on the diagonal)."""
    counts = spec["lower_slice_counts"]
    order = path_leg_order(path)
    if order is None:
        raise ValueError(f"the thin correction needs path legs of one κ_2 edge each, got {path}")
    f = counts["2,1"] * separable_left(xp, spec, slices, wick, cumulants, order)
    residual = counts["2,1"] * (cumulants[(2, 1)] - double).T - p * f[None, :]
    return counts["3"] * (cumulants[(3,)] - cubic), f, residual


def path_leg_order(term: dict) -> int | None:
    """The Wick order k of the path term's two legs when each is one κ_2 edge (its P = w(k, 1) ⊙ Σ), else None."""
    edges: dict[frozenset, list] = {}
    for degree, q, axes in term["blocks"]:
        edges.setdefault(frozenset(axes), []).append((degree, tuple(q)))
    (centre,) = set.intersection(*(set(edge) for edge in edges))
    if any(blocks != [(2, (1, 1))] for blocks in edges.values()):
        return None
    orders = {term["k"][other] for edge in edges for other in edge - {centre}}
    return orders.pop() if len(orders) == 1 else None


def separable_left(xp: Any, spec: dict, slices: dict, wick: Any, cumulants: dict, order: int) -> Any:
    """e with S[a,b] = e_a Σ_ab w_b(``order``, 1) the part of K_(2,1)[a,b] (a doubled) made of single-κ_2-edge
    diagram terms (``separable_terms``): Σ c · w_a(k, p_0) · Π (one-coordinate blocks on a) · K_(1)[a]^j, as
    Σ_m U_m ⊙ B_m over the distinct products B_m = Π blocks · K_(1)^j (stacked) with U_m = Σ c w(k, p_0) (one einsum
    of the Wick table with constant c, ``separable_weights``), then one einsum over the stack (``table_weighted_sums``,
    as ``power_vectors``)."""
    monomials, weights = spec_cached(spec, ("separable", frozenset(slices), order, tuple(wick.shape[:2])),
                                     lambda: separable_weights(spec, set(slices), order, tuple(wick.shape[:2])))
    products: dict[tuple, Any] = {}

    def factor(part: tuple | None) -> Any:  # a block (degree, q), or None: K_(1)
        return cumulants[(1,)] if part is None else slices[part]

    stacked = xp.stack([prefix_product(monomial, factor, products) if monomial else wick[0][0]
                        for monomial in monomials])
    coefficients = constant(xp, wick, (id(spec), "separable", frozenset(slices), order), lambda: weights)
    return table_weighted_sums(xp, coefficients, wick, stacked)


def separable_weights(spec: dict, available: set, order: int, shape: tuple) -> tuple[list, list]:
    """(monomials, c[m][k][p]) for ``separable_left``: each monomial the one-coordinate blocks (degree, q) of a
    ``separable_terms`` term and None for each K_(1) factor, c its terms' coefficients on the Wick table's (k, p)."""
    terms = separable_terms(spec, available, order)
    if not terms:
        raise ValueError("the thin correction found no single-κ_2-edge term of K_(2,1) in the plan")
    monomials = sorted({(*blocks, *(None,) * means) for _, _, _, blocks, means in terms}, key=repr)
    weights = [[[0.0] * shape[1] for _ in range(shape[0])] for _ in monomials]
    for c, k, p0, blocks, means in terms:
        weights[monomials.index((*blocks, *(None,) * means))][k][p0] += c
    return monomials, weights


def separable_terms(spec: dict, available: set, order: int) -> list[tuple]:
    """The terms of K_(2,1)[a,b] = Σ_parts c Π pK_parts that are e_a Σ_ab w_b(``order``, 1): a pK → K term with one
    two-coordinate part pK_q on axes (0, 1) times pK_(1) = K_(1) on axis 0 only (j times), and of pK_q the diagram
    terms with one κ_2 edge, any one-coordinate blocks on axis 0 and Wick order ``order`` on axis 1 (q_1 = 1).
    Returns (c, k_0, q_0, one-coordinate blocks, j) per term; every other term stays in the residual."""
    if [term["parts"] for e in spec["conversions"] if tuple(e["p"]) == (1,) for term in e["terms"]] != [[[[1], [0]]]]:
        return []  # pK_(1) is not K_(1): no mean factor is read from the cumulants
    types, _, coefficients = diagram_coefficients(spec, available, 2, None)
    edge = (2, (1, 1), (0, 1))
    edges: dict[tuple, list] = {}
    for (index, sig, k0, k1), c in sorted(coefficients.items()):
        others = [block for block in sig if block != edge]
        if (types[index][1] == 1 and k1 == order and len(others) == len(sig) - 1
                and all(axes == (0,) for _, _, axes in others)):
            edges.setdefault(types[index], []).append((c, k0, tuple((d, q) for d, q, _ in others)))
    (conversion,) = [e for e in spec["conversions"] if tuple(e["p"]) == (2, 1)]
    out = []
    for term in conversion["terms"]:
        parts = [(tuple(q), tuple(axes)) for q, axes in term["parts"]]
        matrices = [part for part in parts if len(part[1]) == 2]
        vectors = [part for part in parts if len(part[1]) == 1]
        if len(matrices) != 1 or matrices[0][1] != (0, 1) or any(part != ((1,), (0,)) for part in vectors):
            continue
        q = matrices[0][0]
        out.extend((term["c"] * c, k0, q[0], blocks, len(vectors)) for c, k0, blocks in edges.get(q, []))
    return out


def residual_factors(xp: Any, residual: Any, correction: ThinCorrection) -> tuple[Any, Any]:
    """(Z, L) with residual ≈ Z Lᵀ, Z (n × r) orthonormal, r = min(rank, n, m): a randomized range finder (a fixed
    test matrix, ``power`` times Y ← R Rᵀ Y, QR), L = Rᵀ Z; (4 + 4·power)n m r + 4nr² FLOPs. Exact at r = n (Z
    square orthogonal). Rank 0: empty factors."""
    rows, columns = residual.shape
    rank = min(correction.rank, rows, columns)
    if rank == 0:
        return residual[:, :0], residual[:0].T
    basis = range_basis(xp, residual, test_matrix(xp, residual, columns, rank)[0], correction.power)
    return basis, residual.T @ basis
