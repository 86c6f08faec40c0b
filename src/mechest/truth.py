"""Ground truths (long Monte Carlo runs saved to disk) and scoring an estimate against one (design §9).

A truth file (.npz) holds ``mean`` and ``variance`` (population, per output coordinate), ``samples``,
``seed``, ``chunk_size`` and the ``fingerprint`` of the network. While a run is in progress its
moments are checkpointed to ``<out>.checkpoint.npz``; running the same command again resumes there.

Scoring: with truth t̂ from N samples and an estimate e, E[(e_i - t̂_i)²] = (e_i - t_i)² + Var_i / N, so

    MSE = mean_i (e_i - t̂_i)²,  noise floor = mean_i Var_i / N,  MSE/Var = (MSE - floor) / mean_i Var_i.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mechest.errors import MechestError
from mechest.mlp import MLP, read_npz, write_npz_atomically
from mechest.montecarlo import DEFAULT_CHUNK_SIZE, RunningMoments, check_sample_count, sample_moments

CHECKPOINT_SECONDS = 30.0


@dataclass(frozen=True)
class Truth:
    """A Monte Carlo ground truth: mean and population variance per output coordinate."""

    mean: np.ndarray
    variance: np.ndarray
    samples: int
    seed: int
    fingerprint: str


def checkpoint_path(out: Path) -> Path:
    return out.with_name(out.name + ".checkpoint.npz")


def read_checkpoint(path: Path, run: dict[str, str], device: torch.device) -> RunningMoments | None:
    """The moments saved by an interrupted run with the same ``run`` description, if any (else None).

    An unreadable or foreign checkpoint is ignored: the run then starts from the beginning.
    """
    if not path.is_file():
        return None
    try:
        data = read_npz(path)
        if any(str(data[key]) != value for key, value in run.items()):
            return None
        mean, m2 = (torch.from_numpy(data[key]).to(device) for key in ("mean", "m2"))
        return RunningMoments(int(data["count"]), mean, m2)
    except (MechestError, KeyError, TypeError, ValueError):
        return None


def compute_truth(
    net: MLP,
    samples: int,
    out: str | Path,
    *,
    seed: int = 0,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    dtype: torch.dtype = torch.float64,
    progress: bool = False,
) -> Truth:
    """Run (or resume) a streaming Monte Carlo of ``samples`` inputs and write the truth file ``out``.

    The forward pass runs in ``dtype`` (float32 is about 3x faster on CPU; its rounding changes each output
    by ~1e-6 relative, far below any error we measure); moments are always accumulated in float64.
    """
    samples = check_sample_count(samples)
    out = Path(out)
    if not out.parent.is_dir():
        raise MechestError(f"cannot write {out}: directory {out.parent} does not exist")
    if out.is_dir():
        raise MechestError(f"cannot write {out}: it is a directory")
    fingerprint = net.fingerprint()
    checkpoint = checkpoint_path(out)
    run = {"fingerprint": fingerprint, "seed": str(seed), "chunk_size": str(chunk_size), "dtype": str(dtype)}
    start = read_checkpoint(checkpoint, run, net.device)
    if start is not None and start.count > samples:
        start = None
    last_save = time.monotonic()

    def save_checkpoint(chunk: int, moments: RunningMoments) -> None:
        """Every CHECKPOINT_SECONDS, after a full chunk, save the moments so far (resumable)."""
        nonlocal last_save
        if moments.count % chunk_size == 0 and time.monotonic() - last_save >= CHECKPOINT_SECONDS:
            arrays = {key: np.array(value) for key, value in run.items()}
            arrays.update(count=np.array(moments.count), mean=moments.mean.cpu().numpy(),
                          m2=moments.m2.cpu().numpy())
            write_npz_atomically(checkpoint, arrays)
            last_save = time.monotonic()

    moments = sample_moments(net.to(dtype=dtype), samples, seed, chunk_size=chunk_size, start=start,
                             on_chunk=save_checkpoint, progress=progress)
    truth = Truth(moments.mean.cpu().numpy(), moments.variance.cpu().numpy(), samples, seed, fingerprint)
    write_npz_atomically(out, {
        "mean": truth.mean, "variance": truth.variance, "samples": np.array(samples), "seed": np.array(seed),
        "chunk_size": np.array(chunk_size), "fingerprint": np.array(fingerprint),
    })
    checkpoint.unlink(missing_ok=True)
    return truth


def load_truth(path: str | Path) -> Truth:
    """Read a truth file written by ``compute_truth``."""
    path = Path(path)
    if not path.is_file():
        raise MechestError(f"cannot read {path}: no such file")
    data = read_npz(path)
    try:
        return Truth(data["mean"], data["variance"], int(data["samples"]), int(data["seed"]),
                     str(data["fingerprint"]))
    except (KeyError, TypeError, ValueError) as error:
        raise MechestError(f"cannot read {path}: not a mechest truth file ({error})") from None


@dataclass(frozen=True)
class Score:
    """Error of an estimate against a truth; ``relative`` = (mse - noise_floor) / variance."""

    mse: float
    variance: float
    noise_floor: float

    @property
    def mse_minus_floor(self) -> float:
        return self.mse - self.noise_floor

    @property
    def relative(self) -> float:
        """(MSE - floor) / Var; NaN when the output does not vary (nothing to normalise by)."""
        return self.mse_minus_floor / self.variance if self.variance > 0 else float("nan")

    def to_dict(self) -> dict:
        return {"mse": self.mse, "variance": self.variance, "noise_floor": self.noise_floor,
                "mse_minus_floor": self.mse_minus_floor, "mse_over_var": self.relative}


def score(estimate_mean: torch.Tensor | np.ndarray, truth: Truth) -> Score:
    """MSE of ``estimate_mean`` against ``truth``, with the truth's own sampling noise accounted for."""
    estimate_mean = np.asarray(torch.as_tensor(estimate_mean).detach().cpu(), dtype=np.float64)
    if estimate_mean.shape != truth.mean.shape:
        raise MechestError(f"estimate has shape {estimate_mean.shape} but the truth has {truth.mean.shape}")
    mse = float(np.mean((estimate_mean - truth.mean) ** 2))
    variance = float(np.mean(truth.variance))
    return Score(mse, variance, variance / truth.samples)
