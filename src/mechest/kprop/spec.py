"""Plans as plain data (JSON) for the array-namespace executor mechest.kprop.executor: K = 3 simple factored
and K = 2 augment.

Everything combinatorial is read from mechest at export time, never typed in: the diagram terms and pK → K
conversions of the compiled plan (mechest.kprop.plan.compile_plan), the slice types the factored step computes
densely (mechest.kprop.factored.dense_slice_types), the einsum terms of the radial pieces' slices and the
Laplacian weights and projection coefficients that bring a cumulant back to its piece (mechest.math.tensors.harmonic),
and the set-partition counts of the lower-slice correction (mechest.math.combinatorics).
"""

from __future__ import annotations

from mechest.kprop.factored import TOP, dense_slice_types, factored_plan
from mechest.kprop.plan import Plan, SliceTerm, compile_plan
from mechest.math.combinatorics import set_partition_count_of_type
from mechest.math.tensors import harmonic

PLANS = ((3, "simple"), (2, "augment"))
MAX_WIDTH = 4096


def _term(term: SliceTerm) -> dict:
    return {"c": term.coefficient, "k": list(term.derivatives),
            "blocks": [[b.degree, list(b.slice_type), list(b.axes)] for b in term.blocks]}


def _piece_slices(degree: int, r: int, types: list[tuple]) -> list[dict]:
    """Slices q of Sym(C ⊗ M^{⊗r}) read by the diagrams: Σ weight · einsum(core, metric blocks)."""
    out = []
    for q in types:
        terms = harmonic._slice_terms(q, degree - 2 * r, r)
        out.append({"q": list(q), "terms": [{"weight": t.weight, "core": t.core_subscripts,
                                             "metric": list(t.metric_subscripts)} for t in terms]})
    return out


def _piece_laplacian(degree: int, r: int, types: tuple) -> list[dict]:
    """L^r T = Σ weight · S_p summed over its capped axes, over the dense slices p of degree d and their cap
    distributions (the kept axes, at most one, carry the core's index)."""
    out = []
    for p in types:
        for caps in harmonic._cap_distributions(p, r):
            q, _, summed = harmonic._capped_layout(p, caps)
            out.append({"p": list(p), "weight": harmonic.cap_weight(p, caps, q), "summed": list(summed)})
    return out


def _pieces(plan: Plan, read_types: set, dense: tuple, max_width: int) -> list[dict]:
    """Every degree kept as a radial piece (r > 0): its slices read by the diagrams, its Laplacian and its
    projection coefficients for widths 1..max_width. The executor supports r = ⌊d/2⌋ (a scalar or vector core)."""
    out = []
    for degree, r in sorted(plan.radial.items()):
        if r == 0:
            continue
        if r != degree // 2:
            raise NotImplementedError(f"degree {degree} kept at radial index {r}: only r = d/2 rounded down is "
                                      "supported")
        types = sorted({q for d, q in read_types if d == degree}, reverse=True)
        out.append({"degree": degree, "r": r, "slices": _piece_slices(degree, r, types),
                    "laplacian": _piece_laplacian(degree, r, tuple(p for p in dense if sum(p) == degree)),
                    "projection": [0.0] + [harmonic.projection_coefficients(n, degree, r)[0]
                                           for n in range(1, max_width + 1)]})
    return out


def executor_spec(order: int, variant: str, max_width: int = MAX_WIDTH) -> dict:
    """The plan data for K = 3 simple (κ_3 factored) or K = 2 augment, with projection coefficients for widths
    1..max_width."""
    if (order, variant) not in PLANS:
        raise NotImplementedError(f"the executor runs {PLANS}, not K = {order} {variant}")
    factored = order == 3
    plan = factored_plan(order, variant) if factored else compile_plan(order, variant)
    dense = dense_slice_types(plan) if factored else tuple(plan.diagrams)
    read = (*dense, TOP) if factored else dense
    read_types = {(b.degree, b.slice_type) for p in read for t in plan.diagrams[p] for b in t.blocks}
    spec = {
        "order": order,
        "variant": variant,
        "radial": {str(d): r_d for d, r_d in plan.radial.items()},
        "k_max": plan.k_max,
        "p_max": plan.p_max,
        "dense_types": [list(p) for p in dense],
        "diagrams": [{"p": list(p), "terms": [_term(t) for t in plan.diagrams[p]]} for p in read],
        "conversions": [{"p": list(p), "terms": [{"c": c.coefficient,
                                                  "parts": [[list(f.slice_type), list(f.axes)] for f in c.parts]}
                                                 for c in plan.conversions[p]]} for p in dense],
        "pieces": _pieces(plan, read_types, dense, max_width),
        "max_width": max_width,
    }
    if factored:
        spec["lower_slice_counts"] = {"3": set_partition_count_of_type((3,)),
                                      "2,1": set_partition_count_of_type((2, 1))}
    return spec
