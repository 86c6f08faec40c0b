"""Diagonal-slice (DS) representation of symmetric tensors (docs/method.md §3.1).

Convention (plain values, no hidden scaling). A symmetric d-tensor T on [n]^d is stored as a dict
``Slices`` mapping integer partitions p = (p_1 ≥ … ≥ p_m) of d to n^m tensors

    S_p[i_1, …, i_m] = T[i_1 (p_1 times), …, i_m (p_m times)]   if i_1, …, i_m are pairwise distinct,
    S_p[i_1, …, i_m] = 0                                         if two of them coincide.

S_p holds the actual entries of T. It is symmetric under permutations of the axes that carry equal
parts p_j. Every index tuple in [n]^d has exactly one coincidence pattern, a set partition π of the
d positions, and T there equals S_{type(π)} read with the blocks of π sorted by decreasing size; so
the decomposition is lossless. A partition missing from the dict stands for a zero slice.
"""

from __future__ import annotations

import itertools
import string
from collections.abc import Mapping
from functools import lru_cache

import torch

from mechest.math.combinatorics import integer_partitions, set_partitions

IntPartition = tuple[int, ...]
Slices = dict[IntPartition, torch.Tensor]

LETTERS = string.ascii_letters


def distinct_mask(
    n: int, m: int, dtype: torch.dtype | None = None, device: torch.device | str | None = None
) -> torch.Tensor:
    """The n^m tensor equal to 1 where i_1, …, i_m are pairwise distinct and 0 elsewhere.

    Cached per (n, m, dtype, device); the returned tensor is shared, so never modify it in place.
    """
    dtype = torch.get_default_dtype() if dtype is None else dtype
    return _distinct_mask(n, m, dtype, torch.device("cpu" if device is None else device))


@lru_cache(maxsize=256)
def _distinct_mask(n: int, m: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    index = torch.arange(n, device=device)
    mask = torch.ones((n,) * m, dtype=torch.bool, device=device)
    for a, b in itertools.combinations(range(m), 2):
        mask = mask & (_along_axis(index, a, m) != _along_axis(index, b, m))
    return mask.to(dtype)


def _along_axis(vector: torch.Tensor, axis: int, m: int) -> torch.Tensor:
    """``vector`` reshaped to broadcast along ``axis`` of an m-dimensional grid."""
    shape = [1] * m
    shape[axis] = -1
    return vector.reshape(shape)


def zero_repeated(x: torch.Tensor) -> torch.Tensor:
    """x with every entry whose indices are not pairwise distinct set to 0 (all axes of one length n)."""
    if len(set(x.shape)) > 1:
        raise ValueError(f"all axes must have the same length, got shape {tuple(x.shape)}")
    n = x.shape[0] if x.ndim else 1
    return x * distinct_mask(n, x.ndim, x.dtype, x.device)


def slice_from_dense(tensor: torch.Tensor, p: IntPartition) -> torch.Tensor:
    """The type-p slice S_p of a dense symmetric tensor: its generalized diagonal, zero on repeats."""
    if sum(p) != tensor.ndim:
        raise ValueError(f"partition {p} does not match a tensor of order {tensor.ndim}")
    blocks = LETTERS[: len(p)]
    subscripts = "".join(letter * part for letter, part in zip(blocks, p, strict=True))
    return zero_repeated(torch.einsum(f"{subscripts}->{blocks}", tensor))


def from_dense(tensor: torch.Tensor) -> Slices:
    """All diagonal slices {p: S_p} of a dense symmetric tensor, one per integer partition of its order."""
    return {p: slice_from_dense(tensor, p) for p in integer_partitions(tensor.ndim)}


def to_dense(slices: Mapping[IntPartition, torch.Tensor], n: int, d: int) -> torch.Tensor:
    """The dense n^d tensor whose diagonal slices are ``slices`` (absent partitions read as zero).

    Each slice is first masked to pairwise-distinct indices and symmetrized over its equal-part axes
    (both no-ops on slices of a symmetric tensor), so the result is always symmetric. It is written on
    the generalized diagonal of every set partition of the d positions of its type.
    """
    dtype, device = _dtype_device(slices)
    if d == 0:
        scalar = slices.get(())
        return torch.zeros((), dtype=dtype, device=device) if scalar is None else scalar.clone()
    prepared = {p: symmetrize_slice(zero_repeated(s), p) for p, s in slices.items()}
    out = torch.zeros((n,) * d, dtype=dtype, device=device)
    for blocks in set_partitions(d):
        p, axis_of_position = _canonical_layout(blocks)
        if p not in prepared:
            continue
        if axis_of_position == tuple(range(d)):  # the all-distinct pattern is the tensor itself: a plain add
            out.add_(prepared[p])
        else:
            index = tuple(_along_axis(torch.arange(n, device=device), a, len(p)) for a in axis_of_position)
            out.index_put_(index, prepared[p], accumulate=True)
    return out


def _dtype_device(slices: Mapping[IntPartition, torch.Tensor]) -> tuple[torch.dtype, torch.device]:
    for s in slices.values():
        return s.dtype, s.device
    return torch.get_default_dtype(), torch.device("cpu")


def _canonical_layout(blocks: tuple[tuple[int, ...], ...]) -> tuple[IntPartition, tuple[int, ...]]:
    """Type p of a set partition of positions, and the slice axis each position reads.

    Blocks are sorted by decreasing size (stably), so that block k is read by axis k of S_p.
    """
    ordered = sorted(blocks, key=len, reverse=True)
    axis_of_position = {position: axis for axis, block in enumerate(ordered) for position in block}
    p = tuple(len(block) for block in ordered)
    return p, tuple(axis_of_position[k] for k in range(len(axis_of_position)))


def symmetrize_slice(s: torch.Tensor, p: IntPartition) -> torch.Tensor:
    """Average of a type-p slice over the permutations of its axes that carry equal parts p_j."""
    if s.ndim != len(p):
        raise ValueError(f"slice of order {s.ndim} does not match partition {p}")
    for _, run in itertools.groupby(range(len(p)), key=lambda axis: p[axis]):
        s = _symmetrize_axes(s, tuple(run))
    return s


def symmetrize(tensor: torch.Tensor) -> torch.Tensor:
    """Sym T: the average of a dense tensor over all permutations of its axes."""
    return _symmetrize_axes(tensor, tuple(range(tensor.ndim)))


def _symmetrize_axes(tensor: torch.Tensor, axes: tuple[int, ...]) -> torch.Tensor:
    """Average of ``tensor`` over all permutations of ``axes``, in O(k²) transposes for k axes.

    Coset decomposition: Σ_{σ ∈ S_k} σ = (Σ_{i ≤ k} (i k)) Σ_{π ∈ S_{k−1}} π, with (k k) the identity. So
    symmetrize over the first k − 1 axes, then average over the k transpositions that bring each
    axis to position k.
    """
    out = tensor
    for k in range(1, len(axes)):
        total = out.clone()
        for i in range(k):
            total.add_(out.transpose(axes[i], axes[k]))
        out = total.div_(k + 1)
    return out
