"""Ground truths on a real Dask LocalCluster: bit-identical to one process, robust to a lost worker, resumable."""

from __future__ import annotations

import os
import random
import sys
from pathlib import Path

import cloudpickle
import numpy as np
import pytest
import torch
from distributed.diagnostics.plugin import WorkerPlugin

import mechest.estimators.montecarlo
import mechest.estimators.truth
from mechest.cli import main
from mechest.estimators.montecarlo import OrderedMerge, RunningMoments, run_chunks_locally
from mechest.estimators.truth import checkpoint_path, compute_truth, load_truth, read_checkpoint
from mechest.integrations.dask import cluster_client, compute_truth_distributed, dask_runner
from mechest.mlp import random_mlp

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import this test module

SAMPLES, CHUNK = 24_000, 1000  # 24 chunks, the last one whole; a small net: each chunk takes milliseconds


@pytest.fixture(scope="module")
def client():
    """mechest's own LocalCluster of 2 single-threaded worker processes (each under a nanny that restarts it)."""
    with cluster_client(workers=2) as connected:
        yield connected


@pytest.fixture(scope="module")
def net():
    """One output coordinate: the case where torch's own reductions round differently with thread counts."""
    return random_mlp(16, 2, "relu", seed=5, output_dim=1)


@pytest.fixture(scope="module")
def reference(net, tmp_path_factory):
    """The single-process truth."""
    return compute_truth(net, SAMPLES, tmp_path_factory.mktemp("ref") / "t.npz", seed=1, chunk_size=CHUNK)


def assert_same_truth(truth, reference) -> None:
    np.testing.assert_array_equal(truth.mean, reference.mean)
    np.testing.assert_array_equal(truth.variance, reference.variance)
    assert truth.samples == reference.samples


def shuffled_runner(net, seed, samples, chunk_size, chunks):
    """Chunks computed locally but yielded in a scrambled order, like workers finishing out of order."""
    order = list(chunks)
    random.Random(0).shuffle(order)
    yield from run_chunks_locally(net, seed, samples, chunk_size, order)


def test_chunks_arriving_out_of_order_merge_to_the_same_bits(net, reference, tmp_path) -> None:
    assert_same_truth(compute_truth(net, SAMPLES, tmp_path / "t.npz", seed=1, chunk_size=CHUNK,
                                    runner=shuffled_runner), reference)


def test_chunk_moments_do_not_depend_on_the_thread_count(net) -> None:
    threads = torch.get_num_threads()
    try:
        moments = []
        for count in (1, 3):
            torch.set_num_threads(count)
            moments.append(mechest.estimators.montecarlo.chunk_moments(net, 1, 0, 40_000))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(moments[0].mean, moments[1].mean) and torch.equal(moments[0].m2, moments[1].m2)


def test_checkpoint_keeps_out_of_order_chunks(net, tmp_path) -> None:
    """A checkpoint written with chunks 0-1 merged and chunks 3, 5 pending reads back exactly."""
    run = {"seed": "1"}
    chunks = dict(run_chunks_locally(net, 1, SAMPLES, CHUNK, [0, 1, 3, 5]))
    merge = OrderedMerge(RunningMoments.empty(1), 0)
    for chunk, moments in chunks.items():
        merge.add(chunk, moments)
    mechest.estimators.truth.write_checkpoint(tmp_path / "c.npz", run, merge)
    back = read_checkpoint(tmp_path / "c.npz", run, torch.device("cpu"))
    assert back.next_chunk == 2 and sorted(back.pending) == [3, 5] and back.count == 4 * CHUNK
    assert torch.equal(back.done.mean, merge.done.mean) and torch.equal(back.pending[5].m2, chunks[5].m2)
    assert list(back.missing(7)) == [2, 4, 6]
    assert read_checkpoint(tmp_path / "c.npz", {"seed": "2"}, torch.device("cpu")) is None


def test_resuming_with_another_sample_count_drops_only_the_partial_chunk(net, tmp_path) -> None:
    """A checkpoint of a 5500-sample run with chunks 0-5 merged (chunk 5 a partial 500) and chunks 7, 8
    pending: a 9000-sample run cannot split the merged prefix, so it recomputes chunks 0-6, reuses 7 and 8,
    and equals a fresh 9000-sample run."""
    out = tmp_path / "t.npz"
    run = {"fingerprint": net.fingerprint(), "seed": "1", "chunk_size": str(CHUNK), "dtype": str(torch.float64),
           "device": "cpu"}
    merge = OrderedMerge(RunningMoments.empty(1), 0)
    for chunk, moments in run_chunks_locally(net, 1, 5500, CHUNK, range(6)):
        merge.add(chunk, moments)
    for chunk, moments in run_chunks_locally(net, 1, 9000, CHUNK, [7, 8]):
        merge.add(chunk, moments)
    mechest.estimators.truth.write_checkpoint(checkpoint_path(out), run, merge)
    computed = []

    def recording_runner(net, seed, samples, chunk_size, chunks):
        chunks = list(chunks)
        computed.extend(chunks)
        yield from run_chunks_locally(net, seed, samples, chunk_size, chunks)

    fresh = compute_truth(net, 9000, tmp_path / "fresh.npz", seed=1, chunk_size=CHUNK)
    assert_same_truth(compute_truth(net, 9000, out, seed=1, chunk_size=CHUNK, runner=recording_runner), fresh)
    assert computed == [0, 1, 2, 3, 4, 5, 6]


def test_distributed_truth_is_bit_identical_to_one_process(client, net, reference, tmp_path) -> None:
    truth = compute_truth_distributed(net, SAMPLES, tmp_path / "t.npz", client=client, seed=1, chunk_size=CHUNK)
    assert_same_truth(truth, reference)
    assert_same_truth(load_truth(tmp_path / "t.npz"), reference)
    assert not checkpoint_path(tmp_path / "t.npz").exists()


def test_interrupted_distributed_run_resumes_to_the_same_numbers(client, net, reference, tmp_path) -> None:
    """Stop after 7 chunks have arrived (in whatever order); the checkpoint holds them; a rerun finishes."""
    out = tmp_path / "t.npz"

    def interrupted(*args):
        for arrived, result in enumerate(dask_runner(client)(*args)):
            if arrived == 7:
                raise KeyboardInterrupt
            yield result

    with pytest.raises(KeyboardInterrupt):
        compute_truth(net, SAMPLES, out, seed=1, chunk_size=CHUNK, runner=interrupted)
    saved = read_checkpoint(checkpoint_path(out), {"seed": "1"}, torch.device("cpu"))
    assert not out.exists() and saved.count == 7 * CHUNK
    assert_same_truth(compute_truth_distributed(net, SAMPLES, out, client=client, seed=1, chunk_size=CHUNK), reference)


def test_cli_truth_on_a_cluster_writes_the_same_arrays(client, capsys, tmp_path) -> None:
    """In this process (--workers 0), on an existing cluster (--scheduler) and on the default embedded
    LocalCluster (no option): the same arrays."""
    weights, one, many, default = (str(tmp_path / name) for name in ("net.npz", "one.npz", "many.npz", "d.npz"))
    assert main(["net", "--width", "8", "--depth", "2", "--seed", "1", "--out", weights]) == 0
    common = ["truth", "--weights", weights, "--samples", "5e3", "--seed", "1", "--chunk-size", "512"]
    assert main(common + ["--out", one, "--workers", "0"]) == 0
    assert main(common + ["--out", many, "--scheduler", client.scheduler.address]) == 0
    assert main(common + ["--out", default]) == 0
    for other in (many, default):
        with np.load(one) as a, np.load(other) as b:
            assert a.files == b.files
            for key in a.files:
                np.testing.assert_array_equal(a[key], b[key])
    capsys.readouterr()


def test_interrupted_cli_truth_resumes_to_the_same_arrays(capsys, tmp_path, monkeypatch) -> None:
    weights, whole, part = (str(tmp_path / name) for name in ("net.npz", "whole.npz", "part.npz"))
    assert main(["net", "--width", "8", "--depth", "2", "--seed", "1", "--out", weights]) == 0
    common = ["truth", "--weights", weights, "--samples", "5e3", "--seed", "1", "--chunk-size", "512", "--workers", "0"]
    assert main(common + ["--out", whole]) == 0
    original = mechest.estimators.montecarlo.chunk_moments

    def interrupted_at_chunk_6(net, seed, chunk, size):
        if chunk == 6:
            raise KeyboardInterrupt
        return original(net, seed, chunk, size)

    monkeypatch.setattr(mechest.estimators.montecarlo, "chunk_moments", interrupted_at_chunk_6)
    assert main(common + ["--out", part]) == 130
    assert not Path(part).exists() and checkpoint_path(Path(part)).exists()
    computed = []

    def recorded(net, seed, chunk, size):
        computed.append(chunk)
        return original(net, seed, chunk, size)

    monkeypatch.setattr(mechest.estimators.montecarlo, "chunk_moments", recorded)
    assert main(common + ["--out", part]) == 0
    assert computed == list(range(6, 10)), "the rerun should compute only the chunks the checkpoint lacks"
    with np.load(whole) as a, np.load(part) as b:
        for key in a.files:
            np.testing.assert_array_equal(a[key], b[key])
    capsys.readouterr()


def test_cli_truth_rejects_bad_cluster_options(capsys, tmp_path) -> None:
    weights = str(tmp_path / "net.npz")
    assert main(["net", "--width", "4", "--depth", "1", "--out", weights]) == 0
    common = ["truth", "--weights", weights, "--samples", "100", "--out", str(tmp_path / "t.npz")]
    for extra in (["--workers", "-1"], ["--workers", "2", "--scheduler", "tcp://127.0.0.1:1"], ["--chunk-size", "-1"]):
        with pytest.raises(SystemExit) as exit_info:
            main(common + extra)
        assert exit_info.value.code == 2
    assert main(common[:-1] + [str(tmp_path / "missing" / "t.npz"), "--workers", "2"]) == 2
    assert "does not exist" in capsys.readouterr().err


class ExitAfterChunks(WorkerPlugin):
    """Kills the first worker to finish ``chunks`` tasks (once per cluster, marked by a file)."""

    name = "exit-after-chunks"

    def __init__(self, chunks: int, marker: str) -> None:
        self.chunks, self.marker, self.finished = chunks, marker, 0

    def transition(self, key, start, finish, **kwargs) -> None:
        if finish == "memory":
            self.finished += 1
            if self.finished == self.chunks and not os.path.exists(self.marker):
                Path(self.marker).touch()
                os._exit(1)


def test_a_worker_lost_mid_run_changes_nothing(client, net, reference, tmp_path) -> None:
    """Runs last in this module: the cluster's nanny restarts the killed worker."""
    marker = tmp_path / "killed"
    client.register_plugin(ExitAfterChunks(5, str(marker)))
    try:
        truth = compute_truth_distributed(net, SAMPLES, tmp_path / "t.npz", client=client, seed=1, chunk_size=CHUNK)
    finally:
        client.unregister_worker_plugin(ExitAfterChunks.name)
    assert marker.exists(), "no worker was killed"
    assert_same_truth(truth, reference)
