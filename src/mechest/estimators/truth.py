"""Ground truths (long Monte Carlo runs saved to disk) and scoring an estimate against one (docs/method.md §10.2).

A truth file (.npz) holds ``mean`` and ``variance`` (population, per output coordinate), ``samples``,
``seed``, ``chunk_size``, ``dtype``, ``device`` and the ``fingerprint`` of the network. While a run is in
progress its finished chunks are checkpointed to ``<out>.checkpoint.npz``; running the same command again
resumes there.

Scoring: with truth t̂ from N samples and an estimate e, E[(e_i - t̂_i)²] = (e_i - t_i)² + Var_i / N, so

    MSE = mean_i (e_i - t̂_i)²,  noise floor = mean_i Var_i / N,  MSE/Var = (MSE - floor) / mean_i Var_i.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mechest.device import resolve_device
from mechest.errors import MechestError
from mechest.estimators.montecarlo import (
    ChunkRunner,
    OrderedMerge,
    RunningMoments,
    check_chunk_finite,
    check_chunk_size,
    check_sample_count,
    chunk_count,
    chunk_size_of,
    run_chunks_locally,
    sample_progress,
)
from mechest.files import check_output_path, output_lock, write_npz_atomically
from mechest.limits import check_sample_time, require_finite
from mechest.mlp import MLP, read_npz

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


def write_checkpoint(path: Path, run: dict[str, str], merge: OrderedMerge) -> None:
    """Save the merged chunks and the chunks that finished out of order (atomically)."""
    chunks = sorted(merge.pending)
    dim = merge.done.mean.numel()
    arrays = {key: np.array(value) for key, value in run.items()}
    arrays.update(
        count=np.array(merge.done.count), mean=merge.done.mean.cpu().numpy(), m2=merge.done.m2.cpu().numpy(),
        next_chunk=np.array(merge.next_chunk), pending_chunks=np.array(chunks, dtype=np.int64),
        pending_counts=np.array([merge.pending[c].count for c in chunks], dtype=np.int64),
        pending_means=np.array([merge.pending[c].mean.cpu().numpy() for c in chunks]).reshape(-1, dim),
        pending_m2s=np.array([merge.pending[c].m2.cpu().numpy() for c in chunks]).reshape(-1, dim),
    )
    write_npz_atomically(path, arrays)


def read_checkpoint(path: Path, run: dict[str, str], device: torch.device) -> OrderedMerge | None:
    """The chunks saved by an interrupted run with the same ``run`` description, if any (else None).

    An unreadable or foreign checkpoint is ignored: the run then starts from the beginning.
    """
    if not path.is_file():
        return None
    try:
        data = read_npz(path)
        if any(str(data[key]) != value for key, value in run.items()):
            return None

        def moments(count: np.ndarray, mean: np.ndarray, m2: np.ndarray) -> RunningMoments:
            return RunningMoments(int(count), torch.from_numpy(mean).to(device), torch.from_numpy(m2).to(device))

        pending = {int(chunk): moments(*row) for chunk, *row in zip(
            data["pending_chunks"], data["pending_counts"], data["pending_means"], data["pending_m2s"], strict=True)}
        return OrderedMerge(moments(data["count"], data["mean"], data["m2"]), int(data["next_chunk"]), pending)
    except (MechestError, KeyError, TypeError, ValueError):
        return None


def fits_run(merge: OrderedMerge, samples: int, chunk_size: int) -> OrderedMerge:
    """The chunks of ``merge`` that a run of ``samples`` can reuse.

    A checkpoint of the same seed and chunk size but another sample count shares every chunk except a
    partial last one: pending chunks of the wrong size are dropped, and the merged prefix if it holds one.
    """
    total = chunk_count(samples, chunk_size)
    pending = {chunk: moments for chunk, moments in merge.pending.items()
               if chunk < total and moments.count == chunk_size_of(chunk, samples, chunk_size)}
    if merge.next_chunk <= total and merge.done.count == min(merge.next_chunk * chunk_size, samples):
        return OrderedMerge(merge.done, merge.next_chunk, pending)
    empty = RunningMoments.empty(merge.done.mean.numel(), merge.done.mean.device)
    return OrderedMerge(empty, 0, pending)


def compute_truth(
    net: MLP,
    samples: int,
    out: str | Path,
    *,
    seed: int = 0,
    chunk_size: int | None = None,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
    runner: ChunkRunner = run_chunks_locally,
    progress: bool = False,
) -> Truth:
    """Run (or resume) a streaming Monte Carlo of ``samples`` inputs and write the truth file ``out``.

    The forward pass runs in ``dtype`` (float32 is about 3x faster on CPU; its rounding changes each output
    by ~1e-6 relative, far below any error we measure) on ``device`` (None: where ``net`` is); moments are
    always accumulated in float64. ``runner`` computes the chunks: in this process by default, or on a
    Dask cluster (``mechest.integrations.dask``). Chunks are merged in chunk order as they arrive, so the result
    is the same bit for bit for any runner. Finished chunks are checkpointed every CHECKPOINT_SECONDS and
    when the run is interrupted; running the same call again resumes from the checkpoint. While it runs,
    ``<out>.lock`` keeps a second run on the same ``out`` away (a one-line MechestError).
    """
    samples = check_sample_time(check_sample_count(samples), net.flops_per_sample())
    out = check_output_path(out)
    with output_lock(out):
        return run_truth(net, samples, out, seed, chunk_size, dtype, device, runner, progress)


def run_truth(net: MLP, samples: int, out: Path, seed: int, chunk_size: int | None, dtype: torch.dtype,
              device: torch.device | str | None, runner: ChunkRunner, progress: bool) -> Truth:
    """``compute_truth`` once ``out`` is checked and locked."""
    fingerprint = net.fingerprint()
    net = net.to(dtype=dtype, device=resolve_device(device, net.device))
    chunk_size = check_chunk_size(chunk_size, net)
    run = {"fingerprint": fingerprint, "seed": str(seed), "chunk_size": str(chunk_size), "dtype": str(dtype),
           "device": net.device.type}
    checkpoint = checkpoint_path(out)
    saved = read_checkpoint(checkpoint, run, net.device)
    fresh = OrderedMerge(RunningMoments.empty(net.output_dim, net.device), 0)
    merge = fresh if saved is None else fits_run(saved, samples, chunk_size)
    total = chunk_count(samples, chunk_size)
    last_save, unsaved = time.monotonic(), False
    try:
        if progress and merge.count:
            print(f"resuming from {merge.count} of {samples} samples in {checkpoint}", file=sys.stderr, flush=True)
        with sample_progress(samples, merge.count, progress) as bar:
            for chunk, moments in runner(net, seed, samples, chunk_size, merge.missing(total)):
                moments = moments.to(net.device)
                check_chunk_finite(net, seed, chunk, moments)
                merge.add(chunk, moments)
                bar.update(moments.count)
                unsaved = True
                if time.monotonic() - last_save >= CHECKPOINT_SECONDS:
                    write_checkpoint(checkpoint, run, merge)
                    last_save, unsaved = time.monotonic(), False
    except BaseException:
        if unsaved:  # interrupted (Ctrl-C, a failed worker): keep every chunk that finished
            write_checkpoint(checkpoint, run, merge)
        raise
    if merge.next_chunk != total:
        raise RuntimeError(f"the chunk runner returned {merge.next_chunk} of {total} chunks in order")
    require_finite("mc", torch.cat([merge.done.mean, merge.done.m2]),
                   [("mean", "the output", merge.done.mean), ("variance", "the output", merge.done.m2)])
    truth = Truth(merge.done.mean.cpu().numpy(), merge.done.variance.cpu().numpy(), samples, seed, fingerprint)
    write_npz_atomically(out, {
        "mean": truth.mean, "variance": truth.variance, "samples": np.array(samples), "seed": np.array(seed),
        "chunk_size": np.array(chunk_size), "fingerprint": np.array(fingerprint), "dtype": np.array(str(dtype)),
        "device": np.array(net.device.type),
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
        truth = Truth(data["mean"], data["variance"], int(data["samples"]), int(data["seed"]),
                      str(data["fingerprint"]))
    except (KeyError, TypeError, ValueError) as error:
        raise MechestError(f"cannot read {path}: not a mechest truth file ({error})") from None
    for name in ("mean", "variance"):
        if not np.issubdtype(getattr(truth, name).dtype, np.number) or not np.isfinite(getattr(truth, name)).all():
            raise MechestError(f"{path}: its {name} is not numeric and finite")
    return truth


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
        """The JSON-ready summary; ``mse_over_var`` is None (JSON null, not NaN) when the output does not vary."""
        return {"mse": self.mse, "variance": self.variance, "noise_floor": self.noise_floor,
                "mse_minus_floor": self.mse_minus_floor,
                "mse_over_var": self.relative if self.variance > 0 else None}


def score(estimate_mean: torch.Tensor | np.ndarray, truth: Truth) -> Score:
    """MSE of ``estimate_mean`` against ``truth``, with the truth's own sampling noise accounted for."""
    estimate_mean = np.asarray(torch.as_tensor(estimate_mean).detach().cpu(), dtype=np.float64)
    if estimate_mean.shape != truth.mean.shape:
        raise MechestError(f"estimate has shape {estimate_mean.shape} but the truth has {truth.mean.shape}")
    with np.errstate(over="ignore"):
        mse = float(np.mean((estimate_mean - truth.mean) ** 2))
    if not np.isfinite(mse):
        raise MechestError("score: the mean squared error is not finite (overflow?)")
    variance = float(np.mean(truth.variance))
    return Score(mse, variance, variance / truth.samples)
