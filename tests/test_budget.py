"""Schemes as one value, and the best scheme for a FLOP budget (mechest.kprop.scheme, mechest.estimators.budget)."""

from __future__ import annotations

import json

import pytest
import torch

from mechest.cli import main
from mechest.errors import MechestError
from mechest.estimators.budget import PROBE_WIDTH, choose_scheme, count_flops, predicted_flops, ranking
from mechest.estimators.estimate import estimate
from mechest.kprop import SCHEMES, Scheme
from mechest.mlp import MLP, random_mlp


def odd_network(widths: list[int], activations: list[str], seed: int) -> MLP:
    """Non-square widths, biases on every other layer, the given activations."""
    generator = torch.Generator().manual_seed(seed)
    weights = [torch.randn(out, inp, generator=generator, dtype=torch.float64) / inp**0.5
               for inp, out in zip(widths[:-1], widths[1:])]
    biases = [0.1 * torch.randn(out, generator=generator, dtype=torch.float64) if layer % 2 == 0 else None
              for layer, out in enumerate(widths[1:])]
    return MLP(weights, biases, activations)


def test_schemes_are_validated_once_with_what_was_passed_and_what_is_supported() -> None:
    assert len(SCHEMES) == len(set(SCHEMES)) == 13
    assert Scheme(1, "augment") == Scheme(1, "simple")
    for order, variant, factored in ((2, "simple", True), (4, "augment", True), (3, "isotropic", False),
                                     (5, "simple", False), (0, "simple", False), (2, "fancy", False)):
        with pytest.raises(MechestError, match="supported: K=1 simple") as error:
            Scheme(order, variant, factored)
        assert f"order={order!r}, variant={variant!r}, factored={factored!r}" in str(error.value)
        assert "\n" not in str(error.value)


@pytest.mark.parametrize("net", [random_mlp(16, 3, "relu", seed=0),
                                 odd_network([7, 20, 13, 3], ["relu", "tanh"], seed=1)], ids=["square", "odd"])
def test_budget_picks_the_best_ranked_scheme_that_fits_and_never_exceeds_it(net: MLP) -> None:
    order = ranking(net)
    for budget in (1e3, 1e5, 1e6, 1e8):
        fitting = [scheme for scheme in order if predicted_flops(net, scheme, "mean") <= budget]
        if not fitting:
            with pytest.raises(MechestError, match="cheapest"):
                estimate(net, budget=budget)
            continue
        result = estimate(net, budget=budget)
        assert result.scheme == fitting[0] == choose_scheme(net, budget, "mean")
        assert result.flops <= budget
        torch.testing.assert_close(result.mean, estimate(net, scheme=fitting[0]).mean, rtol=0, atol=0)


@pytest.mark.parametrize("scheme", [Scheme(1), Scheme(1, "isotropic"), Scheme(2), Scheme(2, "augment"),
                                    Scheme(3, "simple", True), Scheme(3, "augment", True), Scheme(3, "core", True),
                                    Scheme(3, "closure", True), Scheme(3)])
def test_predictions_past_the_probe_width_bound_the_count_tightly(scheme: Scheme) -> None:
    # odd widths: over-estimated only through the probe's rounding (here at most 3/2 per dimension)
    net = odd_network([45, 2 * PROBE_WIDTH + 3, 50, 9], ["relu", "gelu"], seed=2)
    for outputs in ("cov", "mean"):
        actual = count_flops(net, scheme, outputs=outputs)[0]
        assert actual <= predicted_flops(net, scheme, outputs) <= 2 * actual
    # widths proportional to the probe: the polynomial is read exactly, but for the closure's slice feed, whose
    # rank min(SLICE_FEED_RANK, n) is capped at the smallest probe width (an over-estimate, 3% here)
    square = random_mlp(3 * PROBE_WIDTH, 3, "relu", seed=0)
    predicted, counted = predicted_flops(square, scheme, "mean"), count_flops(square, scheme, outputs="mean")[0]
    if scheme == Scheme(3, "closure", True):
        assert counted < predicted <= 1.05 * counted
    else:
        assert predicted == counted


def test_ranking_puts_k2_augment_after_simple_on_deep_narrow_nets() -> None:
    wide, deep = ranking(random_mlp(64, 2, seed=0)), ranking(random_mlp(8, 4, seed=0))
    assert wide.index(Scheme(2, "augment")) < wide.index(Scheme(2))
    assert deep.index(Scheme(2)) < deep.index(Scheme(2, "augment"))
    # factored K = 3 simple: the same estimate, cheaper; K = 3 core: selectable, not ranked (the closure is better)
    assert set(wide) == set(SCHEMES) - {Scheme(3), Scheme(3, "core", True)}
    assert wide.index(Scheme(3, "closure", True)) + 1 == wide.index(Scheme(3, "simple", True))


def test_cli_budget(tmp_path, capsys) -> None:
    path = tmp_path / "net.npz"
    random_mlp(16, 2, "relu", seed=3).save(path)
    assert main(["estimate", "--weights", str(path), "--budget", "1e7", "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["flops"] <= 1e7 and record["scheme"]["order"] >= 2
    for argv, message in ((["--budget", "10"], "cheapest"), (["--budget", "1e7", "--order", "2"], "either"),
                          (["--budget", "-1"], "positive"), (["--budget", "1e7", "--method", "mc"], "mc")):
        try:
            code = main(["estimate", "--weights", str(path), *argv])
        except SystemExit as exit_info:  # argparse's own errors
            code = exit_info.code
        assert code == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("scheme", [Scheme(3, "augment"), Scheme(4), Scheme(4, "augment"), Scheme(4, "simple", True)])
def test_predictions_bound_the_unfactorised_engines_summed_path(scheme: Scheme) -> None:
    # from width 32 on the general engine sums some slices instead of forming them (fewer FLOPs than its probes'
    # path): still an upper bound, no longer exact
    net = odd_network([7, 36, 33, 3], ["relu", "tanh"], seed=4)
    actual = count_flops(net, scheme, outputs="mean")[0]
    assert actual <= predicted_flops(net, scheme, "mean") <= 1.5 * actual
