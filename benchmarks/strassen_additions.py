"""Strassen's products with the block combinations formed by additions instead of one einsum per level (issue 15;
docs/results.md, "Tried and not kept"): what flopscope charges and how long it takes, against the executor's
einsum form (mechest.kprop.executor.product) and the dense product, for W (n×n) times a stack of k n×n matrices in
float32, the shape of a phase-2 layer's source mapping.

    PYTHONPATH=src python benchmarks/strassen_additions.py [--width 1024] [--stack 6] [--levels 0 1 2 3 4 5]

Per level the additions form the seven left and seven right combinations (five sums or differences each, as two
stacked additions) and recombine the seven products (eight additions); flopscope bills every stack, concatenation
and non-contiguous reshape as one FLOP per element copied, which this prints per operation.
"""

from __future__ import annotations

import argparse
import json
import time

import flopscope
import flopscope.numpy as fnp
import numpy as np

from mechest.kprop.executor import product


def blocks(x):
    """(T, Z, r, c) → the four block views (T, Z, r/2, c/2): 11, 12, 21, 22."""
    t, z, r, c = x.shape
    b = x.reshape(t, z, 2, r // 2, 2, c // 2)
    return b[:, :, 0, :, 0], b[:, :, 0, :, 1], b[:, :, 1, :, 0], b[:, :, 1, :, 1]


def seven(xp, parts):
    """The seven combinations, in Strassen's product order, stacked on the first axis: (7T, Z, r, c)."""
    out = xp.concatenate(parts)
    return out.reshape(-1, *out.shape[2:])


def left_combinations(xp, x):
    """A11 + A22, A21 + A22, A11, A22, A11 + A12, A21 − A11, A12 − A22."""
    a11, a12, a21, a22 = blocks(x)
    sums = xp.stack([a11, a21, a11]) + xp.stack([a22, a22, a12])
    differences = xp.stack([a21, a12]) - xp.stack([a11, a22])
    return seven(xp, [sums[:2], xp.stack([a11, a22]), sums[2:], differences])


def right_combinations(xp, x):
    """B11 + B22, B11, B12 − B22, B21 − B11, B22, B11 + B12, B21 + B22."""
    b11, b12, b21, b22 = blocks(x)
    sums = xp.stack([b11, b11, b21]) + xp.stack([b22, b12, b22])
    differences = xp.stack([b12, b21]) - xp.stack([b22, b11])
    return seven(xp, [sums[:1], xp.stack([b11]), differences, xp.stack([b22]), sums[1:]])


def recombined(xp, m):
    """(7T, Z, p, q) → (T, Z, 2p, 2q): C11 = M1 + M4 − M5 + M7, C12 = M3 + M5, C21 = M2 + M4,
    C22 = M1 − M2 + M3 + M6."""
    m1, m2, m3, m4, m5, m6, m7 = m.reshape(7, m.shape[0] // 7, *m.shape[1:])
    sums = xp.stack([m1, m3, m2, m3]) + xp.stack([m4, m5, m4, m6])
    differences = xp.stack([m7, m1]) - xp.stack([m5, m2])
    c11, c22 = sums[0] + differences[0], sums[3] + differences[1]
    top = xp.concatenate([c11, sums[1]], axis=-1)
    return xp.concatenate([top, xp.concatenate([sums[2], c22], axis=-1)], axis=-2)


def additions_product(xp, a, b, levels):
    """a (n×k) @ b (Z×k×m) by ``levels`` levels of Strassen with the combinations formed by additions."""
    n, k = a.shape
    left, right = a.reshape(1, 1, n, k), b.reshape(1, -1, k, b.shape[-1])
    for _ in range(levels):
        left, right = left_combinations(xp, left), right_combinations(xp, right)
    out = left @ right
    for _ in range(levels):
        out = recombined(xp, out)
    return out.reshape(b.shape[:-2] + (n, b.shape[-1]))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--stack", type=int, default=6)
    parser.add_argument("--levels", type=int, nargs="+", default=[0, 1, 2, 3, 4, 5])
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    a = rng.standard_normal((args.width, args.width)).astype(np.float32)
    b = rng.standard_normal((args.stack, args.width, args.width)).astype(np.float32)
    exact = a.astype(np.float64) @ b.astype(np.float64)
    dense = 2 * args.width**3 * args.stack
    wide = np.ascontiguousarray(b.transpose(1, 0, 2).reshape(args.width, args.stack * args.width))

    def executor_product(xp, left, _, levels):  # the executor's product takes the stack side by side, 2-D
        out = product(xp, left, xp.asarray(wide), levels)
        return np.asarray(out).reshape(args.width, args.stack, args.width).transpose(1, 0, 2)

    for name, run in (("einsum", executor_product), ("additions", additions_product)):
        for levels in args.levels:
            with flopscope.BudgetContext(flop_budget=10**16, quiet=True) as budget:
                start = time.perf_counter()
                out = run(fnp, fnp.asarray(a), fnp.asarray(b), levels)
                seconds = time.perf_counter() - start
            error = float(np.abs(np.asarray(out) - exact).max() / np.abs(exact).max())
            print(json.dumps({"form": name, "levels": levels, "flops_over_dense": budget.flops_used / dense,
                              "seconds": round(seconds, 3), "max_relative_error": error}), flush=True)


if __name__ == "__main__":
    main()
