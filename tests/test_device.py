"""Devices: resolving cpu/cuda/auto, no tensor created off the network's device, and (with CUDA) GPU = CPU."""

from __future__ import annotations

import pytest
import torch

from mechest.cli import main
from mechest.device import resolve_device
from mechest.errors import MechestError
from mechest.estimators.estimate import estimate
from mechest.estimators.montecarlo import (
    CUDA_MEMORY_FRACTION,
    DEFAULT_CHUNK_SIZE,
    MAX_CHUNK_SIZE,
    default_chunk_size,
    sample_moments,
)
from mechest.estimators.truth import score
from mechest.kprop import Scheme, propagate
from mechest.mlp import random_mlp

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised without CUDA")
PROPAGATIONS = [(1, "simple", False), (2, "simple", False), (2, "augment", False), (3, "simple", False),
                (3, "augment", False), (4, "simple", False), (4, "augment", False), (3, "simple", True)]


def test_resolve_device() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(None, default="cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    for bad in ("tpu", "mps", "gpu0"):
        with pytest.raises(MechestError, match="unknown device"):
            resolve_device(bad)


@NO_CUDA
def test_cuda_without_cuda_is_a_one_line_error(capsys) -> None:
    with pytest.raises(MechestError, match="no CUDA device"):
        estimate(random_mlp(3, 1), device="cuda")
    assert main(["estimate", "--width", "3", "--depth", "1", "--device", "cuda"]) == 2
    assert capsys.readouterr().err.count("\n") == 1


@pytest.mark.parametrize("order, variant, factored", PROPAGATIONS)
def test_propagation_creates_no_tensor_off_the_networks_device(order, variant, factored) -> None:
    """With torch's default device set to 'meta', any tensor made without device= lands on 'meta' and mixing it
    with the network's CPU tensors raises: so passing shows every tensor follows the network's device."""
    net = random_mlp(5, 2, "relu", seed=0)
    reference = propagate(net, Scheme(order, variant, factored)).mean
    with torch.device("meta"):
        mean = propagate(net, Scheme(order, variant, factored)).mean
    assert mean.device.type == "cpu" and torch.equal(mean, reference)


def test_monte_carlo_creates_no_tensor_off_the_networks_device() -> None:
    net = random_mlp(5, 2, "tanh", seed=0)
    reference = sample_moments(net, 3000, seed=2, chunk_size=1024)
    with torch.device("meta"):
        moments = sample_moments(net, 3000, seed=2, chunk_size=1024)
    assert moments.mean.device.type == "cpu" and torch.equal(moments.mean, reference.mean)


def test_cpu_device_option_changes_nothing() -> None:
    net = random_mlp(6, 2, "relu", seed=1)
    assert torch.equal(estimate(net, order=3, device="cpu").mean, estimate(net, order=3).mean)
    assert torch.equal(estimate(net, "mc", samples=500, device="cpu").mean, estimate(net, "mc", samples=500).mean)
    assert default_chunk_size(net) == DEFAULT_CHUNK_SIZE


@CUDA
@pytest.mark.parametrize("order, variant, factored", PROPAGATIONS)
def test_kprop_on_cuda_equals_cpu(order, variant, factored) -> None:
    net = random_mlp(12, 3, "gelu", seed=2)
    cpu = estimate(net, order=order, variant=variant, factored=factored, device="cpu")
    gpu = estimate(net, order=order, variant=variant, factored=factored, device="cuda")
    assert gpu.mean.device.type == "cuda"
    torch.testing.assert_close(gpu.mean.cpu(), cpu.mean, rtol=1e-10, atol=1e-12)
    assert gpu.flops == cpu.flops


@CUDA
def test_monte_carlo_on_cuda_agrees_with_cpu_within_standard_errors() -> None:
    """Different generators draw different samples: the two means differ by noise only (5 joint stderrs)."""
    net = random_mlp(16, 2, "relu", seed=3)
    cpu = estimate(net, "mc", samples=200_000, seed=1, device="cpu")
    gpu = estimate(net, "mc", samples=200_000, seed=1, device="cuda")
    assert gpu.mean.device.type == "cuda"
    joint = torch.sqrt(cpu.stderr**2 + gpu.stderr.cpu() ** 2)
    assert torch.all((gpu.mean.cpu() - cpu.mean).abs() < 5 * joint)


@CUDA
def test_cuda_chunk_size_fits_the_memory_share() -> None:
    net = random_mlp(1024, 4, "relu", seed=0).to(dtype=torch.float32, device="cuda")
    chunk = default_chunk_size(net)
    bytes_per_sample = 4 * (sum(net.dims) + 2 * max(net.dims)) + 16 * net.output_dim
    memory = torch.cuda.get_device_properties(net.device).total_memory
    budget = memory * CUDA_MEMORY_FRACTION
    assert chunk & (chunk - 1) == 0 and chunk * bytes_per_sample <= budget  # a power of two that fits
    assert chunk == MAX_CHUNK_SIZE or 2 * chunk * bytes_per_sample > budget  # the largest one


@CUDA
def test_truth_on_cuda_is_reproducible(tmp_path) -> None:
    from mechest.estimators.truth import compute_truth

    net = random_mlp(8, 2, "relu", seed=4)
    first = compute_truth(net, 50_000, tmp_path / "a.npz", seed=1, device="cuda", chunk_size=4096)
    second = compute_truth(net, 50_000, tmp_path / "b.npz", seed=1, device="cuda", chunk_size=4096)
    assert (first.mean == second.mean).all() and (first.variance == second.variance).all()


@CUDA
def test_bench_on_cuda_runs_kprop_monte_carlo_and_truths_there(tmp_path) -> None:
    """`mechest bench --device cuda`: every estimate and the new truths run on the GPU; kprop rows equal CPU's."""
    import dataclasses

    from mechest.experiments import bench

    tiny = bench.BenchSettings(widths=(6,), depth=2, depths=(2,), depth_width=6, seeds=(0,), truth_samples=20_000,
                               max_truth_flops=1e9, min_truth_samples=1000, max_flops=1e7, mc_samples=(100,),
                               repeats=1, orders=(1, 2), plots=False)
    _, gpu_rows, _ = bench.run_bench(dataclasses.replace(tiny, results=tmp_path / "gpu", device="cuda"),
                                     log=lambda line: None)
    truth = bench.find_truth(random_mlp(6, 2, "relu", seed=0), 1, [tmp_path / "gpu" / "truths"])
    assert truth is not None and truth.samples == 20_000
    cpu_estimate = estimate(random_mlp(6, 2, "relu", seed=0), "kprop", order=2)
    gpu_row = next(r for r in gpu_rows if r["method"] == "kprop" and (r["order"], r["variant"]) == (2, "simple"))
    expected = score(cpu_estimate.mean, truth)
    assert abs(gpu_row["mse"] - expected.mse) <= 1e-10 * max(expected.mse, 1e-30) + 1e-15


@CUDA
def test_distill_on_cuda(tmp_path, capsys) -> None:
    """`mechest distill --device cuda` trains on the GPU and writes a student."""
    teacher = tmp_path / "teacher.npz"
    random_mlp(12, 1, "relu", input_dim=4, output_dim=2, seed=0).save(teacher)
    out = tmp_path / "student.npz"
    assert main(["distill", "--teacher", str(teacher), "--student-width", "6", "--steps", "5", "--log-every", "5",
                 "--test-samples", "1000", "--no-baseline", "--device", "cuda", "--out", str(out)]) == 0
    assert out.is_file()
