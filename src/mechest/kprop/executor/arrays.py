"""The executor's kept arrays: constants (``constant``: made once per namespace, device, dtype and name),
scratch arrays (``buffer``, ``workspace``: reused until ``release_buffers``) and the off-diagonal mask
(``off_diagonal``)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

_CONSTANTS: dict = {}
_BUFFERS: dict = {}


def array_key(xp: Any, like: Any, name: Any) -> tuple:
    """What identifies an array the executor keeps: its namespace, ``like``'s device and dtype, and ``name``."""
    return id(xp), str(getattr(like, "device", "")), str(like.dtype), name


def constant(xp: Any, like: Any, name: Any, values: Callable[[], Any]) -> Any:
    """``xp.asarray(values())`` in ``like``'s dtype and on its device, made once per (namespace, device, dtype,
    ``name``): the executor's constant coefficient arrays (``name`` must determine ``values``)."""
    key = array_key(xp, like, name)
    if key not in _CONSTANTS:
        _CONSTANTS[key] = xp.asarray(values(), dtype=like.dtype)
    return _CONSTANTS[key]


def buffer(xp: Any, like: Any, role: str, shape: tuple) -> Any:
    """A scratch array of ``shape`` in ``like``'s dtype, made once per (namespace, device, dtype, role, shape) and
    reused by every later caller of that shape until ``release_buffers``: Strassen's block combinations and block
    products are large and short-lived, and freeing them at every product costs far more time outside the FLOP
    counter's timers than the few operations that fill them (phase 2's residual-time gate)."""
    key = array_key(xp, like, (role, shape))
    if key not in _BUFFERS:
        _BUFFERS[key] = xp.empty(shape, dtype=like.dtype)
    return _BUFFERS[key]


@dataclass
class Workspace:
    """A scratch array (``workspace``) and the views of it its user keeps, per shape asked for."""

    array: Any
    views: dict = field(default_factory=dict)


_WORKSPACES: dict = {}


WORKSPACE_HEADROOM = 1.25
"""How much longer than asked a workspace's growing axis is made, so that the slowly growing shapes of the κ_3
sources' products (a source or a compressed basis more a layer) rarely make it anew."""


def workspace(xp: Any, like: Any, role: str, shape: tuple, transposed: bool = False) -> tuple[Any, dict]:
    """A scratch array of ``shape`` (…, rows, columns) in ``like``'s dtype, and a dict for the views of it the caller
    keeps (per shape). It is a view of one array per (namespace, device, dtype, ``role``) whose second-to-last axis
    — the rows, or with ``transposed`` the columns, stored first — may be longer (a contiguous run of whole rows,
    which elementwise operations and BLAS read as fast as a matrix of its own); the array is made anew
    (WORKSPACE_HEADROOM longer, the old one freed first) only when ``shape`` does not fit in it, and lives until
    ``release_buffers``. Strassen's block combinations are several times the size of their operands, and freeing
    and making such arrays costs time outside the FLOP counter's timers."""
    key = array_key(xp, like, role)
    *lead, rows, columns = shape
    grows, fixed = (columns, rows) if transposed else (rows, columns)
    space = _WORKSPACES.get(key)
    stored = None if space is None else tuple(space.array.shape)
    if stored is None or stored[:-2] != tuple(lead) or stored[-1] != fixed or stored[-2] < grows:
        _WORKSPACES.pop(key, None)
        length = max(math.ceil(grows * WORKSPACE_HEADROOM), stored[-2] if stored and stored[-1] == fixed else 0)
        space = _WORKSPACES[key] = Workspace(xp.empty((*lead, length, fixed), dtype=like.dtype))
    views = space.views.setdefault(tuple(shape), {})
    if "array" not in views:
        view = space.array[..., :grows, :]
        views["array"] = xp.swapaxes(view, -1, -2) if transposed else view
    return views["array"], views


def release_buffers() -> None:
    """Drop the scratch arrays of ``buffer`` and ``workspace`` (``planned`` does when it ends)."""
    _BUFFERS.clear()
    _WORKSPACES.clear()


def off_diagonal(xp: Any, matrix: Any) -> Any:
    """The matrix (or each of a stack) with its diagonal set to zero (the (1,1) slice of a symmetric 2-tensor):
    times the mask 1{i ≠ j}, a ``constant`` made by a comparison (which no FLOP counter bills, so that a first call
    costs what every later one does) and stored in the matrix's dtype (a boolean mask is converted at every use)."""
    width = matrix.shape[-1]
    return matrix * constant(xp, matrix, ("off-diagonal", width), lambda: xp.eye(width, dtype=matrix.dtype) == 0)
