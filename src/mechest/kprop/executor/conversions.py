"""A layer's dense cumulants K_p (``dense_cumulants``): the power cumulants by diagram sums, then the plan's
pK → K conversions (``cumulants_from_powers``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .arrays import off_diagonal
from .diagrams import power_matrices, power_vectors, prefix_product
from .plans import spec_cached, summed_types


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


def cumulants_from_powers(xp: Any, spec: dict, power: dict, only: tuple | None,
                          summed: frozenset = frozenset()) -> dict:
    """K_p = Σ_terms c · Π_parts pK_q laid on their axes (the spec's pK → K conversions), the products built from
    memoised prefixes, c multiplying the last part where that is a vector on a two-coordinate type (n, not n², work).
    A two-coordinate K is zero on the diagonal: it is where every term has a two-coordinate part
    (the power matrices are), else it is zeroed. A type in ``summed`` is computed as Σ_ij K_p (``power`` holds the
    same sums of the summed power types)."""
    cumulants = {}
    for m in (1, 2):
        types, rows, has_diagonal = spec_cached(spec, ("conversions", m, only), lambda: conversion_terms(spec, m, only))
        products: dict[tuple, Any] = {}
        for p, row in zip(types, rows, strict=True):
            value = None
            for parts, c in row:
                if p in summed:
                    term = summed_product(xp, parts, power, products, summed)
                elif c != 1 and len(parts) > 1 and len(parts[-1][1]) < m:  # c into the last part, a vector
                    q, axes = parts[-1]
                    term, c = memoised_product(parts[:-1], power, m, products) * placed(c * power[q], axes, m), 1
                else:
                    term = memoised_product(parts, power, m, products)
                term = term if c == 1 else c * term
                value = term if value is None else value + term
            cumulants[p] = off_diagonal(xp, value) if has_diagonal and p not in summed else value
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


def conversion_terms(spec: dict, m: int, only: tuple | None) -> tuple[list, list, bool]:
    """(types, per type its terms (parts sorted so that products share prefixes, summed coefficient), whether some
    two-coordinate term lacks a two-coordinate part) for ``cumulants_from_powers``."""
    entries = [e for e in spec["conversions"] if len(e["p"]) == m and (only is None or tuple(e["p"]) == only)]
    rows = []
    for entry in entries:
        row: dict[tuple, float] = {}
        for term in entry["terms"]:
            parts = tuple(sorted(((tuple(q), tuple(axes)) for q, axes in term["parts"]),
                                 key=lambda part: (-len(part[1]), part)))
            row[parts] = row.get(parts, 0.0) + term["c"]
        rows.append([(parts, c) for parts, c in row.items() if c])
    has_diagonal = m == 2 and any(all(len(axes) < 2 for _, axes in parts) for row in rows for parts, _ in row)
    return [tuple(entry["p"]) for entry in entries], rows, has_diagonal
