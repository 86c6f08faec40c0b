"""The executor's array namespaces: torch (autograd, any device) and numpy, and an MLP as the executor's Layers."""

from __future__ import annotations

import functools
from typing import Any

import torch

from mechest.kprop.executor.layers import Backend, Layers
from mechest.math.wick import wick_table
from mechest.mlp import MLP


class TorchNamespace:
    """torch as the executor's ``xp``, its constants (``asarray``, ``eye``, ``zeros``) made on one device."""

    def __init__(self, device: torch.device) -> None:
        self.device = torch.device(device)

    def __getattr__(self, name: str) -> Any:
        return getattr(torch, name)

    def asarray(self, values: Any, dtype: torch.dtype | None = None) -> torch.Tensor:
        return torch.as_tensor(values, dtype=dtype, device=self.device)

    def eye(self, n: int, dtype: torch.dtype | None = None) -> torch.Tensor:
        return torch.eye(n, dtype=dtype, device=self.device)

    def zeros(self, n: int, dtype: torch.dtype | None = None) -> torch.Tensor:
        return torch.zeros(n, dtype=dtype, device=self.device)


@functools.cache
def _backend(device: str) -> Backend:
    return Backend(TorchNamespace(torch.device(device)), torch.special.ndtr, wick_table)


def torch_backend(device: torch.device | str) -> Backend:
    """The executor on torch tensors of ``device``: differentiable, float32 or float64, CPU or CUDA; the Wick tables
    of activations other than ReLU from mechest.math.wick (ReLU's is the executor's own closed form). One namespace
    per device, so the executor's per-namespace caches are shared."""
    return _backend(str(torch.device(device)))


def layers_of(net: MLP) -> Layers:
    """``net``'s hidden layers and output map as the executor reads them."""
    return Layers(net.weights, net.biases, net.activations)
