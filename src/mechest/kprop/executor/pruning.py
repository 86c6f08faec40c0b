"""Dead units (docs/method.md §7.11): a ReLU unit whose pre-activation mean lies more than t standard deviations
below zero passes almost nothing on. Its slope is Φ(−t), its second moment after the ReLU σ²[(1 + t²)Φ(−t) −
tφ(t)] (≈ 3·10⁻⁶ σ² at t = 4), so its rows of κ_2 and κ_3 after the nonlinearity are negligible. Dropping those units
from the covariance and the κ_3 sources carried to the next layer, and the next weight's columns where it maps
them, shrinks those products. The means stay whole, and so do the radial pieces, κ_4's matrix core and the metric
W Wᵀ: their projections spread mass over every unit (a dead unit's entry of G's projected diagonal is not small),
so restricting them would change the model, not drop a negligible part of it."""

from __future__ import annotations

from typing import Any

from .sources import is_compressed


def kept_units(xp: Any, pre_mean: Any, pre_var: Any, threshold: float) -> Any | None:
    """The mask of the units whose pre-activation mean is at least −``threshold`` standard deviations; None when
    that is every unit, or none (a layer with no live unit is carried whole rather than as empty arrays)."""
    keep = pre_mean >= -threshold * xp.sqrt(pre_var)
    return None if bool(xp.all(keep)) or not bool(xp.any(keep)) else keep


def kept_group(group: tuple, keep: Any) -> tuple:
    """A source group with its rows (this layer's units) restricted to ``keep``: the factors' first axis (full,
    thin), the bases' second (compressed)."""
    if is_compressed(group):
        bases, *rest = group
        return (bases[:, keep], *rest)
    factors, *rest = group
    return (factors[keep], *rest)


def kept_feed(feed: tuple | None, keep: Any, newest: bool) -> tuple | None:
    """A feed (β, y) with y's units restricted; the newest source's β too (its columns are this layer's units)."""
    if feed is None:
        return None
    beta, y = feed
    return (beta[keep] if newest else beta), y[keep]


def kept_third(xp: Any, third: tuple, keep: Any) -> tuple:
    """``next_third``'s (groups, rows, fresh, v[, feeds]) restricted to the units ``keep``: the older groups'
    rows and their row scale; the newest source's rows and columns (its T is the identity on this layer's units),
    its v, and with a thin correction its (s, f) and L (``ThinCorrection``); the feeds' y and the newest's β."""
    groups, rows, fresh, v, *tail = third
    groups = [kept_group(group, keep) for group in groups]
    rows = None if rows is None else rows[keep]
    if isinstance(v, tuple):  # thin: fresh = [P, Z] (n, m + r), v = (v, (s, f), L)
        width = v[0].shape[0]
        fresh = fresh[keep]
        fresh = xp.concatenate([fresh[:, :width][:, keep], fresh[:, width:]], axis=1)
        v = (v[0][keep], v[1][:, keep], v[2][keep])
    else:  # fresh = (P, Q) stacked (n, 2, m)
        fresh = fresh[keep][:, :, keep]
        v = v[keep]
    if tail:
        (feeds,) = tail
        tail = ([kept_feed(feed, keep, index == len(feeds) - 1) for index, feed in enumerate(feeds)],)
    return (groups, rows, fresh, v, *tail)
