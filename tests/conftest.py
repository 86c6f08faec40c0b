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
