"""Counting floating-point operations of the torch operations actually run (design §8 convention).

Rules, per aten operation:
- matrix products (mm, bmm, mv, dot, and einsum, which torch lowers to them): 2·m·k·n;
  addmm / baddbmm / addmv add one FLOP per output entry for the added term;
- elementwise arithmetic and transcendental functions (add, sub, mul, div, pow, neg, abs, sqrt, exp,
  log, erf, tanh, sigmoid, relu, ...): one FLOP per output entry;
- sum and prod: (r - 1) per output entry, i.e. input size - output size; mean: r per output entry;
- everything else (views, copies, comparisons, clamps, indexing, random-number generation): 0.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from functools import cache

import torch
from torch.utils._python_dispatch import TorchDispatchMode

_ELEMENTWISE = frozenset(
    "add sub rsub mul div true_divide pow neg abs sqrt rsqrt reciprocal exp expm1 log log1p sin cos tanh sigmoid "
    "relu erf erfc erfinv square addcmul addcdiv lerp".split()
)
_REDUCTIONS = frozenset(["sum", "prod"])


def _matmul_flops(name: str, args: tuple, out: torch.Tensor) -> int:
    """2·m·k·n for the product, plus one per output entry for the added term of the add* forms."""
    is_plain_product = name in ("mm", "bmm", "mv", "dot")
    left_factor = args[0] if is_plain_product else args[1]
    added = 0 if is_plain_product else out.numel()
    return 2 * out.numel() * left_factor.shape[-1] + added


def _operation_flops(name: str, args: tuple, out: object) -> int:
    """FLOPs of one aten operation under the module's rules (0 for anything not listed)."""
    if not isinstance(out, torch.Tensor):
        return 0
    if name in ("mm", "bmm", "mv", "dot", "addmm", "baddbmm", "addmv"):
        return _matmul_flops(name, args, out)
    if name in _ELEMENTWISE:
        return out.numel()
    if name in _REDUCTIONS and isinstance(args[0], torch.Tensor):
        return args[0].numel() - out.numel()
    if name == "mean" and isinstance(args[0], torch.Tensor):
        return args[0].numel()
    return 0


class FlopCounter(TorchDispatchMode):
    """Context manager that counts the FLOPs of every torch operation run inside it.

    >>> with FlopCounter() as counter:
    ...     y = torch.ones(4, 3) @ torch.ones(3, 2)
    >>> counter.total
    48
    """

    def __init__(self) -> None:
        super().__init__()
        self.by_operation: Counter[str] = Counter()

    @property
    def total(self) -> int:
        return sum(self.by_operation.values())

    def __torch_dispatch__(self, func: Callable, types: tuple, args: tuple = (), kwargs: dict | None = None) -> object:
        out = func(*args, **(kwargs or {}))
        name = func.overloadpacket.__name__.rstrip("_")
        flops = _operation_flops(name, args, out)
        if flops:
            self.by_operation[name] += flops
        return out


@cache
def warm_up() -> None:
    """Count one operation once: torch imports and sets up its compiler stack (seconds) on the first operation
    dispatched to a mode. Call this before timing a counted computation so that the one-time cost is not
    billed to it; afterwards counting costs tens of microseconds per operation.
    """
    with FlopCounter():
        torch.ones(1) * 1
