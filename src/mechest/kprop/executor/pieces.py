"""The radial pieces Sym(C ⊗ M^{⊗r}) (κ_4 at both orders, κ_3 at K = 2 augment), M = W Wᵀ: their slices, their
cores projected from the cumulants and mapped by W."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from .arrays import off_diagonal
from .plans import summed_types

LETTERS = "abcdefgh"


def zero_repeated(xp: Any, value: Any) -> Any:
    """Zero on repeated indices: nothing for a vector, the diagonal for a matrix."""
    return off_diagonal(xp, value) if len(value.shape) == 2 else value


def piece_slices(xp: Any, spec: dict, cores: dict, metric: Any, one_coordinate: bool = False) -> dict:
    """Slices of every radial piece Sym(C ⊗ M^{⊗r}) (core C a scalar or a vector, M the metric W Wᵀ):
    Σ_terms weight · einsum(C, M blocks), the terms from the spec, zero on repeated indices. With
    ``one_coordinate`` only the one-coordinate slices, which read only M's diagonal. A piece without a core in
    ``cores`` (one that κ_4's matrix core replaces, ``projected_cores``) has none."""
    out = {}
    for piece in spec["pieces"]:
        if piece["degree"] not in cores:
            continue
        core = cores[piece["degree"]]
        for entry in piece["slices"]:
            q = tuple(entry["q"])
            if one_coordinate and len(q) > 1:
                continue
            value = None
            for term in entry["terms"]:
                subscripts, operands = list(term["metric"]), [metric] * len(term["metric"])
                if term["core"]:  # a vector core, which takes the weight (n, not n², work)
                    subscripts, operands, weight = [term["core"], *subscripts], [term["weight"] * core, *operands], None
                else:  # a scalar core, multiplied into the weight
                    weight = term["weight"] * core if len(core.shape) == 0 else term["weight"]
                product = xp.einsum(",".join(subscripts) + "->" + LETTERS[: len(q)], *operands)
                product = product if weight is None else weight * product
                value = product if value is None else value + product
            out[(piece["degree"], q)] = zero_repeated(xp, value)
    return out


def projected_cores(spec: dict, cumulants: dict, n: int, covered: Collection[int] = ()) -> dict:
    """Core of each radial piece, P_{≥r}K = Sym(C ⊗ I^{⊗r}) with C = ā_r(n) · L^r K (r = ⌊d/2⌋), L^r K from the
    dense slices: Σ weight · K_p summed over its capped axes (a scalar, or a vector on the one kept axis). None for
    the pieces of a degree in ``covered`` (κ_4's, where its matrix core is kept: that core's slices replace the
    piece's)."""
    cores = {}
    for piece in spec["pieces"]:
        if piece["degree"] in covered:
            continue
        total = None
        for entry in piece["laplacian"]:
            value = cumulants[tuple(entry["p"])]
            if entry["summed"] and tuple(entry["p"]) not in summed_types(spec):  # those are sums already
                value = value.sum(axis=tuple(entry["summed"]))
            value = entry["weight"] * value
            total = value if total is None else total + value
        cores[piece["degree"]] = piece["projection"][n] * total
    return cores


def mapped_cores(weight: Any, cores: dict) -> dict:
    """Sym(C ⊗ I^{⊗r}) mapped by W on every leg is Sym(W·C ⊗ (W Wᵀ)^{⊗r}): a vector core is multiplied by W."""
    return {degree: weight @ core if len(core.shape) == 1 else core for degree, core in cores.items()}
