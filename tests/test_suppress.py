"""`mechest suppress`: the differentiable tail objective, the change estimate, a tiny end-to-end run checked by
Monte Carlo, the sampled baseline's budget, and the CLI's errors."""

from __future__ import annotations

import json

import pytest
import torch

from mechest.cli import main
from mechest.errors import MechestError
from mechest.estimators.distill import expected_loss, squared_error_network
from mechest.estimators.montecarlo import sample_moments
from mechest.estimators.tail import monte_carlo
from mechest.experiments.suppress import (
    estimated_change,
    saddlepoint_of_units,
    suppress,
    suppress_sampled,
    tail_objective,
)
from mechest.mlp import MLP, load, random_mlp

Z_LIMIT = 4.0


def tiny_net(depth: int = 2, seed: int = 1) -> MLP:
    """Input 3, width 5, output 2 (non-square), biases."""
    return random_mlp(5, depth, input_dim=3, output_dim=2, bias_var=0.1, seed=seed)


@pytest.mark.parametrize(("order", "variant", "seed", "threshold", "units"),
                         [(3, "simple", 1, 0.8, [0, 1]), (2, "augment", 2, 1.0, [1])])
def test_tail_objective_gradcheck(order: int, variant: str, seed: int, threshold: float, units: list[int]) -> None:
    """mean_i log p_i (saddlepoint of the propagated marginals, Newton differentiated through) against finite
    differences, float64, every weight and bias of a 2-hidden-layer net at once (fast mode: the Jacobian along
    random directions)."""
    net = tiny_net(seed=seed)
    prob, valid = saddlepoint_of_units(net, 3, threshold, units, True, order, variant)
    assert bool(valid.all()) and bool(((prob > 1e-5) & (prob < 0.2)).all())
    tensors = [t.clone().requires_grad_(True) for t in net.weights + net.biases]
    count = len(net.weights)

    def objective(*values: torch.Tensor) -> torch.Tensor:
        candidate = MLP(list(values[:count]), list(values[count:]), net.activations)
        return tail_objective(candidate, 3, threshold, units, True, order, variant)

    assert torch.autograd.gradcheck(objective, tuple(tensors), eps=1e-6, atol=1e-6, rtol=1e-4, fast_mode=True)


def test_change_estimate_is_zero_at_the_network_itself_and_needs_the_hermite_tail() -> None:
    """E‖M − M‖² = 0: with the Mehler tail the estimate is 0 to round-off; the 24-term truncation alone is not
    (it leaves every unit's unexplained variance 2 r_i)."""
    net = random_mlp(16, 3, seed=0)
    scale = float(expected_loss(random_mlp(16, 3, seed=1), net, method="mehler"))
    assert abs(float(estimated_change(net, net))) < 1e-12 * scale
    assert float(expected_loss(net, net, method="mehler")) > 1e-4 * scale


def test_mehler_tail_moves_the_truncated_estimate_towards_the_converged_series() -> None:
    """One hidden layer: the pre-activations are exactly Gaussian, so the Mehler series converges to the true
    loss. With 24 terms plus the tail estimate it is closer to the 150-term value than 24 terms alone."""
    teacher = tiny_net(depth=1)
    student = MLP([w * 1.05 for w in teacher.weights], teacher.biases, teacher.activations)
    converged = float(expected_loss(student, teacher, method="mehler", hermite_terms=150))
    plain = float(expected_loss(student, teacher, method="mehler"))
    with_tail = float(expected_loss(student, teacher, method="mehler", hermite_tail=True))
    assert abs(with_tail - converged) < abs(plain - converged)


def test_end_to_end_lowers_the_true_probability_within_the_change_bound() -> None:
    """One hidden layer (where the change estimate is exact up to the series): a short run lowers the estimated
    probability of both target units, and by exact counts the true one; by Monte Carlo the function change is
    within the bound (Z_LIMIT standard errors)."""
    net = random_mlp(7, 1, input_dim=5, output_dim=3, bias_var=0.1, seed=4)
    units, threshold, bound = [0, 2], 1.6, 0.05
    result = suppress(net, 2, threshold, units, max_change=bound, steps=8, lr=0.05)
    assert bool((result.prob_after < result.prob_before).all())
    assert result.function_change <= bound and result.flops > 0 and len(result.history) == 2
    samples = 200_000
    before = monte_carlo(net, 2, threshold, samples=samples, seed=3).counts[units]
    after = monte_carlo(result.net, 2, threshold, samples=samples, seed=3).counts[units]
    assert bool((before >= 200).all())
    assert bool((after.double() < before.double() - Z_LIMIT * before.double().sqrt()).all())
    variance = sample_moments(net, 1 << 16, 5).variance.sum()
    change = sample_moments(squared_error_network(result.net, net), 1 << 16, 6)
    stderr = (change.variance[0] / change.count).sqrt()
    assert float(change.mean[0]) <= bound * float(variance) + Z_LIMIT * float(stderr)


def test_lower_tail_and_default_units() -> None:
    """--lower targets P(z < t); by default every unit with a non-negligible estimate is a target."""
    net = random_mlp(7, 1, input_dim=5, output_dim=3, bias_var=0.1, seed=4)
    result = suppress(net, 2, -1.6, lower=True, steps=2, lr=0.01)
    assert not result.upper and result.units == [0, 1, 2]
    assert bool((result.prob_after <= result.prob_before).all())


def test_event_inside_the_network() -> None:
    """A hidden layer's event: the layers after it get no tail gradient (only the projection moves them)."""
    net = random_mlp(6, 3, input_dim=4, output_dim=3, bias_var=0.1, seed=2)
    result = suppress(net, 2, 1.5, [0, 1], steps=3, lr=0.02, max_change=0.05)
    assert bool((result.prob_after < result.prob_before).all()) and result.function_change <= 0.05


def test_sampled_baseline_stays_within_its_budget_and_bound() -> None:
    net = tiny_net()
    budget = 7 * 10**6
    result = suppress_sampled(net, 3, 1.2, [0, 1], budget=budget, margin=1.0, batch_size=256, seed=0)
    assert result.steps >= 1 and result.flops <= budget
    assert result.function_change <= result.max_change


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"layer": 4, "threshold": 1.0}, "layer must be between 1 and 3"),
    ({"layer": 3, "threshold": 1.0, "units": [2]}, "unit 2 is out of range"),
    ({"layer": 3, "threshold": 60.0, "units": [0]}, "already below"),
    ({"layer": 3, "threshold": 60.0}, "for every unit of layer 3"),
    ({"layer": 3, "threshold": 1.0, "max_change": 0.0}, "max-change must be a positive"),
    ({"layer": 3, "threshold": float("nan")}, "finite"),
    ({"layer": 3, "threshold": 1.0, "order": 1}, "order K >= 2"),
])
def test_bad_input(kwargs: dict, message: str) -> None:
    with pytest.raises(MechestError, match=message):
        suppress(tiny_net(), **kwargs)


def test_cli_json_and_atomic_output(tmp_path, capsys) -> None:
    path, out = tmp_path / "net.npz", tmp_path / "tuned.npz"
    tiny_net().save(path)
    assert main(["suppress", "--weights", str(path), "--layer", "3", "--threshold", "1.2", "--units", "0",
                 "--steps", "2", "--out", str(out), "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert {"prob_before", "prob_after", "function_change", "flops", "seconds"} <= set(record)
    assert len(record["prob_before"]) == len(record["prob_after"]) == 1
    assert load(out).dims == tiny_net().dims
    assert [p.name for p in tmp_path.iterdir() if "partial" in p.name] == []


@pytest.mark.parametrize(("arguments", "message"), [
    (["--layer", "7", "--threshold", "1"], "layer must be between"),
    (["--layer", "3", "--threshold", "1", "--units", "5"], "out of range"),
    (["--layer", "3", "--threshold", "80"], "already below"),
    (["--layer", "3", "--threshold", "1", "--max-change", "-1"], "max-change"),
    (["--layer", "3", "--threshold", "1", "--steps", "0"], "steps"),
])
def test_cli_errors_are_one_line(tmp_path, capsys, arguments: list[str], message: str) -> None:
    path = tmp_path / "net.npz"
    tiny_net().save(path)
    assert main(["suppress", "--weights", str(path), "--out", str(tmp_path / "o.npz"), *arguments]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err
    assert not (tmp_path / "o.npz").exists()


def test_cli_unwritable_out_is_rejected_before_training(tmp_path, capsys, monkeypatch) -> None:
    """The output path is checked before any work: training is never started."""
    path = tmp_path / "net.npz"
    tiny_net().save(path)
    monkeypatch.setattr("mechest.experiments.suppress.suppress",
                        lambda *args, **kwargs: pytest.fail("training started"))
    assert main(["suppress", "--weights", str(path), "--layer", "3", "--threshold", "1",
                 "--out", str(tmp_path / "missing" / "o.npz")]) == 2
    assert "does not exist" in capsys.readouterr().err
