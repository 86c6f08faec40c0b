"""Plans as plain data (JSON) for the array-namespace executor mechest.kprop.executor: K = 3 simple factored
and K = 2 augment.

Everything combinatorial is read from mechest at export time, never typed in: the diagram terms and pK → K
conversions of the compiled plan (mechest.kprop.plan.compile_plan), the slice types the factored step computes
densely (mechest.kprop.factored.dense_slice_types), the einsum terms of the radial pieces' slices and the
Laplacian weights and projection coefficients that bring a cumulant back to its piece (mechest.math.tensors.harmonic),
and the set-partition counts of the lower-slice correction (mechest.math.combinatorics).
"""

from __future__ import annotations

from dataclasses import replace

from mechest.kprop.factored import TOP, dense_slice_types, factored_plan
from mechest.kprop.plan import Plan, SliceTerm, compile_plan
from mechest.math.combinatorics import block_cost, set_partition_count_of_type
from mechest.math.tensors import harmonic

PLANS = ((3, "simple"), (2, "augment"))
"""The plans ``executor_spec`` compiles directly (K = 3 "core" is K = 3 simple's with the matrix core's data)."""
CORE_PLANS = ((3, "core"), (3, "closure"))
"""The schemes whose plan is K = 3 simple's with the matrix core's data (``fourth_core_spec``)."""
PACKAGE_PLANS = (*PLANS, (3, "core"))
"""The plans the WhestBench package ships (mechest.integrations.whestbench.export)."""
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
    1..max_width; K = 3 "core" and "closure" run K = 3 simple's with the matrix core's data (``fourth_core_spec``)."""
    if (order, variant) in CORE_PLANS:
        return fourth_core_spec(executor_spec(3, "simple", max_width))
    if (order, variant) not in PLANS:
        raise NotImplementedError(f"the executor runs {(*PLANS, *CORE_PLANS)}, not K = {order} {variant}")
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


# ---------------------------------------------------------------------------------------------
# κ_4 with a matrix core (docs/method.md §7.8)


def _core_keeps(term: SliceTerm) -> bool:
    """A term of κ_4's (3,1) or (2,1,1) slice that the matrix-core option evaluates: cost ≤ 2 (what K = 3 simple
    would have there) or κ_4's own off-diagonal block alone (its carried part)."""
    if sum(block_cost(b.slice_type) for b in term.blocks) <= 2:
        return True
    return len(term.blocks) == 1 and (term.blocks[0].degree, term.blocks[0].slice_type) in {(4, (3, 1)),
                                                                                          (4, (2, 1, 1))}


def _summed_is_quadratic(blocks: tuple) -> bool:
    """Whether a term of the (2,1,1) slice enters its capped sum Σ_a K[a,a,b,c] in O(n²): no all-distinct
    3-tensor (a contraction of every κ_3 source) and the doubled coordinate a not joined to both b and c (a
    matrix product)."""
    if any(len(b.axes) == 3 and b.slice_type == TOP for b in blocks):
        return False
    touching = [b for b in blocks if 0 in b.axes and len(b.axes) > 1]
    if len(touching) == 1 and len(touching[0].axes) == 3 and touching[0].axes[0] != 0:
        return True
    return not {1, 2} <= {axis for b in touching for axis in b.axes}


def fourth_core_plan(two: bool = False, summed: bool = True) -> Plan:
    """The plan the matrix-core option evaluates, as a mechest Plan (the dense engine's oracle): the factored K = 3
    augment plan with κ_4 at r = 1, K = 3 simple's terms on every slice K = 3 simple has, on κ_4's (3,1) slice the
    terms ``_core_keeps`` keeps, and on its (2,1,1) slice those of them that are O(n²) in the capped sum
    (``_summed_is_quadratic``); of the (2,1,1) pK → K terms only pK_(2,1,1) itself (the others are a κ_3
    contraction and a matrix product). ``two``: also augment's extra terms on the two-coordinate slices (1,1),
    (2,1), (2,2) (O(n²) each); ``summed`` False: no (2,1,1) terms (``FourthCore(summed=False)``)."""
    simple, augment = factored_plan(3, "simple"), factored_plan(3, "augment")
    diagrams = {}
    for p in augment.slice_types:
        if p in simple.diagrams:
            diagrams[p] = augment.diagrams[p] if two and len(p) == 2 else simple.diagrams[p]
        elif p == (3, 1):
            diagrams[p] = tuple(t for t in augment.diagrams[p] if _core_keeps(t))
        elif summed:
            diagrams[p] = tuple(t for t in augment.diagrams[p] if _core_keeps(t) and _summed_is_quadratic(t.blocks))
        else:
            diagrams[p] = ()
    conversions = dict(augment.conversions)
    conversions[(2, 1, 1)] = tuple(c for c in conversions[(2, 1, 1)] if len(c.parts) == 1)
    block_types = frozenset((b.degree, b.slice_type) for terms in diagrams.values() for t in terms for b in t.blocks)
    return replace(augment, variant="core", diagrams=diagrams, conversions=conversions, block_types=block_types,
                   k_max=max(max(t.derivatives) for terms in diagrams.values() for t in terms))


def fourth_core_spec(spec: dict, max_width: int | None = None) -> dict:
    """``spec`` (K = 3 simple) with the data of the matrix-core option (docs/method.md §7.8) under "fourth_core":
    the (3,1) slice's diagram and pK → K terms ("diagrams", "conversions"), the (2,1,1) terms of the capped sum
    ("summed"), augment's extra terms on the two-coordinate slices ("two"), the r = 1 projection coefficients
    [ā_1, ā_2] for widths 0..max_width ("projection"), the two-coordinate slice types of κ_4 the projection reads
    as matrices ("matrix_types"), K = 3 augment's top-slice term with one κ_4 (2,1,1) block ("feed", read by the
    closure's feed, mechest.kprop.executor.FourthCore.feed), its top-slice terms with one κ_2 edge and one κ_3
    (2,1) block ("slice_feed", mechest.kprop.executor.FourthCore.slice_feed) and k_max. All read from
    ``fourth_core_plan`` (the feeds from the factored augment plan); the plan's own keys are unchanged (the executor
    merges them in only when asked to: mechest.kprop.executor.FourthCore)."""
    if (spec["order"], spec["variant"]) != (3, "simple"):
        raise NotImplementedError("the matrix core extends the K = 3 simple plan")
    width = spec["max_width"] if max_width is None else max_width
    plan, full = fourth_core_plan(), fourth_core_plan(two=True)
    top = factored_plan(3, "augment").diagrams[TOP]
    feed = [_term(t) for t in top if [(b.degree, b.slice_type) for b in t.blocks] == [(4, (2, 1, 1))]]
    slice_feed = [_term(t) for t in top
                  if sorted((b.degree, b.slice_type) for b in t.blocks) == [(2, (1, 1)), (3, (2, 1))]]
    conversions = [{"c": c.coefficient, "parts": [[list(f.slice_type), list(f.axes)] for f in c.parts]}
                   for c in plan.conversions[(3, 1)]]
    projection = [[0.0, 0.0]] + [list(harmonic.projection_coefficients(n, 4, 1)) for n in range(1, width + 1)]
    return {**spec, "fourth_core": {
        "diagrams": [{"p": [3, 1], "terms": [_term(t) for t in plan.diagrams[(3, 1)]]}],
        "conversions": [{"p": [3, 1], "terms": conversions}],
        "summed": [_term(t) for t in plan.diagrams[(2, 1, 1)]],
        "two": [{"p": list(p), "terms": [_term(t) for t in full.diagrams[p] if t not in plan.diagrams[p]]}
                for p in dense_slice_types(factored_plan(3, "simple")) if len(p) == 2],
        "projection": projection,
        "feed": feed,
        "slice_feed": slice_feed,
        "matrix_types": [list(p) for p in plan.slice_types if len(p) == 2 and sum(p) == 4],
        "k_max": max(spec["k_max"], full.k_max)}}
