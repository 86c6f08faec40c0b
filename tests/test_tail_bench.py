"""The tail-probability experiment: truth counting, error summaries, the budget ladder, the command."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mechest.cli import main
from mechest.estimators.montecarlo import chunk_count, chunk_generator, chunk_size_of
from mechest.estimators.tail import exceedance_counts, exceedance_table, truncate
from mechest.experiments.tail_bench import (
    LADDER,
    TailBenchSettings,
    budget_ladder,
    errors_of,
    label,
    make_truth,
    summarise,
)
from mechest.mlp import random_mlp


@pytest.mark.parametrize("chunk_size", [1 << 16, 700])
def test_exceedance_table_counts_every_layer_and_event(chunk_size: int) -> None:
    """One forward pass per chunk for all layers and events gives the brute-force counts of the same inputs."""
    net = random_mlp(6, 2, "relu", seed=4)
    events = [(0.5, True), (-0.5, False)]
    samples = 3000
    table = exceedance_table(net, (2, 3), events, samples=samples, seed=9, chunk_size=chunk_size)
    inputs = torch.cat([torch.randn(chunk_size_of(c, samples, chunk_size), net.input_dim,
                                    generator=chunk_generator(9, c), dtype=net.dtype)
                        for c in range(chunk_count(samples, chunk_size))])
    for row, layer in enumerate((2, 3)):
        z = truncate(net, layer)(inputs)
        for column, (t, upper) in enumerate(events):
            expected = ((z > t) if upper else (z < t)).sum(dim=0)
            assert torch.equal(table[row, column], expected)
    assert torch.equal(exceedance_counts(truncate(net, 3), samples, 9, 0.5, True, chunk_size), table[1, 0])


def record(rel_estimates: list[float], true_counts: list[int], flops: float, method: str, order: int,
           variant: str, factored: bool = False, samples: int = 10**8) -> dict:
    """A synthetic result row: estimates = true probability × (1 + error)."""
    true = np.array(true_counts) / samples
    return dict(method=method, order=order, variant=variant, factored=factored, threshold=3.0, upper=True,
                raw=(true * (1 + np.array(rel_estimates))).tolist(), flops=flops, seconds=0.0, fallbacks=0,
                seed=0, layer=4, truth_counts=true_counts, truth_samples=samples, mc_flops_per_sample=1.0)


def test_errors_and_summary_restrict_to_the_band_and_the_100x_rule() -> None:
    # True probabilities 1e-7 (out of band), 2e-6, 5e-5; N_eq = 1000, so only p ≤ 1e-5 counts as 100x rarer.
    row = record([0.1, -0.2, 0.4], [10, 200, 5000], flops=1000.0, method="saddlepoint", order=2, variant="augment")
    errors = errors_of(row, (1e-6, 1e-4))
    np.testing.assert_allclose(errors["rel"], [0.2, 0.4], rtol=1e-12)
    (summary,) = summarise([row], (1e-6, 1e-4))
    assert summary["neurons"] == 2 and summary["median_rel_error"] == pytest.approx(0.3)
    assert summary["neurons_100x"] == 1 and summary["median_rel_error_100x"] == pytest.approx(0.2)


def test_budget_ladder_takes_the_most_expensive_allowed_method() -> None:
    # p = 2e-6, 2e-5, 5e-5. Cheap method N_eq = 100 (allowed for p ≤ 1e-4: all three), expensive N_eq = 1e4
    # (allowed for p ≤ 1e-6: none) and then N_eq = 2e3 (allowed for p ≤ 5e-6: the first neuron only).
    cheap = record([0.5, 0.6, 0.7], [200, 2000, 5000], 100.0, "saddlepoint", 2, "augment")
    expensive = record([0.1, 0.2, 0.3], [200, 2000, 5000], 1e4, "saddlepoint", 3, "simple", factored=True)
    assert [cheap["method"] + f" K={cheap['order']} {cheap['variant']}",
            "saddlepoint K=3 simple factored"] == list(LADDER)
    ladder = budget_ladder([cheap, expensive], 4, (1e-6, 1e-4))
    assert ladder == dict(layer=4, covered=3, uncovered=0, median_rel_error=pytest.approx(0.6))
    expensive["flops"] = 2e3
    ladder = budget_ladder([cheap, expensive], 4, (1e-6, 1e-4))
    assert ladder["median_rel_error"] == pytest.approx(0.6)  # errors 0.1, 0.6, 0.7
    cheap["flops"] = 1e6  # now nothing is allowed for any neuron
    assert budget_ladder([cheap, expensive], 4, (1e-6, 1e-4))["uncovered"] == 2


def test_command_makes_truths_runs_and_replots(tmp_path, capsys) -> None:
    argv = ["tail-bench", "--width", "6", "--depth", "2", "--seeds", "0", "--truths", str(tmp_path / "truths"),
            "--results", str(tmp_path / "res")]
    assert main(argv + ["--make-truths", "20000"]) == 0
    out = capsys.readouterr().out
    assert "| 3 | saddlepoint K=3 simple factored |" in out and "budget ladder, layer 3" in out
    records = json.loads((tmp_path / "res" / "tail" / "tail_bench_w6_d2_seed0.json").read_text())
    assert {row["layer"] for row in records} == {2, 3} and all(row["truth_samples"] == 20000 for row in records)
    assert (tmp_path / "res" / "figures" / "tail_bench_w6_d2.png").read_bytes()[:4] == b"\x89PNG"
    assert main(argv + ["--replot"]) == 0
    table = [line for line in out.splitlines() if line.startswith("|")]
    assert [line for line in capsys.readouterr().out.splitlines() if line.startswith("|")] == table


def test_command_refuses_missing_or_foreign_truths(tmp_path, capsys) -> None:
    argv = ["tail-bench", "--width", "6", "--depth", "2", "--seeds", "0", "--truths", str(tmp_path),
            "--results", str(tmp_path / "res")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--make-truths" in err
    make_truth(TailBenchSettings(width=6, depth=2, layers=(2, 3), truths=tmp_path), seed=1, samples=100)
    (tmp_path / "tail_truth_w6_d2_seed1.npz").rename(tmp_path / "tail_truth_w6_d2_seed0.npz")
    assert main(argv) == 2
    assert "different network" in capsys.readouterr().err
    assert main(argv + ["--replot"]) == 2
    assert "run without --replot" in capsys.readouterr().err


def test_one_hidden_layer_benches_its_output_layer_once(tmp_path, capsys) -> None:
    """Also: the published run's truth file in the same folder (as from the repository root) is left alone."""
    published = TailBenchSettings(truths=tmp_path / "truths").truth_path(0)
    published.parent.mkdir()
    np.savez(published, fingerprint=np.array("the published width-256 network"))
    argv = ["tail-bench", "--width", "6", "--depth", "1", "--seeds", "0", "--truths", str(tmp_path / "truths"),
            "--results", str(tmp_path / "res"), "--make-truths", "5000"]
    assert main(argv) == 0
    assert str(np.load(published)["fingerprint"]) == "the published width-256 network"
    records = json.loads((tmp_path / "res" / "tail" / "tail_bench_w6_d1_seed0.json").read_text())
    assert {row["layer"] for row in records} == {2}
    assert len(records) == len({(label(row), row["threshold"], row["upper"]) for row in records})
