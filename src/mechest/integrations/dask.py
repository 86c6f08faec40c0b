"""Ground truths on a Dask cluster: the chunks of a Monte Carlo run as dask.distributed tasks.

Each task computes one chunk's moments (``montecarlo.chunk_moments``: its own seed, float64 sums whose
rounding does not depend on thread counts); the client merges them in chunk order as they arrive and
checkpoints them (``truth.compute_truth``). So the truth is the same bit for bit for any number of workers,
and a worker lost mid-run costs only the chunks it was computing: Dask runs them again elsewhere.

    with cluster_client(workers=4) as client:          # or cluster_client(scheduler="tcp://host:8786")
        truth = compute_truth_distributed(net, 10**9, "truth.npz", client=client, seed=1)
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from distributed import Client, Future, LocalCluster, as_completed

from mechest.errors import MechestError
from mechest.estimators.montecarlo import ChunkRunner, RunningMoments, chunk_moments, chunk_size_of
from mechest.estimators.truth import Truth, compute_truth
from mechest.mlp import MLP

TASKS_PER_THREAD = 4  # chunks queued per worker thread: enough to keep workers busy, few to hold out of order
CONNECT_TIMEOUT = "10s"


def machine_workers(device: torch.device) -> int:
    """Workers of a LocalCluster sized to this machine: one per CPU core, or one to drive a GPU."""
    return 1 if device.type == "cuda" else os.cpu_count() or 1


@contextmanager
def cluster_client(scheduler: str | None = None, workers: int | None = None,
                   device: torch.device = torch.device("cpu")) -> Iterator[Client]:
    """A Dask client: of the scheduler at ``scheduler``, or of a LocalCluster of ``workers`` processes with
    one thread each (None: ``machine_workers``), closed on exit."""
    if scheduler is not None and workers is not None:
        raise MechestError("give a scheduler address or a number of workers, not both")
    if workers is not None and workers < 1:
        raise MechestError(f"the number of workers must be positive, got {workers}")
    if scheduler is not None:
        try:
            client = Client(scheduler, timeout=CONNECT_TIMEOUT)
        except (OSError, TimeoutError, ValueError) as error:
            raise MechestError(f"cannot reach the Dask scheduler at {scheduler}: {error}") from None
        with client:
            yield client
        return
    cluster = LocalCluster(n_workers=workers or machine_workers(device), threads_per_worker=1, processes=True,
                           dashboard_address=":0", silence_logs=logging.ERROR)
    with cluster, Client(cluster) as client:
        yield client


def chunk_moments_on_cpu(net: MLP, device: str, seed: int, chunk: int, size: int) -> RunningMoments:
    """One task: the chunk's moments computed on ``device`` of the worker, returned on the CPU (picklable)."""
    return chunk_moments(net.to(device=device), seed, chunk, size).to("cpu")


def network_task(net: MLP) -> MLP:
    """The task whose result is the network. Unlike scattered data it can be recomputed from its own
    description, so the network survives losing every worker that held a copy (Dask also drops copies)."""
    return net


def dask_runner(client: Client) -> ChunkRunner:
    """A ChunkRunner that computes chunks as tasks on ``client``'s cluster, yielding them as they finish.

    The network is sent to the cluster once, as a task; at most TASKS_PER_THREAD tasks per worker thread are
    queued at a time, so the client holds few out-of-order chunks however long the run.
    """

    def run(
        net: MLP, seed: int, samples: int, chunk_size: int, chunks: Iterable[int]
    ) -> Iterator[tuple[int, RunningMoments]]:
        device = str(net.device)
        shared = client.submit(network_task, net.to(device="cpu"), pure=False)
        todo = iter(chunks)
        chunk_of: dict[Future, int] = {}
        running = as_completed(with_results=True)

        def submit_next() -> None:
            chunk = next(todo, None)
            if chunk is not None:
                future = client.submit(chunk_moments_on_cpu, shared, device, seed, chunk,
                                       chunk_size_of(chunk, samples, chunk_size), pure=False)
                chunk_of[future] = chunk
                running.add(future)

        try:
            for _ in range(TASKS_PER_THREAD * max(sum(client.nthreads().values()), 1)):
                submit_next()
            for future, moments in running:
                yield chunk_of.pop(future), moments
                submit_next()
        finally:
            client.cancel(list(chunk_of) + [shared])

    return run


def compute_truth_distributed(net: MLP, samples: int, out: str | Path, *, client: Client, **options) -> Truth:
    """``truth.compute_truth`` with its chunks computed on ``client``'s Dask cluster (same options, same result)."""
    return compute_truth(net, samples, out, runner=dask_runner(client), **options)
