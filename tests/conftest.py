"""Shared fixtures: the reference goldens shipped under tests/data, and small helpers."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pytest
import torch

from mechest.cli import main
from mechest.mlp import MLP

GOLDEN_DIR = Path(__file__).parent / "data" / "reference-goldens"
GOLDEN_NAMES = sorted(path.stem for path in GOLDEN_DIR.glob("*.npz"))


def golden_network(data: Mapping[str, np.ndarray]) -> MLP:
    """The network stored in a golden file."""
    layers = int(data["num_linear_layers"])
    weights = [torch.from_numpy(data[f"weight_{layer}"]) for layer in range(layers)]
    biases = [torch.from_numpy(data[f"bias_{layer}"]) if f"bias_{layer}" in data else None for layer in range(layers)]
    return MLP(weights, biases, [str(a) for a in data["activation"]])


@pytest.fixture(scope="session")
def goldens() -> dict[str, dict[str, np.ndarray]]:
    """Every golden file, loaded once: name -> arrays."""
    loaded = {}
    for name in GOLDEN_NAMES:
        with np.load(GOLDEN_DIR / f"{name}.npz") as data:
            loaded[name] = {key: data[key] for key in data.files}
    return loaded


def run(capsys, *argv: str) -> tuple[int, str, str]:
    """``mechest ARGV`` in this process: (exit code, stdout, stderr)."""
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_numpy_matches_torch(layers, spec: dict, **keywords) -> None:
    """``planned`` on the numpy namespace (scipy's ndtr) equals its run on torch: mean and covariance to 1e-10.
    ``layers`` holds torch tensors (``mechest.kprop.backends.layers_of``); ``keywords`` (``core``, ``options``) go to
    ``planned``."""
    from scipy.special import ndtr

    from mechest.kprop import executor as xprop
    from mechest.kprop.backends import torch_backend

    expected = xprop.planned(torch_backend(layers.weights[0].device), layers, spec, outputs="cov", **keywords)
    arrays = xprop.Layers([w.numpy() for w in layers.weights],
                          [None if b is None else b.numpy() for b in layers.biases], list(layers.activations))
    got = xprop.planned(xprop.Backend(np, ndtr), arrays, spec, outputs="cov", **keywords)
    np.testing.assert_allclose(got.mean, expected.mean.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(got.cov, expected.cov.numpy(), rtol=1e-10, atol=1e-12)


def odd_network(seed: int, activations: tuple[str, ...] = ("relu", "tanh", "relu")) -> MLP:
    """An odd shape for the executor's options: input 5, hidden 9, 7, 8, output 3, He-init weights, a bias on every
    layer (0.1·N(0, 1)); ReLU mixed with tanh by default (the numpy backend needs ReLU throughout)."""
    generator = torch.Generator().manual_seed(seed)
    dims = [5, 9, 7, 8, 3]
    weights = [torch.randn(d_out, d_in, generator=generator, dtype=torch.float64) * (2.0 / d_in) ** 0.5
               for d_in, d_out in zip(dims, dims[1:], strict=False)]
    biases = [0.1 * torch.randn(d_out, generator=generator, dtype=torch.float64) for d_out in dims[1:]]
    return MLP(weights, biases, list(activations))
