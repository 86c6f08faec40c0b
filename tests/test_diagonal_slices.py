"""Diagonal-slice representation (docs/method.md §3.1): slice views, round trips, masks, symmetrization."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from mechest.math.combinatorics import integer_partitions
from mechest.math.tensors.diagonal_slices import (
    distinct_mask,
    from_dense,
    slice_from_dense,
    symmetrize,
    symmetrize_slice,
    to_dense,
    zero_repeated,
)

# Float64 round-off: averaging over up to 5! permutations and re-summing leaves relative errors of a
# few ulps, far below 1e-12.
TOL = {"rtol": 1e-12, "atol": 1e-12}


def random_symmetric(n: int, d: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return symmetrize(torch.randn((n,) * d, generator=generator, dtype=torch.float64))


@pytest.mark.parametrize("d", range(1, 6))
def test_slice_entries_are_the_dense_entries(d: int) -> None:
    n = 4
    tensor = random_symmetric(n, d, seed=d)
    for p in integer_partitions(d):
        s = slice_from_dense(tensor, p)
        assert s.shape == (n,) * len(p)
        for index in itertools.product(range(n), repeat=len(p)):
            dense_index = tuple(i for i, part in zip(index, p, strict=True) for _ in range(part))
            expected = tensor[dense_index] if len(set(index)) == len(index) else 0.0
            assert s[index].item() == expected


@pytest.mark.parametrize("d", range(0, 6))
@pytest.mark.parametrize("n", [1, 3, 4])
def test_dense_round_trip(d: int, n: int) -> None:
    tensor = random_symmetric(n, d, seed=10 * d + n)
    slices = from_dense(tensor)
    assert set(slices) == set(integer_partitions(d))
    torch.testing.assert_close(to_dense(slices, n, d), tensor, **TOL)


@pytest.mark.parametrize("d", range(1, 6))
def test_slice_round_trip(d: int) -> None:
    """Slices of a symmetric tensor (zero on repeats, symmetric in equal parts) survive to_dense/from_dense."""
    n = 4
    generator = torch.Generator().manual_seed(d)
    slices = {
        p: symmetrize_slice(zero_repeated(torch.randn((n,) * len(p), generator=generator, dtype=torch.float64)), p)
        for p in integer_partitions(d)
    }
    back = from_dense(to_dense(slices, n, d))
    for p in integer_partitions(d):
        torch.testing.assert_close(back[p], slices[p], **TOL)


def test_to_dense_is_symmetric_and_fills_only_its_pattern() -> None:
    n, p = 4, (2, 1)
    s = zero_repeated(torch.randn(n, n, dtype=torch.float64))
    dense = to_dense({p: s}, n, 3)
    torch.testing.assert_close(symmetrize(dense), dense, **TOL)
    for index in itertools.product(range(n), repeat=3):
        if len(set(index)) == 2:
            repeated = next(i for i in index if index.count(i) == 2)
            single = next(i for i in index if index.count(i) == 1)
            assert dense[index].item() == s[repeated, single].item()
        else:
            assert dense[index].item() == 0.0


def test_to_dense_ignores_entries_on_repeated_indices() -> None:
    n = 3
    full = torch.randn(n, n, dtype=torch.float64)
    torch.testing.assert_close(to_dense({(1, 1): full}, n, 2), to_dense({(1, 1): zero_repeated(full)}, n, 2), **TOL)


@pytest.mark.parametrize(("n", "m"), [(4, 0), (4, 1), (4, 2), (5, 3), (3, 4), (2, 3)])
def test_distinct_mask_counts_injective_tuples(n: int, m: int) -> None:
    mask = distinct_mask(n, m, torch.float64)
    assert mask.shape == (n,) * m and mask.dtype == torch.float64
    assert mask.sum().item() == math.perm(n, m)
    for index in itertools.product(range(n), repeat=m):
        assert mask[index].item() == float(len(set(index)) == m)


def test_distinct_mask_is_cached_per_dtype() -> None:
    assert distinct_mask(4, 3, torch.float64) is distinct_mask(4, 3, torch.float64)
    assert distinct_mask(4, 3, torch.float32).dtype == torch.float32


def test_symmetrize_slice_averages_equal_parts_only() -> None:
    n = 4
    generator = torch.Generator().manual_seed(1)
    s = torch.randn(n, n, n, n, generator=generator, dtype=torch.float64)
    p = (2, 2, 1, 1)
    sym = symmetrize_slice(s, p)
    expected = (s + s.permute(1, 0, 2, 3) + s.permute(0, 1, 3, 2) + s.permute(1, 0, 3, 2)) / 4
    torch.testing.assert_close(sym, expected, **TOL)
    torch.testing.assert_close(symmetrize_slice(sym, p), sym, **TOL)
    assert torch.equal(symmetrize_slice(s[:, :, 0, 0], (3, 1)), s[:, :, 0, 0])


def test_symmetrize_dense() -> None:
    generator = torch.Generator().manual_seed(2)
    tensor = torch.randn(3, 3, 3, generator=generator, dtype=torch.float64)
    sym = symmetrize(tensor)
    for perm in itertools.permutations(range(3)):
        torch.testing.assert_close(sym.permute(perm), sym, **TOL)
    torch.testing.assert_close(symmetrize(sym), sym, **TOL)
    expected = sum(tensor[perm] for perm in itertools.permutations((0, 1, 2))) / 6
    torch.testing.assert_close(sym[0, 1, 2], expected, **TOL)


def test_round_trip_is_differentiable_and_float32() -> None:
    tensor = random_symmetric(3, 3).requires_grad_()
    assert torch.autograd.gradcheck(lambda t: to_dense(from_dense(t), 3, 3), (tensor,))
    single = random_symmetric(3, 4).float()
    back = to_dense(from_dense(single), 3, 4)
    assert back.dtype == torch.float32
    # float32 round-off of a 4! average.
    torch.testing.assert_close(back, single, rtol=1e-6, atol=1e-6)
