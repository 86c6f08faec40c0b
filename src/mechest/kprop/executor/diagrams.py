"""Power cumulants pK_p by the plan's diagram sums: the one-coordinate types by one product with the Wick table
(``power_vectors``), the two-coordinate ones along chains of shared terms (``power_matrices``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

from .arrays import constant
from .plans import TOP, spec_cached

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


def block_product(slices: dict, sig: Signature, m: int, one: Any) -> Any:
    """Π_{blocks} κ_block laid on their axes of an m-coordinate slice (``one`` if there are none)."""
    value = None
    for degree, q, axes in sig:
        block = slices[(degree, q)]
        if len(axes) == 2:
            block = block if axes == (0, 1) else block.T
        elif m == 2:
            block = block[:, None] if axes == (0,) else block[None, :]
        value = block if value is None else value * block
    return one if value is None else value


def power_vectors(xp: Any, spec: dict, slices: dict, table: Any, only: tuple | None) -> dict:
    """pK_p for the one-coordinate types p: U[q,s] = Σ_k c[q,s,k] w(k, p_q) (one matrix product with the Wick
    table), then pK = Σ_s U[q,s] ⊙ B_s."""
    types, signatures, matrix = spec_cached(spec, ("power vectors", frozenset(slices), only),
                                            lambda: vector_coefficients(spec, set(slices), only, table.shape))
    products = xp.stack([block_product(slices, sig, 1, table[0][0]) for sig in signatures])
    weights = constant(xp, table, (id(spec), "power vectors", frozenset(slices), only), lambda: matrix)
    combined = (weights @ table.reshape(-1, table.shape[-1])).reshape(len(types), len(signatures), -1)
    values = xp.sum(combined * products[None], axis=1)
    return {p: values[i] for i, p in enumerate(types)}


def vector_coefficients(spec: dict, available: set, only: tuple | None, shape: tuple) -> tuple[list, list, list]:
    """(types, signatures, c as a matrix with row (q, s) and column (k, p) of the Wick table) for ``power_vectors``."""
    types, signatures, coefficients = diagram_coefficients(spec, available, 1, only)
    k_count, p_count = shape[0], shape[1]
    matrix = [[0.0] * (k_count * p_count) for _ in range(len(types) * len(signatures))]
    for (q, sig, k), c in coefficients.items():
        matrix[q * len(signatures) + signatures.index(sig)][k * p_count + types[q][0]] += c
    return types, signatures, matrix


class Chain(NamedTuple):
    """A run of two-coordinate diagram terms sharing (summed, p_1, k_0), accumulated once for every type reading it
    (``matrix_chains``): ``row`` the terms ((k_1, ((c, signature), ...)), ...) in ascending k_1, ``readers``
    {length: the types whose own row is the first ``length`` terms}."""

    summed: bool
    p1: int
    k0: int
    row: tuple
    readers: dict


def power_matrices(xp: Any, spec: dict, slices: dict, table: Any, summed: frozenset) -> dict:
    """pK_p for the two-coordinate types p: Σ_{s,k_0,k_1} c[q,s,k_0,k_1] w(k_0, p_0) ⊗ w(k_1, p_1) ⊙ B_s, zero on
    the diagonal because every B_s has a two-coordinate block, which is. The blocks B_s are first summed per
    (k_0, k_1) into X = Σ_s (c/c_0) B_s (``sum_blocks``, c_0 its first coefficient, shared by the types), c_0 going
    into the column vector, and the terms grouped by k_0: pK_p = Σ_{k_0} diag(w(k_0, p_0)) Y_{k_0} with
    Y_{k_0} = Σ_{k_1} X diag(c_0 w(k_1, p_1)). Types with the same p_1 and k_0 whose terms (coefficients included)
    are the first terms of a longer type's share that type's running sum: each reads Y along the ``Chain`` after
    its own number of terms. So a type costs two n × n operations per k_0, a chain two per term, and only one Y is
    alive at a time. A type in ``summed`` is returned as Σ_ij pK_p, its Y a vector Σ_{k_1} X (c_0 w(k_1, p_1)),
    one matrix-vector product a term and no n × n temporary. A type with no terms is None."""
    types, chains = spec_cached(spec, ("power matrices", frozenset(slices), summed),
                                lambda: matrix_chains(spec, set(slices), summed))
    one = table[0][0]
    block_sums: dict[tuple, tuple[float, Any]] = {}
    out: dict[tuple, Any] = {}
    for index, chain in enumerate(chains):
        if index and chain.k0 != chains[index - 1].k0:
            block_sums.clear()  # the chains come in order of k_0, and an X serves those of its k_0 alone
        y = None
        for length, (k1, blocks) in enumerate(chain.row, start=1):
            if blocks not in block_sums:
                block_sums[blocks] = sum_blocks(slices, blocks, one)
            scale, matrix = block_sums[blocks]
            right = table[k1, chain.p1] if scale == 1 else scale * table[k1, chain.p1]
            term = matrix @ right if chain.summed else matrix * right[None, :]
            y = term if y is None else y + term
            for p in chain.readers.get(length, ()):
                left = table[chain.k0, p[0]]
                term = xp.sum(left * y) if chain.summed else left[:, None] * y
                out[p] = out[p] + term if p in out else term
    return {p: out.get(p) for p in types}


def matrix_chains(spec: dict, available: set, summed: frozenset) -> tuple[list, list[Chain]]:
    """(types, chains) for ``power_matrices``: each type's terms grouped by k_0 into a row ((k_1, ((c, signature),
    ...)), ...) in ascending k_1, the rows of the types with the same (summed, p_1, k_0) merged into chains of which
    each row is a prefix, in order of k_0."""
    types, signatures, coefficients = diagram_coefficients(spec, available, 2, None)
    if any(all(len(axes) < 2 for _, _, axes in sig) for sig in signatures):
        raise ValueError("a two-coordinate diagram term without a two-coordinate block is not supported")
    rows: dict[tuple, dict] = {}
    for (q, sig, k0, k1), c in sorted(coefficients.items()):
        rows.setdefault((q, k0), {}).setdefault(k1, []).append((c, sig))
    groups: dict[tuple, list] = {}
    for (q, k0), row in rows.items():
        p = types[q]
        groups.setdefault((p in summed, p[1], k0), []).append((tuple((k1, tuple(row[k1])) for k1 in sorted(row)), p))
    chains = []
    for (is_summed, p1, k0), members in groups.items():
        own: list[tuple[tuple, dict]] = []
        for row, p in sorted(members, key=lambda member: -len(member[0])):
            chain = next((chain for chain in own if chain[0][: len(row)] == row), None)
            if chain is None:
                chain = (row, {})
                own.append(chain)
            chain[1].setdefault(len(row), []).append(p)
        chains.extend(Chain(is_summed, p1, k0, row, readers) for row, readers in own)
    return types, sorted(chains, key=lambda chain: chain.k0)


def sum_blocks(slices: dict, blocks: tuple, one: Any) -> tuple[float, Any]:
    """(c_0, Σ (c/c_0) · Π_{blocks of s} κ_block) over the (c, s) of ``blocks``, on two coordinates, c_0 the first c
    (the caller folds it into a vector)."""
    first = blocks[0][0]
    total = None
    for c, sig in blocks:
        value = block_product(slices, sig, 2, one)
        value = value if c == first else (c / first) * value
        total = value if total is None else total + value
    return first, total
