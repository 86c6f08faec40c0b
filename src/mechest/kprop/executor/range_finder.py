"""The randomized range finder of the κ_3 sources' compression and thin correction: a fixed test matrix and
an orthonormal basis of the (power-iterated) sketch."""

from __future__ import annotations

import math
from typing import Any

from .arrays import constant


def test_matrix(xp: Any, like: Any, rows: int, columns: int) -> Any:
    """A fixed (3, rows, columns) test matrix for the range finder, sin(α_a β_c + γ_a) with α, β, γ drawn once from
    a seeded stdlib generator (few operations, the same on every namespace), a ``constant`` per shape."""

    def values() -> Any:
        import random

        generator = random.Random(rows * 100003 + columns)
        alpha = [[generator.uniform(0.0, 1000.0)] for _ in range(3 * rows)]
        gamma = [[generator.uniform(0.0, 2.0 * math.pi)] for _ in range(3 * rows)]
        beta = [[generator.uniform(0.5, 1.5) for _ in range(columns)]]
        angles = xp.asarray(alpha, dtype=like.dtype) * xp.asarray(beta, dtype=like.dtype)
        return xp.sin(angles + xp.asarray(gamma, dtype=like.dtype)).reshape(3, rows, columns)

    return constant(xp, like, ("range-finder test matrix", rows, columns), values)


def range_basis(xp: Any, matrix: Any, test: Any, power: int) -> Any:
    """An orthonormal basis of the range of ``matrix`` (n × K) as seen by the test matrix (K × r): the QR of
    (A Aᵀ)^power A Ω (a randomized range finder; exact when r ≥ the rank of A)."""
    sketch = matrix @ test
    for _ in range(power):
        sketch = matrix @ (matrix.T @ sketch)
    return xp.linalg.qr(sketch)[0]
