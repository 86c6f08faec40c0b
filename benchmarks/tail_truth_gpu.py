"""Ground-truth exceedance counts for `mechest tail-bench`, on a GPU (this is the script that made
benchmarks/data/tail_truth_seed{0,1}.npz: 250 s per network on one H100, 4.87·10⁹ samples each).

For ``random_mlp(256, 3, "relu", seed=s)`` it counts, per neuron, how many Gaussian inputs put the pre-activation
of layers 2 and 4 above each upper threshold (or below each lower one). Forward pass in float32 with TF32 off,
counts in int64; batch k of network s draws its inputs from a CUDA generator seeded 1000003·s + k. It stops
after ``--max-samples`` or ``--seconds`` per network, whichever comes first, and writes what it has.

    python benchmarks/tail_truth_gpu.py --out benchmarks/data --seconds 250
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from mechest.mlp import random_mlp

WIDTH, DEPTH = 256, 3
LAYERS = (2, 4)
UPPER = (2.0, 3.0, 3.5, 4.0, 4.5, 5.0)
LOWER = (-2.0, -3.0, -4.0)


def count(seed: int, device: str, batch: int, seconds: float, max_samples: int) -> dict:
    net = random_mlp(WIDTH, DEPTH, "relu", seed=seed)
    weights = [w.to(device=device, dtype=torch.float32) for w in net.weights]
    counts = torch.zeros(len(LAYERS), len(UPPER) + len(LOWER), WIDTH, dtype=torch.int64, device=device)
    samples, chunk, start = 0, 0, time.time()
    while samples < max_samples and time.time() - start < seconds:
        generator = torch.Generator(device=device).manual_seed(1000003 * seed + chunk)
        h = torch.randn(batch, WIDTH, device=device, generator=generator)
        for index, weight in enumerate(weights):
            h = h @ weight.T
            if index + 1 in LAYERS:
                row = LAYERS.index(index + 1)
                for column, t in enumerate(UPPER):
                    counts[row, column] += (h > t).sum(dim=0)
                for column, t in enumerate(LOWER):
                    counts[row, len(UPPER) + column] += (h < t).sum(dim=0)
            if index < DEPTH:
                h = torch.relu(h)
        samples += batch
        chunk += 1
        if device == "cuda":
            torch.cuda.synchronize()
    return dict(counts=counts.cpu().numpy(), samples=samples, layers=list(LAYERS), thresholds=list(UPPER + LOWER),
                upper=[1] * len(UPPER) + [0] * len(LOWER), fingerprint=net.fingerprint(), seed=seed,
                seconds=time.time() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/data"))
    parser.add_argument("--seconds", type=float, default=250.0, help="time budget per network")
    parser.add_argument("--max-samples", type=float, default=1e10)
    parser.add_argument("--batch", type=int, default=1 << 21)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = False
    for seed in args.seeds:
        result = count(seed, args.device, args.batch, args.seconds, int(args.max_samples))
        np.savez(args.out / f"tail_truth_seed{seed}.npz", **result)
        print(f"seed {seed}: {result['samples']} samples in {result['seconds']:.0f} s", flush=True)


if __name__ == "__main__":
    main()
