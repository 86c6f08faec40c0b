"""Monte Carlo estimation of E[M(x)], x ~ N(0, I): the sampling baseline and the ground truth.

Samples are drawn in fixed-size chunks; chunk c uses its own generator seeded from (seed, c), so the
result does not depend on how chunks are scheduled, and a run can stop after any chunk and resume.
Per-chunk means and centred sums of squares are merged exactly in float64 (Chan et al.'s update):

    n = n_a + n_b,  δ = m_b - m_a,  m = m_a + δ n_b / n,  M2 = M2_a + M2_b + δ² n_a n_b / n.

Chunks are always merged in chunk order (``OrderedMerge``), and a chunk's moments do not depend on torch's
thread count (``column_sum``), so for a given seed, chunk size, dtype and device the result is the same bit
for bit whether the chunks run in one process or on many workers, in whatever order they finish.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from mechest.device import resolve_device, total_memory
from mechest.errors import MechestError
from mechest.limits import Quantity, check_sample_time, forward_quantities, require_finite
from mechest.mlp import MLP, check_seed
from mechest.progress import LogProgress, progress_bar

DEFAULT_CHUNK_SIZE = 1 << 16
SUM_BLOCK = 1024  # rows summed together; below torch's parallel grain size (32768), so one thread sums each block
CUDA_MEMORY_FRACTION = 1 / 8  # share of a GPU's memory one chunk's activations may take
MAX_CHUNK_SIZE = 1 << 24


def column_sum(values: torch.Tensor) -> torch.Tensor:
    """Σ_rows values for a (rows, dim) tensor, rounded the same way whatever torch's thread count.

    torch splits a reduction to a single number across threads, so its rounding changes with the thread
    count; summing fixed blocks of SUM_BLOCK rows (each reduction then has many outputs or few inputs, and
    torch keeps each output on one thread) and then the block sums, recursively, does not.
    """
    rows = values.shape[0]
    if rows <= SUM_BLOCK:
        return values.sum(dim=0)
    whole = rows - rows % SUM_BLOCK
    block_sums = values[:whole].reshape(-1, SUM_BLOCK, values.shape[1]).sum(dim=1)
    return column_sum(block_sums) + values[whole:].sum(dim=0)


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
        mean = column_sum(values) / values.shape[0]
        return RunningMoments(values.shape[0], mean, column_sum((values - mean) ** 2))

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

    def to(self, device: torch.device | str) -> RunningMoments:
        return RunningMoments(self.count, self.mean.to(device), self.m2.to(device))


class OrderedMerge:
    """Merges chunk moments in chunk order, whatever order they arrive in (so the rounding is always the same).

    ``done`` holds the merge of chunks 0 .. next_chunk - 1; chunks that arrive early wait in ``pending``.
    """

    def __init__(self, done: RunningMoments, next_chunk: int, pending: dict[int, RunningMoments] | None = None):
        self.done = done
        self.next_chunk = next_chunk
        self.pending = dict(pending or {})

    def add(self, chunk: int, moments: RunningMoments) -> None:
        """Record chunk ``chunk``'s moments and merge every chunk that is now next in order."""
        if chunk >= self.next_chunk:
            self.pending[chunk] = moments
        while self.next_chunk in self.pending:
            self.done = self.done.merge(self.pending.pop(self.next_chunk))
            self.next_chunk += 1

    def missing(self, total: int) -> Iterator[int]:
        """Chunks below ``total`` that are neither merged nor pending now, lazily (there may be billions)."""
        have = set(self.pending)  # a snapshot: chunks added while the caller iterates were yielded before
        return (chunk for chunk in range(self.next_chunk, total) if chunk not in have)

    @property
    def count(self) -> int:
        """Samples recorded so far, merged or pending."""
        return self.done.count + sum(moments.count for moments in self.pending.values())


def chunk_generator(seed: int, chunk: int, device: torch.device | str = "cpu") -> torch.Generator:
    """The generator of chunk ``chunk`` under ``seed``: independent streams, one per (seed, chunk)."""
    check_seed(seed)
    state = np.random.SeedSequence([seed, chunk]).generate_state(2, dtype=np.uint32)
    return torch.Generator(device=device).manual_seed(int(state[0]) << 32 | int(state[1]))


def chunk_inputs(net: MLP, seed: int, chunk: int, size: int) -> torch.Tensor:
    """The ``size`` Gaussian inputs of chunk ``chunk`` under ``seed``, in ``net``'s dtype and on its device."""
    generator = chunk_generator(seed, chunk, net.device)
    return torch.randn(size, net.input_dim, generator=generator, dtype=net.dtype, device=net.device)


def chunk_moments(net: MLP, seed: int, chunk: int, size: int) -> RunningMoments:
    """Moments of the network output over the ``size`` inputs of chunk ``chunk``."""
    with torch.no_grad():
        return RunningMoments.of_batch(net(chunk_inputs(net, seed, chunk, size)))


def check_chunk_finite(net: MLP, seed: int, chunk: int, moments: RunningMoments) -> None:
    """A chunk's mean and M2 must be finite; else a MechestError naming the first layer of the chunk's forward
    pass whose values (or squares, which make the variance) overflowed."""
    def quantities() -> Iterator[Quantity]:
        with torch.no_grad():
            layers = net.forward_layers(chunk_inputs(net, seed, chunk, moments.count))
        yield from forward_quantities(layers)
        yield "variance", "the output", moments.m2

    require_finite("mc", torch.cat([moments.mean, moments.m2]), quantities())


def default_chunk_size(net: MLP) -> int:
    """DEFAULT_CHUNK_SIZE on the CPU; on CUDA the largest power of two whose activations fit in
    CUDA_MEMORY_FRACTION of the GPU's total memory (a fixed number per GPU model, so runs stay reproducible).
    """
    memory = total_memory(net.device)
    if memory is None:
        return DEFAULT_CHUNK_SIZE
    # a forward pass keeps every layer's output, plus two temporaries of the widest layer, plus the
    # float64 output and its squared deviations
    bytes_per_sample = net.dtype.itemsize * (sum(net.dims) + 2 * max(net.dims)) + 16 * net.output_dim
    fitting = max(int(memory * CUDA_MEMORY_FRACTION) // bytes_per_sample, 1)
    return min(1 << (fitting.bit_length() - 1), MAX_CHUNK_SIZE)


def check_chunk_size(chunk_size: int | None, net: MLP) -> int:
    """``chunk_size``, or the device's default when None; a MechestError unless it is positive."""
    if chunk_size is None:
        return default_chunk_size(net)
    if chunk_size < 1:
        raise MechestError(f"chunk_size must be positive, got {chunk_size}")
    return chunk_size


ChunkRunner = Callable[[MLP, int, int, int, Iterable[int]], Iterator[tuple[int, RunningMoments]]]
"""runner(net, seed, samples, chunk_size, chunks) yields (chunk, moments) for each of ``chunks``, in any order."""


def run_chunks_locally(
    net: MLP, seed: int, samples: int, chunk_size: int, chunks: Iterable[int]
) -> Iterator[tuple[int, RunningMoments]]:
    """The ChunkRunner of one process: each chunk's moments, computed here, in the order given."""
    for chunk in chunks:
        yield chunk, chunk_moments(net, seed, chunk, chunk_size_of(chunk, samples, chunk_size))


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


def sample_progress(samples: int, done: int, shown: bool) -> tqdm | LogProgress:
    """``mechest.progress.progress_bar`` counting Monte Carlo samples (silent unless ``shown``)."""
    return progress_bar(samples, initial=done, unit="sample", desc="Monte Carlo", shown=shown)


def sample_moments(
    net: MLP,
    samples: int,
    seed: int = 0,
    *,
    chunk_size: int | None = None,
    device: torch.device | str | None = None,
    start: RunningMoments | None = None,
    on_chunk: Callable[[int, RunningMoments], None] | None = None,
    progress: bool = False,
) -> RunningMoments:
    """Streaming moments of the output over ``samples`` Gaussian inputs, in bounded memory.

    Runs on ``device`` ("cpu", "cuda", "auto"; None: where ``net`` is), in chunks of ``chunk_size`` samples
    (None: ``default_chunk_size``, sized to the device's memory on CUDA).
    ``start`` resumes from the moments of the first ``start.count`` samples (a whole number of chunks);
    ``on_chunk(chunk_index, moments)`` is called after each chunk (for checkpoints).
    """
    samples = check_sample_time(check_sample_count(samples), net.flops_per_sample())
    net = net.to(device=resolve_device(device, net.device))
    chunk_size = check_chunk_size(chunk_size, net)
    moments = start.to(net.device) if start is not None else RunningMoments.empty(net.output_dim, net.device)
    if moments.count % chunk_size and moments.count < samples:
        raise MechestError("can only resume from a whole number of chunks")
    chunks = range(moments.count // chunk_size, chunk_count(samples, chunk_size))
    with sample_progress(samples, moments.count, progress) as bar:
        for chunk, moments_of_chunk in run_chunks_locally(net, seed, samples, chunk_size, chunks):
            check_chunk_finite(net, seed, chunk, moments_of_chunk)
            moments = moments.merge(moments_of_chunk)
            bar.update(moments_of_chunk.count)
            if on_chunk is not None:
                on_chunk(chunk, moments)
    return moments
