"""The executor's constant arrays (``constant``: made once per namespace, device, dtype and name) and the
off-diagonal mask (``off_diagonal``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

_CONSTANTS: dict = {}


def constant(xp: Any, like: Any, name: Any, values: Callable[[], Any]) -> Any:
    """``xp.asarray(values())`` in ``like``'s dtype and on its device, made once per (namespace, device, dtype,
    ``name``): the executor's constant coefficient arrays (``name`` must determine ``values``)."""
    key = (id(xp), str(getattr(like, "device", "")), str(like.dtype), name)
    if key not in _CONSTANTS:
        _CONSTANTS[key] = xp.asarray(values(), dtype=like.dtype)
    return _CONSTANTS[key]


def off_diagonal(xp: Any, matrix: Any) -> Any:
    """The matrix (or each of a stack) with its diagonal set to zero (the (1,1) slice of a symmetric 2-tensor):
    times the mask 1{i ≠ j}, a ``constant`` made by a comparison (which no FLOP counter bills, so that a first call
    costs what every later one does) and stored in the matrix's dtype (a boolean mask is converted at every use)."""
    width = matrix.shape[-1]
    return matrix * constant(xp, matrix, ("off-diagonal", width), lambda: xp.eye(width, dtype=matrix.dtype) == 0)
