"""κ_4 with a matrix core (``FourthCore``, docs/method.md §7.8) or the closure's covariance-shaped core
(``ShapedCore``, §7.9), and the core a scheme runs with (``fourth_core``)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from .arrays import off_diagonal
from .layers import Sandwich
from .linear import linear_variance, symmetric_product
from .plans import spec_cached
from .strassen import product


@dataclass(frozen=True)
class FourthCore:
    """κ_4 of K = 3 simple kept as K = 3 augment keeps it, at r = 1: Sym(G ⊗ M) with an n×n core G (M = W Wᵀ),
    instead of the pure trace c·Sym(M ⊗ M) (docs/method.md §7.8). G is mapped by W (W G Wᵀ, 4n³ a layer; 2n³ for
    its diagonal where only κ_4's (4) slice is read), κ_4's slices (4), (2,2) and (3,1) are read from W G Wᵀ and M
    (O(n²)), and the new G is the r = 1 projection of κ_4 computed from its (4), (2,2) and (3,1) slices and, with
    ``summed``, the O(n²) part of the capped sum Σ_a K_(2,1,1)[a,b,c] (``core_summed``; augment's κ_3 contraction
    and matrix-product terms there cost O(n³) per source and are left out). ``two`` also adds K = 3 augment's extra
    terms on the two-coordinate slices (1,1), (2,1), (2,2) (κ_2 × κ_3, κ_2 × κ_4, κ_4's (3,1) block, κ_2³; O(n²)
    each). Needs the plan data of mechest.kprop.spec.fourth_core_spec; equals the dense engine run on
    mechest.kprop.spec.fourth_core_plan(two) (tests/test_augment_cheap.py).

    ``shape`` (the closure, docs/method.md §7.9): G keeps its projected diagonal g and its off-diagonal is modelled
    as shape·ρ times the covariance's, ρ = Σ_i g_i / Σ_i Σ_ii, so G = diag(g − λ·diag Σ) + λΣ with λ = shape·ρ
    (``ShapedCore``): n + 1 numbers, mapped by one product, W diag(·) Wᵀ + λ·W Σ Wᵀ (W Σ Wᵀ is the next
    covariance, computed anyway). None: G's off-diagonal from the slices.

    ``feed`` (with ``shape``): each new κ_3 source also gets K = 3 augment's top-slice term that reads κ_4's
    (2,1,1) block, through the model's leading part λ·Σ_ab M_cc (``feed_source``): a term Sym(Σ_k β_k P_k ⊗ T_k
    ⊗ y) on the source's own legs and one vector y, carried with it (y mapped like the legs, n² a layer) and read
    by the existing (2,1) product (``feed_terms``). A compressed source (``Compression``) loses its feed
    (``compressed``): only the ``age`` newest keep theirs.

    ``slice_feed`` = r > 0 (with ``shape``): each new κ_3 source also gets K = 3 augment's top-slice terms with one
    κ_2 edge and one κ_3 (2,1) block (``slice_feed_source``): Sym(Σ_k P_k ⊗ T_k ⊗ L_k) with an n×n leg L read from
    κ_3's (2,1) slice, factorised at rank r, L ≈ y βᵀ, and carried beside the closure's feed as one feed of rank
    r + 1 (≈ 6n²r a source and layer, no n³ product). 0: off."""

    summed: bool = True
    two: bool = False
    shape: float | None = None
    feed: bool = False
    slice_feed: int = 0

    def __post_init__(self) -> None:
        if self.shape is not None and (self.summed or not math.isfinite(self.shape) or self.shape < 0):
            raise ValueError(f"the closure's shape needs summed=False and a finite shape ≥ 0; got {self}")
        if (self.feed or self.slice_feed) and self.shape is None:
            raise ValueError(f"the feeds are options of the closure (a shape); got {self}")
        if self.slice_feed < 0:
            raise ValueError(f"the slice feed needs a rank ≥ 0; got {self}")


@dataclass(frozen=True)
class ShapedCore:
    """κ_4's core in the closure's form (``FourthCore.shape``): G = diag(diagonal) + multiple·Σ, Σ the covariance
    of the same layer's activations (carried beside it as ``PlannedState.cov``)."""

    diagonal: Any
    multiple: Any


def core_spec(spec: dict, core: FourthCore) -> dict:
    """``spec`` with the matrix core's data merged in: the (3,1) slice's diagram and pK → K terms (with ``two`` also
    the extra terms of the two-coordinate slices), its k_max, and the two-coordinate types the core reads as
    matrices ("matrix_types", which ``summed_types`` keeps)."""
    if "fourth_core" not in spec:
        raise ValueError("the matrix core needs the plan data of mechest.kprop.spec.fourth_core_spec")

    def make() -> dict:
        extra = spec["fourth_core"]
        more = {tuple(entry["p"]): entry["terms"] for entry in extra["two"]} if core.two else {}
        diagrams = [{"p": entry["p"], "terms": [*entry["terms"], *more.get(tuple(entry["p"]), [])]}
                    for entry in spec["diagrams"]]
        return {**spec, "diagrams": [*diagrams, *extra["diagrams"]],
                "conversions": [*spec["conversions"], *extra["conversions"]],
                "dense_types": [*spec["dense_types"], *(entry["p"] for entry in extra["diagrams"])],
                "k_max": extra["k_max"], "matrix_types": extra["matrix_types"]}

    return spec_cached(spec, ("fourth core", core.two), make)


def core_slices(xp: Any, weight: Any, core: Any, gram: Any, pre_cov: Any, levels: int = 0,
                sandwich: Sandwich | None = None) -> tuple[Any, dict]:
    """(W G Wᵀ, κ_4's slices) for κ_4 = Sym(W G Wᵀ ⊗ M) after z = W a, M = ``gram`` = W Wᵀ: (4) G_ii M_ii,
    (2,2) (G_ii M_jj + G_jj M_ii + 4 G_ij M_ij)/6 and (3,1) (G_ii M_ij + G_ij M_ii)/2 (tripled coordinate first).
    ``core`` is G (n×n) or a ``ShapedCore`` (``pre_cov`` = W Σ Wᵀ); W G Wᵀ as in ``mapped_core``."""
    mapped = mapped_core(xp, weight, core, pre_cov, levels, sandwich)
    diagonal, metric_diagonal = xp.diag(mapped), xp.diag(gram)
    slices = {(4, (4,)): diagonal * metric_diagonal,
              (4, (2, 2)): off_diagonal(xp, (diagonal / 6)[:, None] * metric_diagonal[None, :]
                                        + (metric_diagonal / 6)[:, None] * diagonal[None, :]
                                        + (mapped * (2 / 3)) * gram),
              (4, (3, 1)): off_diagonal(xp, (diagonal / 2)[:, None] * gram + mapped * (metric_diagonal / 2)[:, None])}
    return mapped, slices


def mapped_core(xp: Any, weight: Any, core: Any, pre_cov: Any, levels: int = 0,
                sandwich: Sandwich | None = None) -> Any:
    """W G Wᵀ: two products for an n×n G; one for a ``ShapedCore``, W diag(d) Wᵀ + λ·W Σ Wᵀ (``pre_cov``); by the
    backend's ``sandwich`` where it has one."""
    if isinstance(core, ShapedCore):
        spread = sandwich(weight, core.diagonal) if sandwich is not None else None
        if spread is None:
            spread = product(xp, weight * core.diagonal[None, :], weight, levels, transposed=True)
        return spread + core.multiple * pre_cov
    return symmetric_product(weight, core, xp, levels, sandwich)


def mapped_core_diagonal(xp: Any, weight: Any, core: Any, pre_var: Any, levels: int = 0) -> Any:
    """diag(W G Wᵀ): 2n³ for an n×n G; O(n²) for a ``ShapedCore``, (W∘W) d + λ·diag(W Σ Wᵀ) (``pre_var``)."""
    if isinstance(core, ShapedCore):
        return (weight * weight) @ core.diagonal + core.multiple * pre_var
    return linear_variance(xp, weight, core, levels)


def core_summed(xp: Any, spec: dict, slices: dict, wick: Any, mapped: Any | None, gram: Any | None) -> Any:
    """Σ_{a ∉ {b,c}} of the (2,1,1) terms of ``spec["fourth_core"]["summed"]``, the matrix over (b, c) before
    symmetrisation: c·w_a(1,2) κ_2[a,c] κ_2[b,c] w_b(1) w_c(2) and c·w_a(1,2) κ_4[c,c,a,b] w_b(1) w_c(2), with
    κ_4[c,c,a,b] = (G_cc M_ab + G_ab M_cc + 2 G_ca M_cb + 2 G_cb M_ca)/6, each in O(n²) (the sum over a is a
    matrix-vector product, minus its a = b and a = c entries)."""
    total = None
    for term in spec["fourth_core"]["summed"]:
        shape = tuple((d, tuple(q), tuple(a)) for d, q, a in term["blocks"])
        first, left, right = wick[term["k"][0]][2], wick[term["k"][1]][1], wick[term["k"][2]][1]
        if shape == ((2, (1, 1), (0, 2)), (2, (1, 1), (1, 2))):
            cov = slices[(2, (1, 1))]
            inner = cov * ((cov @ first)[None, :] - first[:, None] * cov)
        elif shape == ((4, (2, 1, 1), (2, 0, 1)),):
            if mapped is None:
                continue  # no κ_4 yet (the first layer)
            core_off, metric_off = off_diagonal(xp, mapped), off_diagonal(xp, gram)
            core_diagonal, metric_diagonal = xp.diag(mapped), xp.diag(gram)
            core_first, metric_first = core_off @ first, metric_off @ first
            inner = (core_diagonal[None, :] * (metric_first[:, None] - first[None, :] * metric_off)
                     + metric_diagonal[None, :] * (core_first[:, None] - first[None, :] * core_off)
                     + 2 * metric_off * (core_first[None, :] - first[:, None] * core_off)
                     + 2 * core_off * (metric_first[None, :] - first[:, None] * metric_off)) / 6
        else:
            raise ValueError(f"unexpected term of the (2,1,1) capped sum: {term}")
        value = term["c"] * left[:, None] * inner * right[None, :]
        total = value if total is None else total + value
    return total


def core_projection(xp: Any, spec: dict, cumulants: dict, summed: Any | None, n: int) -> Any:
    """The core G of P_{≥1} κ_4 = Sym(G ⊗ I) (docs/method.md §3.2): G = ā_1 L K + 2ā_2 tr(L K)·I with
    (L K)_ii = 12 (K_(4)[i] + Σ_j K_(2,2)[i,j]) and, off the diagonal, (L K)_bc = 12 (K_(3,1)[b,c] + K_(3,1)[c,b]
    + sym(Σ_a K_(2,1,1)[a,b,c])) (``summed``: the capped sum before symmetrisation, or None)."""
    first = spec["fourth_core"]["projection"][n][0]
    off = cumulants[(3, 1)] + cumulants[(3, 1)].T
    if summed is not None:
        off = off + (summed + summed.T) / 2
    return xp.diag(core_diagonal(spec, cumulants, n)) + (12 * first) * off_diagonal(xp, off)


def core_diagonal(spec: dict, cumulants: dict, n: int) -> Any:
    """The diagonal of ``core_projection``'s G: ā_1 (L K)_ii + 2ā_2 tr(L K), (L K)_ii = 12 (K_(4)[i] + Σ_j
    K_(2,2)[i,j])."""
    first, second = spec["fourth_core"]["projection"][n]
    diagonal = 12 * (cumulants[(4,)] + cumulants[(2, 2)].sum(axis=1))
    return first * diagonal + 2 * second * diagonal.sum()


def shaped_core(xp: Any, spec: dict, cumulants: dict, shape: float, n: int) -> ShapedCore:
    """The closure's core (``FourthCore.shape``): G's projected diagonal g kept, its off-diagonal λ·Σ_off with
    λ = shape·Σ_i g_i / Σ_i Σ_ii (Σ = the covariance of these activations; λ = 0 where every variance is 0)."""
    diagonal, variance = core_diagonal(spec, cumulants, n), cumulants[(2,)]
    total = xp.sum(variance)  # 0 only where every unit is dead (then g is 0 too): λ = 0, not 0/0
    multiple = shape * xp.sum(diagonal) / xp.where(total > 0, total, 1.0)
    return ShapedCore(diagonal - multiple * variance, multiple)


def core_next(xp: Any, spec: dict, core: FourthCore, slices: dict, wick: Any, cumulants: dict, mapped: Any | None,
              gram: Any | None, n: int) -> Any:
    """The new core after the nonlinearity: ``core_projection`` of the cumulants and ``core_summed``, or with
    ``core.shape`` the closure's ``shaped_core``."""
    if core.shape is not None:
        return shaped_core(xp, spec, cumulants, core.shape, n)
    summed = core_summed(xp, spec, slices, wick, mapped, gram) if core.summed else None
    return core_projection(xp, spec, cumulants, summed, n)


def fourth_core(order: int, variant: str) -> FourthCore | None:
    """The κ_4 core a (order, variant) runs with: K = 3 "core" and "closure" (``run_scheme``), else None."""
    if (order, variant) == (3, "core"):
        return FourthCore(summed=False)
    if (order, variant) == (3, "closure"):
        return FourthCore(summed=False, two=True, shape=CLOSURE_SHAPE, feed=True, slice_feed=SLICE_FEED_RANK)
    return None


SLICE_FEED_RANK = 16
"""The rank of the closure scheme's slice feed (``FourthCore.slice_feed``): at 1024×16 rank 32 changes the MSE by
< 0.1% and at 256×4 rank 8 by 0.3% (docs/results.md, "The slice feed"); a cost knob, not a fitted constant."""


CLOSURE_SHAPE = 1.5
"""The closure's multiple of ρ (``FourthCore.shape``, docs/method.md §7.9), calibrated: the best of a grid of shapes
on three 256×8 networks disjoint from every scored one (benchmarks/closure_fit.py; the derived value, G
proportional to the covariance, is 1: −5% MSE on the calibration nets, −0.6% to −11% on the scored ones)."""
