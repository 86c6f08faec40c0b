"""κ_3 after the nonlinearity (``next_third``): the carried block of the older sources and one new path
source with its correction leg and, with the closure, its feed."""

from __future__ import annotations

import itertools
import math
from typing import Any

from .arrays import off_diagonal
from .plans import TOP
from .range_finder import range_basis, test_matrix
from .sources import Sources, is_compressed, is_thin
from .thin import ThinCorrection, path_leg_order, residual_factors, thin_split


def carried_third(xp: Any, term: dict, slices: dict, groups: Sources, wick: Any) -> tuple:
    """The carried block c·(w⊗w⊗w)⊙κ_3 of pK_(1,1,1): every leg's rows times w (w = wick[k][1], k the same on all
    three legs), c on the C side (v and Q). Its slices are κ_3's times c·w_a³ and c·w_a²w_b: no new n³ work. The
    rows are not scaled here: the next W maps the groups as W·diag(w) (``mapped_third``), n² work instead of the
    factors' size. Returns (groups with c applied, w, cubic, double)."""
    if len(set(term["k"])) != 1:
        raise ValueError(f"carried block needs equal Wick orders, got {term['k']}")
    w, c = wick[term["k"][0]][1], term["c"]
    carried = []
    for group in groups:
        if c == 1:
            carried.append(group)
        elif is_thin(group):  # c scales v, s, f and L
            factors, *coefficients = group
            carried.append((factors, *(c * part for part in coefficients)))
        elif is_compressed(group):  # c scales Q's coefficients and v
            bases, coefficients, scales = group
            coefficients = coefficients * xp.asarray([1.0, 1.0, c], dtype=bases.dtype)[:, None, None]
            carried.append((bases, coefficients, c * scales))
        else:
            factors, scales = group
            carried.append((factors * xp.asarray([1.0, 1.0, c], dtype=factors.dtype)[:, None], c * scales))
    cubic = c * w * w * w * slices[(3, (3,))]
    double = c * (w * w)[:, None] * slices[(3, (2, 1))] * w[None, :]
    return carried, w, cubic, double


def path_source(xp: Any, term: dict, slices: dict, wick: list[list[Any]]) -> tuple[Any, Any, Any, Any]:
    """The path term of pK_(1,1,1) through a centre axis, c·v(i)E(k,i)·v(j)E(k,j)·v_c(k): a new source with
    T = I, P = v⊙E (column k) and v = c·v_c. Its two legs must be equal (they are at K = 3 SIMPLE), which keeps
    every source in the paired form. Returns (P, v, cubic, double) with P's slices: (3) P_aa² v_a and (2,1)
    (P_ab² v_b + 2 P_aa v_a P_ba) / 3 (``third_slices`` with C = diag v), zeroed on the diagonal. Where the leg's
    blocks are all symmetric slices (q_0 = q_1) E is symmetric, so P = diag(v) E and Pᵀ = E diag(v) are both
    formed without a transposed read."""
    vectors = [wick[k][1] for k in term["k"]]
    edges: dict[frozenset, list] = {}
    for degree, q, axes in term["blocks"]:
        edges.setdefault(frozenset(axes), []).append((degree, tuple(q), axes))
    (centre,) = set.intersection(*(set(edge) for edge in edges))
    if len(edges) != 2 or any(len(edge) != 2 for edge in edges):
        raise ValueError(f"a path term needs two edges of two axes each: {term}")
    kinds = [(term["k"][other], sorted((d, q, a[0] == centre) for d, q, a in blocks))
             for edge, blocks in edges.items() for other in edge - {centre}]
    if len(kinds) != 2 or kinds[0] != kinds[1]:
        raise ValueError(f"path term with unequal legs is not supported: {term}")
    (edge, blocks), *_ = edges.items()
    (other,) = edge - {centre}
    symmetric = all(q[0] == q[1] for _, q, _ in blocks)
    matrix = None  # E with the centre's index first
    for degree, q, axes in blocks:
        oriented = slices[(degree, q)] if axes[0] == centre or symmetric else slices[(degree, q)].T
        matrix = oriented if matrix is None else matrix * oriented
    leg = vectors[other]
    p, v = leg[:, None] * (matrix if symmetric else matrix.T), term["c"] * vectors[centre]
    transposed = matrix * leg[None, :] if symmetric else p.T
    diagonal_v = xp.diag(p) * v
    double = p * p * (v / 3)[None, :] + (diagonal_v * (2 / 3))[:, None] * transposed
    return p, v, xp.diag(p) * diagonal_v, off_diagonal(xp, double)


def next_third(xp: Any, spec: dict, slices: dict, groups: Sources | None, wick: Any, cumulants: dict,
               correction: ThinCorrection | None = None, feeds: list | None = None,
               feed: tuple | None = None, slice_rank: int = 0) -> tuple:
    """κ_3 after the nonlinearity, exact on every slice: pK_(1,1,1) (carried block + one new path source) plus
    Sym(Σ_a e_a⊗e_a⊗Q_a), Q_a = N(2,1)·g_(2,1)[a,:] + N(3)·g_(3)[a]·e_a with g_q = K_q − slice_q(pK_(1,1,1)): the
    correction is the new source's Q (its T is I too). Returns (groups, their row scale, fresh, v) for
    ``mapped_third``. With a thin ``correction`` Q is split as diag(s) + P diag(f) + (residual ≈ Z Lᵀ)
    (``ThinCorrection``, ``thin_split``) and (fresh, v) are ([P, Z], (v, (s, f), L)): exact but for the residual's
    rank. ``feed`` = (λ, diag M) turns the feeds on and returns them as a fifth element (``feeds``, those of
    ``groups`` times the carried block's c, and the new source's; None: off): with λ (the closure's, not None
    where κ_4 is kept) the new source gets the closure's feed (``feed_source``), with ``slice_rank`` > 0 the
    κ_2 × κ_3 top-slice terms through a rank-``slice_rank`` factorisation (``slice_feed_source``, where κ_3 is
    carried), side by side as one feed; their slices are added to those the correction removes."""
    (entry,) = [e for e in spec["diagrams"] if tuple(e["p"]) == TOP]
    carried = [t for t in entry["terms"] if len(t["blocks"]) == 1 and tuple(t["blocks"][0][1]) == TOP]
    paths = [t for t in entry["terms"] if t not in carried]
    if len(carried) != 1 or len(paths) != 1:
        raise ValueError(f"expected one carried and one path term in pK_(1,1,1), got {len(carried)} and {len(paths)}")
    p, v, cubic, double = path_source(xp, paths[0], slices, wick)
    older: Sources = []
    rows = None
    if groups is not None:
        older, rows, carried_cubic, carried_double = carried_third(xp, carried[0], slices, groups, wick)
        cubic, double = cubic + carried_cubic, double + carried_double
    counts = spec["lower_slice_counts"]
    closure_feed = slice_feed = None
    tail = ()
    if feed is not None:
        if feed[0] is not None:
            closure_feed, closure_double = feed_source(xp, spec, paths[0], wick, p, *feed)
            if correction is None:
                double = double + closure_double
        if slice_rank and (3, (2, 1)) in slices:
            slice_feed = slice_feed_source(xp, spec, paths[0], slices, wick, slice_rank)
        c = carried[0]["c"]
        carried_feeds = [None] * len(older) if feeds is None else [None if one is None else (c * one[0], one[1])
                                                                  for one in feeds]
        fed = [one for one in (closure_feed, slice_feed) if one is not None]
        new_feed = tuple(xp.concatenate(parts, axis=1) for parts in zip(*fed, strict=True)) if fed else None
        tail = ([*carried_feeds, new_feed],)
    rescaled, crossed = (None, None) if slice_feed is None else slice_feed_doubles(xp, p, slice_feed)
    if correction is None:
        if slice_feed is not None:
            double = double + rescaled + crossed
        q = (counts["2,1"] * (cumulants[(2, 1)] - double) + xp.diag(counts["3"] * (cumulants[(3,)] - cubic))).T
        return (older, rows, xp.stack([p, q], axis=1), v, *tail)
    s, f, residual = thin_split(xp, spec, paths[0], slices, wick, cumulants, p, cubic,
                                double if crossed is None else double + crossed)
    if closure_feed is not None:  # N(2,1)·(its (2,1) slice)ᵀ = P diag(2 β∘y) (``feed_source``): in f
        f = f - (counts["2,1"] * 2 / 3) * closure_feed[0][:, 0] * closure_feed[1][:, 0]
    if slice_feed is not None:  # N(2,1)·rescaledᵀ = P diag(Σ_ρ β_ρ∘y_ρ) (``slice_feed_doubles``): in f
        f = f - (counts["2,1"] / 3) * xp.sum(slice_feed[0] * slice_feed[1], axis=1)
    basis, lower = residual_factors(xp, residual, correction)
    return (older, rows, xp.concatenate([p, basis], axis=1), (v, xp.stack([s, f]), lower), *tail)


def slice_feed_doubles(xp: Any, p: Any, feed: tuple[Any, Any]) -> tuple[Any, Any]:
    """The (2,1) slice at birth of a feed Sym(Σ_k Σ_ρ β_kρ P_k ⊗ e_k ⊗ y_ρ) (T = I; P zero on its diagonal), as
    two pieces: diag(Σ_ρ y_ρ∘β_ρ) Pᵀ/3, whose transpose is P's columns rescaled (a thin correction takes it into
    f), and the rest, (P ∘ y βᵀ)/3 (into the thin correction's residual)."""
    beta, y = feed
    return xp.sum(y * beta, axis=1)[:, None] * p.T / 3, p * (y @ beta.T) / 3


def slice_feed_source(xp: Any, spec: dict, path: dict, slices: dict, wick: Any, rank: int) -> tuple[Any, Any]:
    """K = 3 augment's top-slice terms with one κ_2 edge and one κ_3 (2,1) block (``spec["fourth_core"]
    ["slice_feed"]``, ``FourthCore.slice_feed``) as a feed of the new source. Each term
    c·w_a(k_a,1) w_b(k_b,1) w_c(k_c,1) Σ_ac D(c, b) joins a (the path's leg, so w_a(k_a,1) Σ_ac = P_ac) to the
    centre c, at which the κ_3 block (D = κ_3's (2,1) slice, D(c, b) = D[c, b] if c is its doubled coordinate,
    else D[b, c]) reaches b: it is Sym(Σ_k P_k ⊗ e_k ⊗ L_k) with L[b, k] = c·w_b(k_b,1) w_k(k_c,1) D(k, b), summed
    over the terms. L (n × n, zero on the diagonal) is factorised at rank r, L ≈ y βᵀ (y orthonormal, a randomized
    range finder with one power iteration, β = Lᵀ y), which is the feed's form: (β (m, r), y (n, r)); 10n²r FLOPs
    and the QR. Exact at r ≥ n."""
    order = path_leg_order(path)
    leg = None
    for term in spec["fourth_core"]["slice_feed"]:
        centre, lone, pair = feed_axes(term, order)
        value = term["c"] * wick[term["k"][lone]][1][:, None] * wick[term["k"][centre]][1][None, :]
        for degree, q, axes in pair:  # [b, k] with b on the lone axis, k on the centre
            block = slices[(degree, tuple(q))]
            value = value * (block if axes[0] == lone else block.T)
        leg = value if leg is None else leg + value
    basis = range_basis(xp, leg, test_matrix(xp, leg, leg.shape[1], min(rank, *leg.shape))[0], 1)
    return leg.T @ basis, basis


def feed_axes(term: dict, order: int) -> tuple[int, int, list]:
    """A slice-feed term's centre, lone axis and blocks on the (lone, centre) pair: its other pair of axes holds
    one κ_2 edge (a (2,(1,1)) block) to an axis of the path's Wick order ``order``, the path's leg."""
    pairs: dict[frozenset, list] = {}
    for degree, q, axes in term["blocks"]:
        pairs.setdefault(frozenset(axes), []).append((degree, q, axes))
    if len(pairs) == 2 and all(len(pair) == 2 for pair in pairs):
        (centre,) = set.intersection(*(set(pair) for pair in pairs))
        for pair, blocks in pairs.items():
            (end,) = pair - {centre}
            if term["k"][end] == order and [(d, list(q)) for d, q, _ in blocks] == [(2, [1, 1])]:
                (other,) = [rest for key, rest in pairs.items() if key != pair]
                (lone,) = set().union(*(set(a) for _, _, a in other)) - {centre}
                return centre, lone, other
    raise ValueError(f"a slice-feed term needs one κ_2 edge to the path's leg and its other blocks on one pair: {term}")


def feed_source(xp: Any, spec: dict, path: dict, wick: Any, p: Any, multiple: Any,
                metric_diagonal: Any) -> tuple[tuple[Any, Any], Any]:
    """The closure's feed of a new κ_3 source (``FourthCore.feed``, docs/method.md §7.9): K = 3 augment's top-slice
    term c·w_a(k,1) w_b(k,1) w_c(k',1) κ_4[a,b,c,c] (``spec["fourth_core"]["feed"]``), with κ_4 = Sym(Ĝ ⊗ M) read
    through its leading part Ĝ_ab M_cc (coefficient 4/4! in Sym(Ĝ ⊗ M)[a,b,c,c]) and Ĝ_ab ≈ λ·Σ_ab (the closure's
    off-diagonal, Σ the pre-activation covariance). With the path legs P = diag(u) Σ_off (u = w(k,1), the same k)
    it is Sym(Σ_k β_k P_k ⊗ e_k ⊗ y), β = λ u, y = c·(4/4!)·w(k',1)∘diag M. Returns (β, y) as (m, 1) and (n, 1)
    (the feeds' rank-R form, ``feed_terms``) and its (2,1) slice at birth, (y∘P diag β + y∘β∘Pᵀ)/3 = Pᵀ
    diag-scaled: row a times 2 y_a β_a / 3 (P_ab β_b = λ u_a P_ba); its (3) slice is 0 (P_aa = 0)."""
    (term,) = spec["fourth_core"]["feed"]
    ((_, q, axes),) = term["blocks"]
    doubled = axes[list(q).index(2)]
    orders = {term["k"][axis] for axis in range(3) if axis != doubled}
    order = path_leg_order(path)
    if orders != {order}:
        raise ValueError(f"the feed needs the path's leg Wick order on its two single legs: {term}, {path}")
    pairing = sum(sorted(perm[:2]) == [0, 1] for perm in itertools.permutations((0, 1, 2, 2))) / math.factorial(4)
    beta = multiple * wick[order][1]
    y = term["c"] * pairing * wick[term["k"][doubled]][1] * metric_diagonal
    double = y[:, None] * p * (beta / 3)[None, :] + (y * beta / 3)[:, None] * p.T
    return (beta[:, None], y[:, None]), double
