"""Matrix products by Strassen's recursion (``product``) and their FLOPs (``product_flops``)."""

from __future__ import annotations

import functools
import inspect
import math
import string
from typing import Any

from .arrays import buffer, constant

STRASSEN_LEFT = [[[1, 0], [0, 1]], [[0, 0], [1, 1]], [[1, 0], [0, 0]], [[0, 0], [0, 1]], [[1, 1], [0, 0]],
                  [[-1, 0], [1, 0]], [[0, 1], [0, -1]]]


STRASSEN_RIGHT = [[[1, 0], [0, 1]], [[1, 0], [0, 0]], [[0, 1], [0, -1]], [[-1, 0], [1, 0]], [[0, 0], [0, 1]],
                  [[1, 1], [0, 0]], [[0, 0], [1, 1]]]


STRASSEN_OUT = [[[1, 0], [0, 1]], [[0, 0], [1, -1]], [[0, 1], [0, 1]], [[1, 0], [1, 0]], [[-1, 1], [0, 0]],
                [[0, 0], [0, 1]], [[1, 0], [0, 0]]]
"""Strassen's seven products of 2×2 blocks: M_u = (Σ_ab L[u][a][b] A_ab)(Σ_ab R[u][a][b] B_ab), and
C_ab = Σ_u O[u][a][b] M_u."""


@functools.cache
def level_subscripts(levels: int) -> tuple[str, str, str]:
    """einsum subscripts for ``levels`` Strassen levels at once: the coefficient tensors ("u a b" per level), a
    matrix cut into blocks (its row bits a_1…a_L, the block row i, its column bits b_1…b_L, the block column j; level
    1 the most significant bit) and the stack of combinations (u_1…u_L, i, j)."""
    letters = iter(string.ascii_letters)
    u, a, b = ([next(letters) for _ in range(levels)] for _ in range(3))
    i, j = next(letters), next(letters)
    coefficients = ",".join(f"{u[level]}{a[level]}{b[level]}" for level in range(levels))
    return coefficients, "".join(a) + i + "".join(b) + j, "".join(u) + i + j


@functools.cache
def takes_out(xp: Any) -> bool:
    """Whether the namespace's einsum writes into a given array and takes a contraction order (``out=``,
    ``optimize=``; its matmul then takes ``out=`` too): numpy's and flopscope's do, torch's does not."""
    return {"out", "optimize"} <= set(inspect.signature(xp.einsum).parameters)


def contract(xp: Any, subscripts: str, *operands: Any, out: Any | None = None) -> Any:
    """``xp.einsum``; with ``out`` written into it and contracted pairwise (numpy's einsum would otherwise loop over
    every index of these many-operand sums at once)."""
    if out is None:
        return xp.einsum(subscripts, *operands)
    return xp.einsum(subscripts, *operands, out=out, optimize="greedy")


def combinations(xp: Any, matrix: Any, coefficients: Any, levels: int, transposed: bool = False,
                 out: Any | None = None) -> Any:
    """The 7^levels block combinations Σ_ab C[u][a][b] X_ab, applied level by level, of X = ``matrix`` (or of its
    transpose, read in place: no copy), as one einsum (``contract``, into ``out`` if given): shape
    (7,)*levels + (rows, columns) / 2^levels."""
    rows, columns = matrix.shape[::-1] if transposed else matrix.shape
    terms, blocks, stack = level_subscripts(levels)
    halves = (2,) * levels
    if transposed:  # X = matrixᵀ: the stored matrix's rows are X's columns
        split = matrix.reshape(*halves, columns >> levels, *halves, rows >> levels)
        bits = len(blocks) // 2
        blocks = blocks[bits:] + blocks[:bits]
    else:
        split = matrix.reshape(*halves, rows >> levels, *halves, columns >> levels)
    return contract(xp, f"{terms},{blocks}->{stack}", *([coefficients] * levels), split, out=out)


def product(xp: Any, a: Any, b: Any, levels: int = 0, transposed: bool = False) -> Any:
    """a @ b (both 2-D; ``transposed``: a @ bᵀ, b read in place) by ``levels`` levels of Strassen's recursion: one
    einsum per operand forms all 7^levels block combinations, one batched matmul their products, one einsum
    recombines them (eight operations with the reshapes, whatever the depth, which phase 2's residual-time gate
    needs): (7/8)^levels of the dense product's multiplications plus O(size of the operands) (``product_flops``).
    Where the namespace takes ``out=`` (``takes_out``) and both operands share a dtype, the combinations and block
    products go into scratch arrays reused from product to product (``buffer``) and the result into a fresh
    contiguous array, so that those large arrays are not freed between operations. Dense ``@`` when levels = 0 or
    a dimension is not divisible by 2^levels. Exact in exact arithmetic; in floating point the error grows by a
    small factor per level."""
    n, k = a.shape
    m = b.shape[0] if transposed else b.shape[1]
    if levels == 0 or any(d % 2**levels for d in (n, k, m)):
        return a @ (b.T if transposed else b)
    terms, blocks, stack = level_subscripts(levels)
    sevens, halves, size = (7,) * levels, (2,) * levels, 2**levels
    outer, inner, right_width = n // size, k // size, m // size
    scratch = takes_out(xp) and a.dtype == b.dtype
    left = combinations(xp, a, constant(xp, a, "strassen left", lambda: STRASSEN_LEFT), levels,
                        out=buffer(xp, a, "left", (*sevens, outer, inner)) if scratch else None)
    right = combinations(xp, b, constant(xp, b, "strassen right", lambda: STRASSEN_RIGHT), levels, transposed,
                         out=buffer(xp, b, "right", (*sevens, inner, right_width)) if scratch else None)
    blocks_product = (xp.matmul(left, right, out=buffer(xp, a, "products", (*sevens, outer, right_width)))
                      if scratch else left @ right)
    coefficients = constant(xp, blocks_product, "strassen out", lambda: STRASSEN_OUT)
    out = xp.empty((*halves, outer, *halves, right_width), dtype=a.dtype) if scratch else None
    return contract(xp, f"{terms},{stack}->{blocks}", *([coefficients] * levels), blocks_product,
                    out=out).reshape((n, m))


def product_flops(n: int, k: int, m: int, levels: int = 0) -> int:
    """FLOPs of ``product`` for an (n × k)(k × m) product as flopscope bills it (an upper bound): the 7^levels block
    products 2nkm (7/8)^levels; each operand's reshape into blocks (one FLOP an entry) and its combinations, one
    einsum over the levels whose pairwise steps bill 2·4 − 1 FLOPs per entry of level i's (7/4)^i (nk + km) entries
    (a sum over the four blocks), plus one an entry of the last level's for the copy into its scratch array; the
    recombination, 2·7 − 1 per entry of level i's (7/4)^(i−1) nm (a sum over the seven products), its copy into
    the result (nm) and the result's reshape (nm). 2nkm where a dimension is not divisible by 2^levels (``product``
    is dense there)."""
    if levels == 0 or any(d % 2**levels for d in (n, k, m)):
        return 2 * n * k * m
    blocks, products = 4, len(STRASSEN_OUT)
    growth = products / blocks
    split = (n * k + k * m) * (1 + (2 * blocks - 1) * sum(growth**i for i in range(1, levels + 1)) + growth**levels)
    recombine = n * m * (2 + (2 * products - 1) * sum(growth**i for i in range(levels)))
    return math.ceil(2 * n * k * m * (products / 8) ** levels + split + recombine)
