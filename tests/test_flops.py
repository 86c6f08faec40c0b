"""The FLOP counter against hand counts."""

from __future__ import annotations

import torch

from mechest.flops import FlopCounter


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
