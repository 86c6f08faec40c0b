"""mechest bench: configuration planning, truth cache, Pareto/Monte Carlo analysis, and a tiny end-to-end run."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from mechest.cli import main
from mechest.estimators import truth as truth_module
from mechest.estimators.budget import count_flops, predicted_flops
from mechest.estimators.estimate import estimate
from mechest.estimators.montecarlo import RunningMoments, sample_moments
from mechest.estimators.truth import compute_truth, score
from mechest.experiments import bench
from mechest.experiments.bench import BenchSettings
from mechest.kprop import SCHEMES
from mechest.kprop import Scheme as Config
from mechest.mlp import random_mlp
from mechest.results import read_runs, truths_dir

TINY = BenchSettings(widths=(4, 6), depth=2, depths=(1, 2), depth_width=4, seeds=(0,), truth_samples=20_000,
                     max_truth_flops=1e9, min_truth_samples=1000, max_flops=1e7, mc_samples=(10, 100),
                     repeats=1, orders=(1, 2, 3))


def test_configurations_factor_only_from_order_3_and_k1_has_simple_and_isotropic() -> None:
    configs = bench.all_configs()
    assert Config(1, "simple") in configs and Config(1, "isotropic") in configs
    assert Config(1, "augment") == Config(1, "simple")  # the same propagation, one value
    assert {c.order for c in configs if c.factored} == {3, 4}
    assert len(configs) == len(set(configs)) == 2 + 2 + 6 + 3  # K = 1 ×2, K = 2 ×2, K = 3 ×6, K = 4 ×3
    assert set(configs) == set(SCHEMES)


def test_flop_cap_skips_what_it_predicts_too_expensive() -> None:
    plan = bench.plan_configs(dataclasses.replace(TINY, max_flops=2e4))
    for (width, depth), configs in plan.runnable.items():
        for config in configs:
            assert predicted_flops(random_mlp(width, depth, "relu", seed=0), config) <= 2e4
    assert any("> cap" in line for line in plan.skipped)
    assert any(configs for configs in plan.runnable.values()) and any("K=3" in line for line in plan.skipped)


@pytest.mark.parametrize("config", [Config(1, "simple"), Config(2, "augment"), Config(3, "simple"),
                                    Config(3, "simple", factored=True)])
def test_predicted_flops_bound_the_count_from_above(config) -> None:
    net = random_mlp(96, 2, "relu", seed=0)  # wider than the probe: the prediction extrapolates
    actual = count_flops(net, config)[0]
    predicted = predicted_flops(net, config)
    assert actual <= predicted <= 2 * actual


def test_truth_cache_finds_prefix_and_full_names_with_enough_samples(tmp_path) -> None:
    net, other = random_mlp(4, 1, "relu", seed=0), random_mlp(4, 1, "relu", seed=1)
    fingerprint = net.fingerprint()
    compute_truth(net, 3000, tmp_path / f"{fingerprint[:16]}-3000.npz", seed=1)
    compute_truth(net, 2000, tmp_path / f"{fingerprint}-2000.npz", seed=2)
    compute_truth(other, 9000, tmp_path / f"{other.fingerprint()}-9000.npz", seed=3)
    assert bench.find_truth(net, 2500, [tmp_path]).samples == 3000
    assert bench.find_truth(net, 3001, [tmp_path]) is None
    assert bench.find_truth(other, 10, [tmp_path]).fingerprint == other.fingerprint()


def test_checkpoints_of_unfinished_truth_runs_count_as_truths(tmp_path, monkeypatch) -> None:
    net = random_mlp(4, 1, "relu", seed=0)
    out = tmp_path / f"{net.fingerprint()}-100000.npz"
    monkeypatch.setattr(truth_module, "CHECKPOINT_SECONDS", 0.0)  # checkpoint after every chunk

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    real_merge = RunningMoments.merge
    calls = []

    def merge_then_stop(self, other):
        calls.append(1)
        if len(calls) > 3:
            interrupt()
        return real_merge(self, other)

    monkeypatch.setattr(RunningMoments, "merge", merge_then_stop)
    with pytest.raises(KeyboardInterrupt):
        compute_truth(net, 100_000, out, seed=5, chunk_size=1000)
    monkeypatch.undo()
    partial = bench.find_truth(net, 1, [tmp_path])
    assert not out.exists() and partial.samples == 3000
    expected = sample_moments(net, 3000, 5, chunk_size=1000)
    np.testing.assert_allclose(partial.mean, expected.mean.numpy(), rtol=1e-12)
    np.testing.assert_allclose(partial.variance, expected.variance.numpy(), rtol=1e-12)
    assert bench.find_truth(net, 3001, [tmp_path]) is None


def test_pareto_front_and_monte_carlo_line() -> None:
    forward = 100.0
    points = {Config(1, "simple"): {"flops_raw": 200.0, "mse_over_var": 1e-2},
              Config(2, "simple"): {"flops_raw": 1e4, "mse_over_var": 9e-4},
              Config(2, "augment"): {"flops_raw": 2e4, "mse_over_var": 2e-3},  # dominated
              Config(3, "simple"): {"flops_raw": 1e5, "mse_over_var": 1e-5}}
    assert bench.pareto_front(points) == [Config(1, "simple"), Config(2, "simple"), Config(3, "simple")]
    # K=1 holds 1e-2 until 1e4 FLOPs, where the line is at forward / 1e4 = 1e-2: not strictly below.
    failures = bench.front_below_mc_line(points, forward)
    assert len(failures) == 1 and failures[0].startswith("K=1 simple")
    points[Config(1, "simple")]["mse_over_var"] = 9e-3
    assert bench.front_below_mc_line(points, forward) == []


def test_monte_carlo_time_fit_recovers_a_line() -> None:
    rows = [{"method": "mc", "width": 8, "depth": 2, "samples": n, "seconds": 0.01 + 2e-6 * n}
            for n in (10, 100, 1000, 10_000)]
    fit = bench.fit_mc_time(rows, 8, 2)
    assert fit.overhead == pytest.approx(0.01) and fit.per_sample == pytest.approx(2e-6)
    assert bench.fit_mc_time(rows[:1], 8, 2) is None


def test_fitted_slope_of_a_power_law() -> None:
    widths = [8, 16, 32, 64]
    assert bench.fitted_slope(widths, [3.0 * w**-2.5 for w in widths]) == pytest.approx(-2.5)
    assert math.isnan(bench.fitted_slope([8, 16], [1.0, -1.0]))


def test_end_to_end_rows_store_truth_cache_and_figures(tmp_path, monkeypatch) -> None:
    settings = dataclasses.replace(TINY, results=tmp_path)
    run_id, rows, plan = bench.run_bench(settings, log=lambda line: None)
    kprop = [r for r in rows if r["method"] == "kprop"]
    mc = [r for r in rows if r["method"] == "mc"]
    networks = settings.networks()
    assert networks == [(4, 2), (6, 2), (4, 1)]
    assert len(mc) == len(networks) * len(settings.mc_samples)
    assert len(kprop) == sum(len(plan.runnable[pair]) for pair in networks)
    assert read_runs(tmp_path).to_pylist() == rows and {r["run_id"] for r in rows} == {run_id}
    # Each row is the estimate scored against the cached truth: recompute one independently.
    row = next(r for r in kprop if (r["width"], r["order"], r["variant"]) == (6, 2, "augment"))
    net = random_mlp(6, 2, "relu", seed=0)
    truth = bench.find_truth(net, 1, [truths_dir(tmp_path)])
    assert row["weights_hash"] == net.fingerprint() and row["truth_samples"] == truth.samples == 20_000
    expected = score(estimate(net, "kprop", order=2, variant="augment").mean, truth)
    assert row["mse"] == expected.mse and row["mse_over_var"] == expected.relative
    assert row["flops_discounted"] <= row["flops_raw"] == count_flops(net, Config(2, "augment"))[0]
    for r in mc:
        assert r["flops_raw"] == r["samples"] * r["forward_flops"]
    # A second run reuses the truths instead of computing them again.
    monkeypatch.setattr(bench, "compute_truth", lambda *args, **kwargs: pytest.fail("recomputed a truth"))
    _, again, _ = bench.run_bench(settings, log=lambda line: None)
    assert [r["mse"] for r in again] == [r["mse"] for r in rows]
    assert read_runs(tmp_path).num_rows == 2 * len(rows)

    from mechest.experiments.plots import make_plots

    paths = make_plots(rows, settings, tmp_path / "figures")
    assert len(paths) == 8
    for path in paths:
        assert path.read_bytes()[:4] in (b"\x89PNG", b"%PDF")


def test_nets_without_an_affordable_truth_are_skipped(tmp_path) -> None:
    settings = dataclasses.replace(TINY, results=tmp_path, max_truth_flops=1e5, min_truth_samples=10_000,
                                   orders=(1,))
    logged: list[str] = []
    _, rows, _ = bench.run_bench(settings, log=logged.append)
    assert rows == [] and sum("no cached truth" in line for line in logged) == len(settings.networks())


def test_headline_summary_reports_the_ratios() -> None:
    forward = 100.0
    rows = [{"method": "kprop", "width": 8, "depth": 2, "order": k, "variant": "simple", "factored": False,
             "flops_raw": f, "flops_discounted": f, "seconds": s, "mse": m, "noise_floor": 0.0, "mse_over_var": m,
             "forward_flops": forward, "truth_samples": 10**6} for k, f, s, m in [(1, 200.0, 0.01, 8e-3),
                                                                                 (2, 1e4, 0.1, 1e-4)]]
    rows += [{"method": "mc", "width": 8, "depth": 2, "samples": n, "seconds": 1e-3 * n, "forward_flops": forward,
              "truth_samples": 10**6, "flops_raw": forward * n} for n in (10, 100)]
    text = "\n".join(bench.headline_summary(rows, 8, 2))
    # 100 / (1e-4 · 1e4) > 100 / (8e-3 · 200)
    assert "largest FLOP advantage at equal MSE (Monte Carlo FLOPs / kprop FLOPs): 100x (K=2 simple" in text
    assert "lies below the Monte Carlo line" in text
    assert "below 200 FLOPs (2 forward passes) kprop has no configuration" in text
    rows[0]["flops_raw"] = 90.0  # a first front point cheaper than one forward pass covers every budget
    text = "\n".join(bench.headline_summary(rows, 8, 2))
    assert "covers every budget from one forward pass on" in text
    assert ("wall-clock, K=2 simple: 0.1 s for MSE/Var 0.0001; Monte Carlo needs 1e+04 samples = 10 s: "
            "Monte Carlo time / kprop time = 100") in text


def exit_code(argv: list[str]) -> int:
    """main's return value, or the exit code of an argparse error."""
    try:
        return main(argv)
    except SystemExit as error:
        return error.code


@pytest.mark.parametrize("argv", [["--widths", "0"], ["--seeds", "-1"], ["--truths", "/nonexistent/dir"],
                                  ["--variants", "fancy"], ["--max-flops", "-1"], ["--report", "no-such-run"]])
def test_bench_command_bad_input_is_one_line_exit_2(tmp_path, capsys, argv) -> None:
    assert exit_code(["bench", "--results", str(tmp_path)] + argv) == 2
    error = capsys.readouterr().err
    assert "error:" in error and error.count("\n") == 1
    assert not (tmp_path / "runs").exists()
