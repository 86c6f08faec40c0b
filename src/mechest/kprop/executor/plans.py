"""The exported plan ``spec`` (made by mechest.kprop.spec) as the executor reads it: what it supports
(``check_spec``), a per-plan cache of what is derived from it (``spec_cached``) and the two-coordinate types
read only through their sums (``summed_types``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

TOP = (1, 1, 1)


def check_spec(spec: dict) -> None:
    """Refuse a plan this executor does not implement. It handles κ_1 and κ_2 dense, κ_3 factored at order 3
    (radial index 0), and radial pieces with r = ⌊d/2⌋ (a scalar or vector core), on slices of ≤ 2 coordinates."""
    radial = {int(d): r for d, r in spec.get("radial", {}).items()}
    order = spec.get("order")
    pieces = {piece["degree"] for piece in spec.get("pieces", [])}
    expected = {d for d, r in radial.items() if r > 0}
    if (order not in (2, 3) or pieces != expected or any(radial[d] != d // 2 for d in pieces)
            or (order == 3 and radial.get(3) != 0)):
        raise ValueError(f"unsupported plan: order {order}, radial {spec.get('radial')}")
    if any(len(p) > 2 for p in spec["dense_types"]):
        raise ValueError("dense slices with more than two coordinates are not supported")


_SPEC_CACHES: dict[int, tuple[dict, dict]] = {}


def spec_cached(spec: dict, key: Any, make: Callable[[], Any]) -> Any:
    """``make()`` computed once per plan ``spec`` and ``key`` (what the executor derives from the plan's data: its
    coefficient lists). The cache holds the spec itself, so its id is not reused while the entry lives."""
    entry = _SPEC_CACHES.get(id(spec))
    if entry is None or entry[0] is not spec:
        entry = _SPEC_CACHES[id(spec)] = (spec, {})
    if key not in entry[1]:
        entry[1][key] = make()
    return entry[1][key]


def summed_types(spec: dict) -> frozenset:
    """The two-coordinate types whose K is read only as Σ_ij K_p (by a radial piece's Laplacian, summed over both
    axes): all but (1,1) (the covariance), (2,1) at K = 3 (the newest κ_3 source), those a Laplacian keeps an
    axis of, and those an extension of the plan reads as matrices (its "matrix_types": ``core_spec``)."""

    def make() -> frozenset:
        kept = {(1, 1)} | ({(2, 1)} if spec["order"] == 3 else set())
        kept |= {tuple(p) for p in spec.get("matrix_types", [])}
        laplacian = [entry for piece in spec["pieces"] for entry in piece["laplacian"] if len(entry["p"]) == 2]
        kept |= {tuple(entry["p"]) for entry in laplacian if len(entry["summed"]) < 2}
        return frozenset(tuple(p) for p in spec["dense_types"] if len(p) == 2) - kept

    return spec_cached(spec, "summed types", make)
