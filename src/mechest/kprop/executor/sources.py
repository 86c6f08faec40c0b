"""κ_3 as source groups (``Sources``: full, compressed and thin), mapped through W (``mapped_third``, with the
closure's feeds) and read as its slices (3) and (2,1) (``third_cubic``, ``third_slices``)."""

from __future__ import annotations

from typing import Any

from .strassen import split_product, summed_product

Sources = list
"""The κ_3 sources as groups, oldest first: full ones (factors (n, S, 3, m), scales (S, m)), the factors T, P, Q of
S sources of m columns with the leg index first, so that W times every factor is one matrix product and the (2,1)
slice one more (no copies; each layer's new source is a group of its own, S = 1, as stacking the sources would
copy them all every layer); compressed ones (bases (S, n, r), coefficients (S, 3, r, m), scales (S, m)),
stacked per (r, m), whose factors are bases @ coefficients (``Compression``); and thin ones (factors
(n, S, 2m + r) = [T, P, Z] side by side, scales v (S, m), diagonals (S, 2, m) = (s, f), lower (S, m, r) = L),
whose Q is T diag(s) + P diag(f) + Z Lᵀ (``ThinCorrection``)."""


def is_compressed(group: tuple) -> bool:
    return len(group) == 3


def is_thin(group: tuple) -> bool:
    return len(group) == 4


def source_range(group: tuple, start: int, stop: int | None = None) -> tuple:
    """The sources start:stop of a full or thin group (the source axis is the factors' second, the others' first)."""
    factors, *rest = group
    return (factors[:, start:stop], *(part[start:stop] for part in rest))


def expanded(xp: Any, group: tuple) -> tuple[Any, Any]:
    """A group's (factors (n, S, 3, m), scales): a compressed group's factors B (Bᵀ X), a thin group's (T, P, Q)
    with Q = T diag(s) + P diag(f) + Z Lᵀ (``thin_correction``)."""
    if is_thin(group):
        factors, scales = group[0], group[1]
        width = scales.shape[-1]
        return xp.stack([factors[:, :, :width], factors[:, :, width: 2 * width], thin_correction(xp, group)],
                        axis=2), scales
    if not is_compressed(group):
        return group
    bases, coefficients, scales = group
    return xp.einsum("snr,sjrk->nsjk", bases, coefficients), scales


def thin_correction(xp: Any, group: tuple) -> Any:
    """Q = T diag(s) + P diag(f) + Z Lᵀ (n, S, m) of a thin group (``ThinCorrection``): O(n m) plus 2nmr."""
    factors, scales, diagonals, lower = group
    width = scales.shape[-1]
    q = factors[:, :, :width] * diagonals[None, :, 0] + factors[:, :, width: 2 * width] * diagonals[None, :, 1]
    if lower.shape[-1]:
        q = q + xp.einsum("isr,skr->isk", factors[:, :, 2 * width:], lower)
    return q


def mapped_third(xp: Any, weight: Any, third: tuple, levels: int = 0) -> Sources:
    """(W⊗W⊗W)κ_3 as source groups (factors, scales): every leg of every source times W, all of them one product
    (``split_product``, ``levels`` Strassen levels).

    ``third`` = (groups, rows, fresh, v): ``groups`` holds T, P, Q of the earlier sources, whose rows are still to be
    scaled by ``rows`` (``carried_third``; None: not), so they are mapped by W·diag(rows); ``fresh`` (n, 2, m) P and
    Q of the newest, whose T is the identity, so its W·T is W itself; it is appended as a group of its own. With a
    thin correction (``ThinCorrection``) ``fresh`` is [P, Z] (n, m + r) and v is (v, (s, f), L): the newest is the
    thin group [W, W P, W Z]. A compressed group maps its bases alone.
    """
    groups, rows, fresh, v = third[:4]
    parts = [group[0] if is_compressed(group) else flat(xp, group[0]) for group in groups]
    mapped = split_product(xp, weight, [*parts, flat(xp, fresh)], levels, [rows] * len(groups) + [None])
    size = weight.shape[0]
    groups = [(out, *group[1:]) if is_compressed(group) else (xp.reshape(out, (size, *group[0].shape[1:])),
                                                               *group[1:])
              for group, out in zip(groups, mapped[:-1], strict=True)]
    newest = xp.reshape(mapped[-1], (size, *fresh.shape[1:]))
    if isinstance(v, tuple):  # thin: T, P, Z side by side
        return [*groups, (xp.concatenate([weight, newest], axis=1)[:, None], *(part[None] for part in v))]
    return [*groups, (xp.concatenate([weight[:, None], newest], axis=1)[:, None], v[None])]


def flat(xp: Any, factors: Any) -> Any:
    """Factors with the leg index first (n, ...) as one matrix (n, rest)."""
    return factors if factors.ndim == 2 else xp.reshape(factors, (factors.shape[0], -1))


def mapped_feeds(xp: Any, weight: Any, third: tuple) -> list | None:
    """The feeds (``FourthCore.feed``, ``FourthCore.slice_feed``) of ``third``'s sources after z = W a: one (β, y)
    or None per group of ``mapped_third``'s output (the newest last), y (n, R) mapped as the groups' rows are
    (W·diag(rows) for the older, W for the newest): 2n²R a source. None: ``third`` carries no feeds."""
    if len(third) < 5:
        return None
    rows, feeds = third[1], third[4]
    scaled = weight if rows is None else weight * rows[None, :]
    *older, newest = feeds
    out = [None if feed is None else (feed[0], scaled @ feed[1]) for feed in older]
    return [*out, None if newest is None else (newest[0], weight @ newest[1])]


def feed_terms(xp: Any, t: Any, p: Any, feed: tuple) -> tuple[Any, Any, Any]:
    """A feed Sym(Σ_k Σ_ρ β_kρ P_k ⊗ T_k ⊗ y_ρ) of a source with legs T, P (n, S, m), β (m, R), y (n, R)
    (``FourthCore.feed``, ``FourthCore.slice_feed``): with Y = y βᵀ (n × m), its (2,1) slice is
    ((P∘Y) Tᵀ + (T∘Y) Pᵀ + u' yᵀ)/3 (Sym(a⊗b⊗c)_iij = (a_i b_i c_j + a_i c_i b_j + b_i c_i a_j)/3),
    u'_iρ = Σ_k β_kρ P_ik T_ik, and its (3) slice Σ_ρ u'_iρ y_iρ. Returns the additions to the left matrices of Tᵀ
    and Pᵀ (n, S, m) and u' (n, R): 6nmR FLOPs with the rank term."""
    beta, y = feed
    lifted = (y @ beta.T)[:, None, :]
    return p * lifted, t * lifted, feed_weights(xp, t, p, beta)


def feed_weights(xp: Any, t: Any, p: Any, beta: Any) -> Any:
    """u'_iρ = Σ_k β_kρ P_ik T_ik (n, R) of a feed (``feed_terms``): its (3) slice is Σ_ρ u'_iρ y_iρ."""
    return xp.einsum("isk,kr->ir", p * t, beta)


def third_cubic(xp: Any, groups: Sources, feeds: list | None = None) -> Any:
    """Slice (3) of κ_3 = Σ_s Sym(Σ_k P_k⊗P_k⊗v_k T_k + T_k⊗T_k⊗Q_k): Σ_s Σ_k T (P² v + T Q), read alone where the
    (2,1) slice (whose diagonal it is, ``third_slices``) is not needed."""
    total = None
    for index, group in enumerate(groups):
        factors, scales = expanded(xp, group)
        t, p, q = factors[:, :, 0], factors[:, :, 1], factors[:, :, 2]
        value = xp.einsum("isk,isk->i", t, p * p * scales[None] + t * q)
        if feeds is not None and feeds[index] is not None:  # the feed's (3) slice Σ_ρ u'_ρ∘y_ρ
            beta, y = feeds[index]
            value = value + xp.sum(feed_weights(xp, t, p, beta) * y, axis=1)
        total = value if total is None else total + value
    return total


def third_slices(xp: Any, groups: Sources, levels: int = 0, feeds: list | None = None) -> tuple[Any, Any]:
    """Slices (3) and (2,1) of κ_3 (``third_cubic``'s form), the (2,1) slice not yet zeroed on its diagonal.

    Sym(Σ_r A_r⊗A_r⊗C_r) has (2,1) slice ((A∘A)Cᵀ + 2(A∘C)Aᵀ)/3 (an assignment of factors to positions matters
    only through the lone factor, and the three classes are equally large). Per source A = [P, T] and
    C = [T·diag v, Q], so it is ([(P∘P)v + 2 T∘Q] Tᵀ + [2 P∘T v] Pᵀ + [T∘T] Qᵀ) / 3: a product of the three
    bracketed matrices, side by side, with the factors (T, P, Q) themselves, 6n³ per source (``slice_pair``); the
    products of every group add up, so they are one product (``summed_product``, ``levels`` Strassen levels). Its
    diagonal is slice (3). ``feeds`` (one (β, y) or None per group, ``FourthCore.feed``) add their terms to the left
    matrices of Tᵀ and Pᵀ and a rank-R u' yᵀ (``feed_terms``): no new n³ product.
    """
    pairs, double = [], None
    for index, group in enumerate(groups):
        feed = None if feeds is None else feeds[index]
        left, right, rank_part = (thin_pair(xp, group, feed) if is_thin(group) else slice_pair(xp, group, feed))
        pairs.append((left, right))
        if rank_part is not None:
            value = rank_part @ feed[1].T
            double = value if double is None else double + value
    value = summed_product(xp, pairs, levels)
    double = (value if double is None else value + double) / 3
    return xp.diag(double), double


def slice_pair(xp: Any, group: tuple, feed: tuple | None = None) -> tuple[Any, Any, Any | None]:
    """(left, right, u') of a full or compressed group (``third_slices``): 3 × its (2,1) slice is left·rightᵀ plus
    u' yᵀ for a feed (``feed_terms``). Full: left = [(P∘P)v + 2 T∘Q, 2 P∘T v, T∘T] (n, 3Sm) and right the factors
    (T, P, Q). Compressed (factors B·X', ``Compression``): the contraction runs through the basis, left = (left
    X'ᵀ) (S, n, r) and right = B (S, n, r), 8n²r a source."""
    factors, scales = expanded(xp, group)
    t, p, q = factors[:, :, 0], factors[:, :, 1], factors[:, :, 2]
    v = scales[None]
    rank_part = None
    scaled, doubled = p * v, t + t  # (P∘P)v + 2 T∘Q = P∘(Pv) + (2T)∘Q and 2(P∘T)v = (2T)∘(Pv)
    if feed is None:
        left = xp.stack([p * scaled + doubled * q, doubled * scaled, t * t], axis=2)
    else:
        if is_compressed(group):  # ``compressed`` drops a source's feed
            raise ValueError("a compressed group carries no feed")
        onto_t, onto_p, rank_part = feed_terms(xp, t, p, feed)
        left = xp.stack([p * scaled + doubled * q + onto_t, doubled * scaled + onto_p, t * t], axis=2)
    if is_compressed(group):
        return xp.einsum("isjk,sjak->sia", left, group[1]), group[0], None
    return flat(xp, left), flat(xp, factors), rank_part


def thin_pair(xp: Any, group: tuple, feed: tuple | None = None) -> tuple[Any, Any, Any | None]:
    """(left, right, u') of a thin group ([T, P, Z], Q = T diag(s) + P diag(f) + Z Lᵀ, ``ThinCorrection``;
    ``third_slices``): the three products grouped by their right factor, left = [X, Y, (T∘T)L] with
    X = (P∘P) diag v + 2 T∘Q + (T∘T) diag s and Y = 2 (P∘T) diag v + (T∘T) diag f, right = [T, P, Z]:
    2n²(2m + r) a source, the left matrices O(n m) plus 4nmr (Z Lᵀ inside Q, and (T∘T)L); ``feed``
    (``feed_terms``) adds to X and Y and a rank-R term."""
    factors, scales, diagonals, lower = group
    width = scales.shape[-1]
    t, p = factors[:, :, :width], factors[:, :, width: 2 * width]
    v, s, f = scales[None], diagonals[None, :, 0], diagonals[None, :, 1]
    square, scaled, doubled = t * t, p * v, t + t  # as in ``slice_pair``
    left = [p * scaled + doubled * thin_correction(xp, group) + square * s, doubled * scaled + square * f]
    rank_part = None
    if feed is not None:
        onto_t, onto_p, rank_part = feed_terms(xp, t, p, feed)
        left = [left[0] + onto_t, left[1] + onto_p]
    if lower.shape[-1]:
        left.append(xp.einsum("isk,skr->isr", square, lower))
    return flat(xp, xp.concatenate(left, axis=2)), flat(xp, factors), rank_part
