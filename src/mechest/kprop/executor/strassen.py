"""Matrix products by Strassen's recursion (``product``) and their FLOPs (``product_flops``)."""

from __future__ import annotations

import math
from typing import Any

STRASSEN_LEFT = [[[1, 0], [0, 1]], [[0, 0], [1, 1]], [[1, 0], [0, 0]], [[0, 0], [0, 1]], [[1, 1], [0, 0]],
                  [[-1, 0], [1, 0]], [[0, 1], [0, -1]]]


STRASSEN_RIGHT = [[[1, 0], [0, 1]], [[1, 0], [0, 0]], [[0, 1], [0, -1]], [[-1, 0], [1, 0]], [[0, 0], [0, 1]],
                  [[1, 1], [0, 0]], [[0, 0], [1, 1]]]


STRASSEN_OUT = [[[1, 0], [0, 1]], [[0, 0], [1, -1]], [[0, 1], [0, 1]], [[1, 0], [1, 0]], [[-1, 1], [0, 0]],
                [[0, 0], [0, 1]], [[1, 0], [0, 0]]]
"""Strassen's seven products of 2×2 blocks: M_u = (Σ_ab L[u][a][b] A_ab)(Σ_ab R[u][a][b] B_ab), and
C_ab = Σ_u O[u][a][b] M_u."""


def strassen_split(xp: Any, x: Any, coefficients: list) -> Any:
    """(T, Z, r, c) → (7T, Z, r/2, c/2): the seven block combinations of every matrix (one einsum)."""
    t, batch, rows, cols = x.shape
    blocks = x.reshape(t, batch, 2, rows // 2, 2, cols // 2)
    out = xp.einsum("uab,tzaibj->utzij", xp.asarray(coefficients, dtype=x.dtype), blocks)
    return out.reshape(7 * t, batch, rows // 2, cols // 2)


def product(xp: Any, a: Any, b: Any, levels: int = 0) -> Any:
    """a @ b (a 2-D, b 2-D or a stack of matrices) by ``levels`` levels of Strassen's recursion, each level one
    einsum per operand forming the seven block combinations, the 7^levels block products one batched matmul,
    and one einsum per level recombining them: (7/8)^levels of the dense product's multiplications plus
    O(size of the operands) (``product_flops``). Dense ``@`` when levels = 0 or a dimension is not divisible
    by 2^levels. Exact in exact arithmetic; in floating point the error grows by a small factor per level."""
    n, k = a.shape
    m = b.shape[-1]
    if levels == 0 or any(d % 2**levels for d in (n, k, m)):
        return a @ b
    left, right = a.reshape(1, 1, n, k), b.reshape(1, -1, k, m)
    for _ in range(levels):
        left, right = strassen_split(xp, left, STRASSEN_LEFT), strassen_split(xp, right, STRASSEN_RIGHT)
    out = left @ right
    coefficients = xp.asarray(STRASSEN_OUT, dtype=out.dtype)
    for _ in range(levels):
        count, batch, p, q = out.shape
        out = xp.einsum("uab,utzij->tzaibj", coefficients, out.reshape(7, count // 7, batch, p, q))
        out = out.reshape(count // 7, batch, 2 * p, 2 * q)
    return out.reshape(*b.shape[:-2], n, m)


def product_flops(n: int, k: int, m: int, levels: int = 0) -> int:
    """FLOPs of ``product`` for an (n × k)(k × m) product: the 7^levels block products 2nkm (7/8)^levels, and per
    level i the block combinations, ≤ 10 FLOPs per output entry of the operands' (7/4)^i·(nk + km) entries, and the
    recombination, ≤ 16 per entry of (7/4)^(i−1)·nm (an envelope of flopscope's count, which is ≈ 8 and 14 plus the
    block products' own overhead); 2nkm where a dimension is not divisible by 2^levels (``product`` is dense
    there)."""
    if levels == 0 or any(d % 2**levels for d in (n, k, m)):
        return 2 * n * k * m
    combinations = sum(10 * (7 / 4) ** i * (n * k + k * m) + 16 * (7 / 4) ** (i - 1) * n * m
                       for i in range(1, levels + 1))
    return math.ceil(2 * n * k * m * (7 / 8) ** levels + combinations)
