"""The K = 3 simple factored plan as plain data (JSON) for the array-namespace executor mechest.whest.propagate.

Everything combinatorial is read from mechest at export time, never typed in: the diagram terms and pK → K
conversions of the compiled plan (mechest.kprop.plan.compile_plan), the slice types the factored step computes
densely (mechest.kprop.factored.dense_slice_types), the einsum terms of the κ_4 trace piece's slices and the
Laplacian weights and projection coefficients that bring κ_4 back to that piece (mechest.tensors.harmonic), and
the set-partition counts of the lower-slice correction (mechest.combinatorics).
"""

from __future__ import annotations

from mechest.combinatorics import set_partition_count_of_type
from mechest.kprop.factored import TOP, dense_slice_types, factored_plan
from mechest.kprop.plan import Plan, SliceTerm
from mechest.tensors import harmonic

ORDER = 3
VARIANT = "simple"
MAX_WIDTH = 4096


def _term(term: SliceTerm) -> dict:
    return {"c": term.coefficient, "k": list(term.derivatives),
            "blocks": [[b.degree, list(b.slice_type), list(b.axes)] for b in term.blocks]}


def _trace_degree(plan: Plan) -> int:
    """The one degree kept as a pure trace (radial index d/2); the executor supports exactly this layout."""
    (degree,) = [d for d, r in plan.radial.items() if r > 0]
    if 2 * plan.radial[degree] != degree:
        raise NotImplementedError(f"degree {degree} kept at radial index {plan.radial[degree]}, not as a pure trace")
    return degree


def _trace_slices(degree: int, types: tuple) -> list[dict]:
    """Slices q of Sym(c·M^{⊗d/2}) read by the diagrams: weighted einsums over metric blocks (core order 0)."""
    out = []
    for q in types:
        terms = harmonic._slice_terms(q, 0, degree // 2)
        out.append({"q": list(q), "terms": [{"weight": t.weight, "metric": list(t.metric_subscripts)} for t in terms]})
    return out


def _trace_laplacian(degree: int, types: tuple) -> list[list]:
    """[p, weight]: L^{d/2} T = Σ_p weight_p · Σ S_p over the dense slices p of degree d (all blocks capped)."""
    out = []
    for p in types:
        for caps in harmonic._cap_distributions(p, degree // 2):
            q, _, _ = harmonic._capped_layout(p, caps)
            if q != ():
                raise AssertionError(f"slice {p} with caps {caps} leaves {q}")
            out.append([list(p), harmonic.cap_weight(p, caps, q)])
    return out


def factored_spec(max_width: int = MAX_WIDTH) -> dict:
    """The plan data for K = 3 simple factored, with projection coefficients for widths 1..max_width."""
    plan = factored_plan(ORDER, VARIANT)
    dense = dense_slice_types(plan)
    degree = _trace_degree(plan)
    trace_types = tuple(sorted({b.slice_type for p in (*dense, TOP) for t in plan.diagrams[p] for b in t.blocks
                                if b.degree == degree}, reverse=True))
    r = plan.radial[degree]
    return {
        "order": ORDER,
        "variant": VARIANT,
        "radial": {str(d): r_d for d, r_d in plan.radial.items()},
        "k_max": plan.k_max,
        "p_max": plan.p_max,
        "dense_types": [list(p) for p in dense],
        "diagrams": [{"p": list(p), "terms": [_term(t) for t in plan.diagrams[p]]} for p in (*dense, TOP)],
        "conversions": [{"p": list(p), "terms": [{"c": c.coefficient,
                                                  "parts": [[list(f.slice_type), list(f.axes)] for f in c.parts]}
                                                 for c in plan.conversions[p]]} for p in dense],
        "trace_degree": degree,
        "trace_slices": _trace_slices(degree, trace_types),
        "trace_laplacian": _trace_laplacian(degree, tuple(p for p in dense if sum(p) == degree)),
        "projection": [0.0] + [harmonic.projection_coefficients(n, degree, r)[0] for n in range(1, max_width + 1)],
        "lower_slice_counts": {"3": set_partition_count_of_type((3,)), "2,1": set_partition_count_of_type((2, 1))},
    }
