"""Monte Carlo estimation of E[M(x)], x ~ N(0, I): the sampling baseline and the ground truth.

Samples are drawn in fixed-size chunks; chunk c uses its own generator seeded from (seed, c), so the
result does not depend on how chunks are scheduled, and a run can stop after any chunk and resume.
Per-chunk means and centred sums of squares are merged exactly in float64 (Chan et al.'s update):

    n = n_a + n_b,  δ = m_b - m_a,  m = m_a + δ n_b / n,  M2 = M2_a + M2_b + δ² n_a n_b / n.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from mechest.errors import MechestError
from mechest.mlp import MLP, check_seed

DEFAULT_CHUNK_SIZE = 1 << 16


@dataclass(frozen=True)
class RunningMoments:
    """Sample count, mean and centred sum of squares (M2) per output coordinate, in float64."""

    count: int
    mean: torch.Tensor
    m2: torch.Tensor

    @staticmethod
    def empty(dim: int, device: torch.device | str = "cpu") -> RunningMoments:
        zeros = torch.zeros(dim, dtype=torch.float64, device=device)
        return RunningMoments(0, zeros, zeros.clone())

    @staticmethod
    def of_batch(values: torch.Tensor) -> RunningMoments:
        """Moments of a (batch, dim) block of samples."""
        values = values.to(torch.float64)
        mean = values.mean(dim=0)
        return RunningMoments(values.shape[0], mean, ((values - mean) ** 2).sum(dim=0))

    def merge(self, other: RunningMoments) -> RunningMoments:
        """Exact combination of two disjoint sets of samples (Chan's parallel update)."""
        if self.count == 0:
            return other
        count = self.count + other.count
        delta = other.mean - self.mean
        mean = self.mean + delta * (other.count / count)
        m2 = self.m2 + other.m2 + delta**2 * (self.count * other.count / count)
        return RunningMoments(count, mean, m2)

    @property
    def variance(self) -> torch.Tensor:
        """Population variance M2 / N."""
        return self.m2 / max(self.count, 1)


def chunk_generator(seed: int, chunk: int, device: torch.device | str = "cpu") -> torch.Generator:
    """The generator of chunk ``chunk`` under ``seed``: independent streams, one per (seed, chunk)."""
    check_seed(seed)
    state = np.random.SeedSequence([seed, chunk]).generate_state(2, dtype=np.uint32)
    return torch.Generator(device=device).manual_seed(int(state[0]) << 32 | int(state[1]))


def chunk_moments(net: MLP, seed: int, chunk: int, size: int) -> RunningMoments:
    """Moments of the network output over the ``size`` inputs of chunk ``chunk``."""
    generator = chunk_generator(seed, chunk, net.device)
    x = torch.randn(size, net.input_dim, generator=generator, dtype=net.dtype, device=net.device)
    with torch.no_grad():
        return RunningMoments.of_batch(net(x))


def chunk_count(samples: int, chunk_size: int) -> int:
    """Number of chunks: full chunks of ``chunk_size`` and one final partial chunk."""
    return -(-samples // chunk_size)


def chunk_size_of(chunk: int, samples: int, chunk_size: int) -> int:
    """Size of chunk number ``chunk`` when ``samples`` are split into chunks of ``chunk_size``."""
    return min(chunk_size, samples - chunk * chunk_size)


def check_sample_count(samples: int) -> int:
    """Return ``samples`` as an int, or raise a one-line MechestError unless it is a positive whole number."""
    if isinstance(samples, float):
        if not samples.is_integer():
            raise MechestError(f"the sample count must be a whole number, got {samples}")
        samples = int(samples)
    if samples < 1:
        raise MechestError(f"the sample count must be positive, got {samples}")
    return samples


def sample_moments(
    net: MLP,
    samples: int,
    seed: int = 0,
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    start: RunningMoments | None = None,
    on_chunk: Callable[[int, RunningMoments], None] | None = None,
    progress: bool = False,
) -> RunningMoments:
    """Streaming moments of the output over ``samples`` Gaussian inputs, in bounded memory.

    ``start`` resumes from the moments of the first ``start.count`` samples (a whole number of chunks);
    ``on_chunk(chunk_index, moments)`` is called after each chunk (for checkpoints).
    """
    samples = check_sample_count(samples)
    if chunk_size < 1:
        raise MechestError(f"chunk_size must be positive, got {chunk_size}")
    moments = start if start is not None else RunningMoments.empty(net.output_dim, net.device)
    if moments.count % chunk_size and moments.count < samples:
        raise MechestError("can only resume from a whole number of chunks")
    first = moments.count // chunk_size
    with tqdm(total=samples, initial=moments.count, disable=None if progress else True, unit="sample", unit_scale=True) as bar:
        for chunk in range(first, chunk_count(samples, chunk_size)):
            size = chunk_size_of(chunk, samples, chunk_size)
            moments = moments.merge(chunk_moments(net, seed, chunk, size))
            bar.update(size)
            if on_chunk is not None:
                on_chunk(chunk, moments)
    return moments
