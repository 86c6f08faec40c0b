"""Long Monte Carlo truths for `mechest whestbench score --truths`, on a CUDA GPU (the command that made
benchmarks/data/whestbench/truth_*.npz on an H100, ≈ 4 minutes for all three).

Weights are regenerated from the per-MLP seeds exactly as `whest dataset bake` does (SeedSequence(seed).spawn(3)[0]
→ default_rng → standard_normal · sqrt(2/n), float32); `mechest whestbench score` checks them against the
dataset's by their sum. Forward passes in float32 (TF32 off), sums in float64.

    python benchmarks/whest_gpu_truths.py OUT_DIR
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np
import torch

FIRST_SEED = 20261125  # mechest.integrations.whestbench.score.FIRST_SEED
JOBS = [("warmup", 256, 8, 3, 4 * 10**8), ("phase1", 256, 32, 2, 10**8), ("phase2", 1024, 16, 2, 6 * 10**7)]


def whest_weights(seed: int, n: int, depth: int) -> list[np.ndarray]:
    rng = np.random.default_rng(np.random.SeedSequence(seed).spawn(3)[0])
    return [(rng.standard_normal((n, n)) * float(np.sqrt(2.0 / n))).astype(np.float32) for _ in range(depth)]


def truth(weights: list[np.ndarray], samples: int, seed: int, device: str) -> tuple[np.ndarray, float]:
    """Per-layer means (depth × n) and the final layer's mean per-neuron variance."""
    ws = [torch.tensor(w, device=device) for w in weights]
    n, depth = ws[0].shape[0], len(ws)
    generator = torch.Generator(device=device).manual_seed(seed)
    sums = torch.zeros(depth, n, dtype=torch.float64, device=device)
    squares = torch.zeros(n, dtype=torch.float64, device=device)
    batch, done = (2**16 if n <= 256 else 2**15), 0
    while done < samples:
        b = min(batch, samples - done)
        h = torch.randn(b, n, generator=generator, device=device)
        for layer, w in enumerate(ws):
            h = torch.relu(h @ w)
            sums[layer] += h.sum(0, dtype=torch.float64)
        squares += (h.double() ** 2).sum(0)
        done += b
    mean = sums / samples
    return mean.cpu().numpy(), (squares / samples - mean[-1] ** 2).mean().item()


def main(out: str) -> None:
    torch.backends.cuda.matmul.allow_tf32 = False
    for name, n, depth, n_mlps, samples in JOBS:
        arrays: dict = {"samples": samples}
        for i in range(n_mlps):
            start = time.time()
            weights = whest_weights(FIRST_SEED + i, n, depth)
            arrays[f"means{i}"], arrays[f"var{i}"] = truth(weights, samples, 1000 + i, "cuda")
            arrays[f"wsum{i}"] = float(sum(w.astype(np.float64).sum() for w in weights))
            print(name, i, samples, f"{time.time() - start:.1f} s", flush=True)
        np.savez(os.path.join(out, f"truth_{name}.npz"), **arrays)


if __name__ == "__main__":
    main(sys.argv[1])
