"""The FLOP counter against hand counts."""

from __future__ import annotations

from math import comb

import pytest
import torch

from mechest.flops import FlopCounter, slice_factor, symmetric_axes


def test_matrix_products_cost_two_m_k_n() -> None:
    a, b = torch.ones(4, 3), torch.ones(3, 2)
    with FlopCounter() as counter:
        a @ b
        torch.einsum("bij,bjk->bik", torch.ones(5, 4, 3), torch.ones(5, 3, 2))
        torch.addmm(torch.ones(4, 2), a, b)
        torch.dot(torch.ones(7), torch.ones(7))
        torch.ones(3, 4) @ torch.ones(4)
    assert counter.by_operation == {"mm": 48, "bmm": 240, "addmm": 48 + 8, "dot": 14, "mv": 24}


def test_elementwise_and_reductions() -> None:
    x = torch.ones(10, 3)
    with FlopCounter() as counter:
        y = x * 2 + 1
        y.sum()
        y.sum(dim=0)
        y.mean(dim=1)
        torch.exp(y)
        y.clone()
        y > 0
    assert counter.by_operation == {"mul": 30, "add": 30, "sum": 29 + 27, "mean": 30, "exp": 30}


def test_counts_in_place_operations_and_nothing_outside() -> None:
    x = torch.ones(6)
    with FlopCounter() as counter:
        x.mul_(3)
    x.mul_(3)
    assert counter.total == 6


def test_symmetric_outputs_are_discounted_to_their_distinct_entries() -> None:
    n = 5
    a = torch.randn(n, n, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    symmetric = a + a.T
    cube = torch.randn(n, n, n, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    cube = sum(cube.permute(*p) for p in [(0, 1, 2), (0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0)])
    with FlopCounter(discount=True) as counter:
        symmetric * 2  # symmetric 2-tensor: C(n+1, 2) distinct entries
    assert counter.total == n * n and counter.discounted == pytest.approx(n * (n + 1) / 2)
    with FlopCounter(discount=True) as counter:
        cube * 2  # symmetric 3-tensor: C(n+2, 3)
    assert counter.total == n**3 and counter.discounted == pytest.approx(comb(n + 2, 3))
    with FlopCounter(discount=True) as counter:
        a * 2  # not symmetric: no discount
        torch.ones(3, n, n) * symmetric  # batch axis of another size: only the trailing pair is symmetric
    assert counter.total == n * n + 3 * n * n
    assert counter.discounted == pytest.approx(n * n + 3 * n * (n + 1) / 2)


def test_symmetric_axes_and_slice_factor() -> None:
    assert symmetric_axes(torch.ones(4, 4, 4)) == 3
    assert symmetric_axes(torch.arange(16.0).reshape(4, 4)) == 0
    assert symmetric_axes(torch.ones(4)) == 0
    assert slice_factor(256, 3) == pytest.approx(comb(258, 3) / 256**3)
    assert abs(slice_factor(10**6, 4) - 1 / 24) < 1e-5
