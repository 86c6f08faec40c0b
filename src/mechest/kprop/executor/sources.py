"""κ_3 as source groups (``Sources``: full, compressed and thin), mapped through W (``mapped_third``, with the
closure's feeds) and read as its slices (3) and (2,1) (``third_cubic``, ``third_slices``)."""

from __future__ import annotations

from typing import Any

from .strassen import split_product, summed_product

Sources = list
"""The κ_3 sources as groups: compressed ones first, then at most one group of every full source, oldest first (factors
(n, S, 3, m), scales (S, m): the factors T, P, Q of S sources of m columns with the leg index first, so that W times
every factor is one matrix product and each elementwise step one operation for all sources; the new source of each
layer joins it, ``mapped_third``), or of every thin one; compressed ones (bases (S, n, r), coefficients (S, 3, r, m),
scales (S, m)), stacked per (r, m), whose factors are bases @ coefficients (``Compression``); and thin ones (factors
(n, S, 2m + r) = [T, P, Z] side by side, scales v (S, m), diagonals (S, 2, m) = (s, f), lower (S, m, r) = L), whose Q
is T diag(s) + P diag(f) + Z Lᵀ (``ThinCorrection``)."""


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


def mapped_third(xp: Any, weight: Any, third: tuple, levels: int = 0) -> tuple[Sources, list | None]:
    """(W⊗W⊗W)κ_3 as source groups (factors, scales), and their feeds: every leg of every source times W, all of
    them one product (``split_product``, ``levels`` Strassen levels).

    ``third`` = (groups, rows, fresh, v[, feeds]): ``groups`` holds T, P, Q of the earlier sources, whose rows are
    still to be scaled by ``rows`` (``carried_third``; None: not), so they are mapped by W·diag(rows); ``fresh``
    (n, 2, m) P and Q of the newest, whose T is the identity, so its W·T is W itself; it joins the last group of
    full sources of its shape (one copy of them, one operation), or else is a group of its own. With a thin
    correction (``ThinCorrection``) ``fresh`` is [P, Z] (n, m + r) and v is (v, (s, f), L): the newest is the thin
    source [W, W P, W Z]. A compressed group maps its bases alone. The feeds (``FourthCore.feed``,
    ``FourthCore.slice_feed``; None where ``third`` has none) follow the groups: None for a compressed group, and
    for a group of full sources their per-source feeds (β (S, m, R), y (n, S, R)), y mapped as the rows are
    (``joined_feed``): 2n²R a source.
    """
    groups, rows, fresh, v = third[:4]
    parts = [group[0] if is_compressed(group) else flat(xp, group[0]) for group in groups]
    mapped = split_product(xp, weight, [*parts, fresh.reshape(fresh.shape[0], -1)], levels,
                           [rows] * len(groups) + [None])
    size = weight.shape[0]
    newest = mapped[-1].reshape(size, *fresh.shape[1:])
    if isinstance(v, tuple):  # thin: T, P, Z side by side
        source = (xp.concatenate([weight, newest], axis=1)[:, None], *(part[None] for part in v))
    else:
        source = (xp.concatenate([weight[:, None], newest], axis=1)[:, None], v[None])
    out = [(value, *group[1:]) if is_compressed(group) else (value.reshape(size, *group[0].shape[1:]), *group[1:])
           for group, value in zip(groups, mapped[:-1], strict=True)]
    target = next((index for index in reversed(range(len(out))) if joins(out[index], source)), None)
    feeds = None if len(third) < 5 else mapped_feeds(xp, weight, third, target)
    if target is None:
        return [*out, source], feeds
    joined = tuple(xp.concatenate([a, b], axis=int(index == 0))
                   for index, (a, b) in enumerate(zip(out[target], source, strict=True)))
    return [*out[:target], joined, *out[target + 1:]], feeds


def joins(group: tuple, source: tuple) -> bool:
    """Whether a new source (a group of one) can join ``group``: both full, or both thin, of the same shapes but for
    the number of sources (factors (n, S, ...), the other parts (S, ...))."""
    if is_compressed(group) or len(group) != len(source):
        return False
    factors, *rest = group
    return (factors.shape[:1] + factors.shape[2:] == source[0].shape[:1] + source[0].shape[2:]
            and all(a.shape[1:] == b.shape[1:] for a, b in zip(rest, source[1:], strict=True)))


def flat(xp: Any, factors: Any) -> Any:
    """Factors with the leg index first (n, ...) as one matrix (n, rest)."""
    return factors if factors.ndim == 2 else factors.reshape(factors.shape[0], -1)


def mapped_feeds(xp: Any, weight: Any, third: tuple, target: int | None) -> list:
    """The per-source feeds (β (S, m, R), y (n, S, R)) of ``third``'s groups after z = W a (y mapped by W·diag(rows)
    as their rows are; None for a compressed group) and of the newest source (y mapped by W), which joins the
    group ``target`` (``joined_feed``) or else is a group of its own (``mapped_third``)."""
    groups, rows, feeds = third[0], third[1], third[4]
    scaled = weight if rows is None else weight * rows[None, :]
    *older, newest = feeds
    out = [None if feed is None else
           (feed[0], (scaled @ flat(xp, feed[1])).reshape(weight.shape[0], *feed[1].shape[1:])) for feed in older]
    newest = None if newest is None else (newest[0][None], (weight @ newest[1])[:, None])
    if target is None:
        return [*out, joined_feed(xp, None, newest, 0)]
    count = groups[target][0].shape[1]
    return [*out[:target], joined_feed(xp, out[target], newest, count), *out[target + 1:]]


def joined_feed(xp: Any, older: tuple | None, newest: tuple | None, count: int) -> tuple | None:
    """The per-source feeds (β (S, m, R), y (n, S, R)) of ``count`` older sources and one newest side by side on
    the source axis, the rank R the larger of theirs (a missing feed, or a missing rank, is zero: it adds nothing)."""
    if newest is None and older is None:
        return None
    like = newest if newest is not None else older
    rank = max(feed[0].shape[-1] for feed in (older, newest) if feed is not None)
    m, n = like[0].shape[1], like[1].shape[0]

    def padded(feed: tuple | None, sources: int) -> tuple:
        if feed is None:
            return (xp.zeros((sources, m, rank), dtype=like[0].dtype),
                    xp.zeros((n, sources, rank), dtype=like[1].dtype))
        beta, y = feed
        if beta.shape[-1] == rank:
            return feed
        missing = rank - beta.shape[-1]
        return (xp.concatenate([beta, xp.zeros((sources, m, missing), dtype=beta.dtype)], axis=2),
                xp.concatenate([y, xp.zeros((n, sources, missing), dtype=y.dtype)], axis=2))

    if count == 0:
        return padded(newest, 1)
    old, new = padded(older, count), padded(newest, 1)
    return xp.concatenate([old[0], new[0]], axis=0), xp.concatenate([old[1], new[1]], axis=1)


def feed_terms(xp: Any, t: Any, p: Any, feed: tuple) -> tuple[Any, Any, Any]:
    """A feed Sym(Σ_k Σ_ρ β_kρ P_k ⊗ T_k ⊗ y_ρ) of each source s with legs T, P (n, S, m), β (S, m, R),
    y (n, S, R) (``FourthCore.feed``, ``FourthCore.slice_feed``; per source, ``mapped_feeds``): with Y = y βᵀ
    (n × m a source), its (2,1) slice is ((P∘Y) Tᵀ + (T∘Y) Pᵀ + u' yᵀ)/3 (Sym(a⊗b⊗c)_iij = (a_i b_i c_j +
    a_i c_i b_j + b_i c_i a_j)/3), u'_isρ = Σ_k β_skρ P_isk T_isk, and its (3) slice Σ_sρ u'_isρ y_isρ. Returns the
    additions to the left matrices of Tᵀ and Pᵀ (n, S, m) and u' (n, S, R): 6nmR FLOPs a source with the rank
    term."""
    beta, y = feed
    lifted = xp.einsum("isr,skr->isk", y, beta)
    return p * lifted, t * lifted, feed_weights(xp, t, p, beta)


def feed_weights(xp: Any, t: Any, p: Any, beta: Any) -> Any:
    """u'_isρ = Σ_k β_skρ P_isk T_isk (n, S, R) of a feed (``feed_terms``): its (3) slice is Σ_sρ u'_isρ y_isρ."""
    return xp.einsum("isk,skr->isr", p * t, beta)


def third_cubic(xp: Any, groups: Sources, feeds: list | None = None) -> Any:
    """Slice (3) of κ_3 = Σ_s Sym(Σ_k P_k⊗P_k⊗v_k T_k + T_k⊗T_k⊗Q_k): Σ_s Σ_k T (P² v + T Q), read alone where the
    (2,1) slice (whose diagonal it is, ``third_slices``) is not needed."""
    total = None
    for index, group in enumerate(groups):
        factors, scales = expanded(xp, group)
        t, p, q = factors[:, :, 0], factors[:, :, 1], factors[:, :, 2]
        value = xp.einsum("isk,isk->i", t, p * p * scales[None] + t * q)
        if feeds is not None and feeds[index] is not None:  # the feed's (3) slice Σ_sρ u'_sρ∘y_sρ
            beta, y = feeds[index]
            value = value + xp.einsum("isr,isr->i", feed_weights(xp, t, p, beta), y)
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
            value = flat(xp, rank_part) @ flat(xp, feed[1]).T
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
