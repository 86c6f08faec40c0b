"""Compressed κ_3 sources (``Compression``, docs/method.md §7.6): each older source projected onto an
orthonormal basis of its own factors."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .range_finder import range_basis, test_matrix
from .sources import Sources, expanded, is_compressed, is_thin, source_range


@dataclass(frozen=True)
class Compression:
    """Compressed κ_3 sources (docs/method.md §7.6): only the ``age`` newest sources are kept as full factors; an
    older one is projected once onto its own orthonormal basis B (n × ``rank``) of the row space of its factors
    [T, P, Q] (randomized range finder: a fixed test matrix, ``power`` power iterations, QR), X ≈ B (Bᵀ X). Later
    layers map only B (2n²r a layer instead of 6n³), and its slices cost ≈ 14n²r instead of 6n³. At rank ≥ the
    source's width it is exact (B square orthogonal)."""

    age: int
    rank: int
    power: int = 0

    def __post_init__(self) -> None:
        if self.age < 1 or self.rank < 1 or self.power < 0:
            raise ValueError(f"compression needs age ≥ 1, rank ≥ 1, power ≥ 0; got {self}")


def compressed_source(xp: Any, factors: Any, rank: int, power: int) -> tuple[Any, Any]:
    """(B, Bᵀ X) for one source's factors X = (T, P, Q) (n, 3, m): B (n × rank) an orthonormal basis of the range of
    Σ_j X̂_j Ω_j (X̂_j = X_j / ‖X_j‖_F, so that each factor is represented; ``power`` times Y ← Σ_j X̂_j X̂_jᵀ Y);
    Bᵀ X as (3, rank, m)."""
    norms = xp.sqrt(xp.sum(xp.sum(factors * factors, axis=2), axis=0))
    scaled = (factors / norms[None, :, None]).reshape(factors.shape[0], -1)
    test = test_matrix(xp, factors, factors.shape[-1], rank).reshape(scaled.shape[1], rank)
    basis = range_basis(xp, scaled, test, power)
    return basis, xp.einsum("nr,njk->jrk", basis, factors)


def compressed(xp: Any, groups: Sources, compression: Compression | None,
               feeds: list | None = None) -> tuple[Sources, list | None]:
    """``groups`` with every full source but the ``compression.age`` newest compressed (``compressed_source``), each
    into the compressed group of its (rank, width): the compressed groups first, then the remaining full and thin
    ones; unchanged when ``compression`` is None. ``feeds`` (the closure's, one per-source (β, y) or None per group,
    ``FourthCore.feed``, ``mapped_feeds``) follow the groups: a source's feed is dropped when it is compressed (an
    approximation: only the ``age`` newest keep theirs), so the compressed groups' are None. Returns (groups,
    feeds); feeds None when ``feeds`` is."""
    if compression is None:
        return groups, feeds
    full = [(group, None if feeds is None else feeds[index]) for index, group in enumerate(groups)
            if not is_compressed(group)]
    excess = sum(group[0].shape[1] for group, _ in full) - compression.age
    out = [group for group in groups if is_compressed(group)]
    kept, kept_feeds = [], []
    for group, feed in full:
        count = min(max(excess, 0), group[0].shape[1])
        excess -= count
        if count:  # a thin source is compressed from its expanded factors (T, P, Q)
            factors, scales = expanded(xp, source_range(group, 0, count) if is_thin(group) else group)
            for index in range(count):
                basis, coefficients = compressed_source(xp, factors[:, index],
                                                        min(compression.rank, factors.shape[3]), compression.power)
                out = joined(xp, out, (basis[None], coefficients[None], scales[index][None]))
        if count < group[0].shape[1]:
            kept.append(source_range(group, count))
            kept_feeds.append(None if feed is None else (feed[0][count:], feed[1][:, count:]))  # per source
    return [*out, *kept], None if feeds is None else [*[None] * len(out), *kept_feeds]


def joined(xp: Any, groups: Sources, group: tuple) -> Sources:
    """Compressed ``groups`` with the compressed ``group`` stacked onto the one of the same shapes (rank and width),
    else appended."""
    for index, other in enumerate(groups):
        if all(a.shape[1:] == b.shape[1:] for a, b in zip(other, group, strict=True)):
            merged = tuple(xp.concatenate([a, b]) for a, b in zip(other, group, strict=True))
            return [*groups[:index], merged, *groups[index + 1:]]
    return [*groups, group]
