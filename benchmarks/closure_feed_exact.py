"""Research probe: the closure's feed (mechest.kprop.executor.FourthCore.feed, docs/method.md §7.9) with the model
κ_4 = Sym(Ĝ ⊗ M) read in more of its pairings, as generic CP terms Sym(Σ_k A_k ⊗ B_k ⊗ C_k) carried beside each
new κ_3 source (every leg mapped: extra n³ work a source and layer, not a candidate method but a bound on what
K = 3 augment's top-slice κ_4 term can give with the closure's κ_4). It patches the executor's κ_3 functions
(next_third, third_slices, third_cubic, mapped_feeds) and runs benchmarks/k3_research.py with --core closure --feed.

    PYTHONPATH=src python benchmarks/closure_feed_exact.py VARIANT --round mechest
    PYTHONPATH=src python benchmarks/closure_feed_exact.py VARIANT --round warmup --threads 2

Variants:
  lead       Ĝ_ab M_cc with Ĝ_off ≈ λ Σ_off   (= FourthCore.feed, a consistency check)
  lead-exact Ĝ_ab M_cc with the exact Ĝ_off = off(W diag(d) Wᵀ) + λ Σ_off
  two        lead-exact + Ĝ_cc M_ab
  all        all four pairings of Sym(Ĝ ⊗ M)[a,b,c,c]
Exact sources only (no --thin, no compression).
"""
import sys
from pathlib import Path

import torch

from mechest.kprop import executor as xprop
from mechest.kprop.executor import propagation

VARIANT = None
CAPTURE = {}
orig_core_slices = xprop.core_slices
orig_next_third = xprop.next_third
orig_third_slices = xprop.third_slices
orig_third_cubic = xprop.third_cubic


def core_slices(xp, weight, core, gram, pre_cov, levels=0):
    mapped, slices = orig_core_slices(xp, weight, core, gram, pre_cov, levels)
    CAPTURE.update(mapped=mapped, gram=gram, pre_cov=pre_cov, multiple=getattr(core, "multiple", None))
    return mapped, slices


def cp_slices(cp):
    a, b, c = cp
    double = ((a * b) @ c.T + (a * c) @ b.T + (b * c) @ a.T) / 3
    return (a * b * c).sum(1), double


def mapped_feeds(xp, weight, third):
    if len(third) < 5:
        return None
    rows, feeds = third[1], third[4]
    scaled = weight if rows is None else weight * rows[None, :]
    *older, newest = feeds
    out = [None if f is None else tuple(scaled @ x for x in f) for f in older]
    return [*out, None if newest is None else tuple(weight @ x for x in newest)]


def third_slices(xp, groups, levels=0, feeds=None):
    cubic, double = orig_third_slices(xp, groups, levels)
    for f in feeds or []:
        if f is not None:
            c3, d21 = cp_slices(f)
            cubic, double = cubic + c3, double + d21
    return cubic, double


def third_cubic(xp, groups, feeds=None):
    cubic = orig_third_cubic(xp, groups)
    for f in feeds or []:
        if f is not None:
            cubic = cubic + cp_slices(f)[0]
    return cubic


def new_cp(spec, wick):
    (term,) = spec["fourth_core"]["feed"]
    cf = term["c"]
    u, w = wick[1][1], wick[2][1]
    g, m = CAPTURE["mapped"], CAPTURE["gram"]
    gd, md = torch.diagonal(g), torch.diagonal(m)
    if VARIANT == "lead":
        go = CAPTURE["multiple"] * xprop.off_diagonal(torch, CAPTURE["pre_cov"])
    else:
        go = xprop.off_diagonal(torch, g)
    mo = xprop.off_diagonal(torch, m)
    n = u.shape[0]
    ones = torch.ones(n, dtype=u.dtype)
    du = torch.diag(u)
    parts = [(u[:, None] * go, du, (cf / 6) * (w * md)[:, None] * ones[None, :])]
    if VARIANT in ("two", "all"):
        parts.append((u[:, None] * mo, du, (cf / 6) * (w * gd)[:, None] * ones[None, :]))
    if VARIANT == "all":
        parts.append((u[:, None] * go, u[:, None] * mo, (2 * cf / 6) * torch.diag(w)))
        parts.append((u[:, None] * mo, u[:, None] * go, (2 * cf / 6) * torch.diag(w)))
    return tuple(torch.cat([p[i] for p in parts], dim=1) for i in range(3))


def next_third(xp, spec, slices, groups, wick, cumulants, correction=None, feeds=None, feed=None):
    if correction is not None:
        raise SystemExit("closure_feed_exact.py runs exact sources only (no --thin)")
    older, rows, fresh, v = orig_next_third(xp, spec, slices, groups, wick, cumulants, None)
    carried = [t for e in spec["diagrams"] if tuple(e["p"]) == (1, 1, 1) for t in e["terms"]
               if len(t["blocks"]) == 1 and tuple(t["blocks"][0][1]) == (1, 1, 1)][0]
    c = carried["c"]
    carried_feeds = [None] * len(older) if feeds is None else [None if f is None else (f[0], f[1], c * f[2])
                                                              for f in feeds]
    new = None
    if feed is not None and feed[0] is not None:
        new = new_cp(spec, wick)
        c3, d21 = cp_slices(new)
        counts = spec["lower_slice_counts"]
        q = fresh[:, 1] - counts["2,1"] * xprop.off_diagonal(xp, d21).T - counts["3"] * torch.diag(c3)
        fresh = torch.stack([fresh[:, 0], q], dim=1)
    return older, rows, fresh, v, [*carried_feeds, new]


def install(variant):
    global VARIANT
    VARIANT = variant
    propagation.core_slices = core_slices  # where ``planned`` and ``marginal_slices`` look them up
    propagation.next_third = next_third
    propagation.third_slices = third_slices
    propagation.third_cubic = third_cubic
    propagation.mapped_feeds = mapped_feeds


if __name__ == "__main__":
    variant, *rest = sys.argv[1:]
    install(variant)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import k3_research
    k3_research.main([*rest, "--core", "closure", "--feed"])
