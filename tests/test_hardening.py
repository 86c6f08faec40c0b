"""Hardening: odd-shaped networks through every tail method, overflow, impossible sample counts, requests too
large for memory, unreadable files, unsupported torch modules and silently ignored input."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
from collections.abc import Callable

import numpy as np
import pytest
import torch
from conftest import run
from torch import nn

from mechest import limits
from mechest.errors import MechestError
from mechest.estimators.estimate import estimate
from mechest.estimators.montecarlo import chunk_generator
from mechest.estimators.tail import METHODS as TAIL_METHODS
from mechest.estimators.tail import hermite_tail, lpe, marginal_cumulants, tail_probability
from mechest.estimators.truth import compute_truth, load_truth
from mechest.kprop import Scheme
from mechest.limits import check_sample_time
from mechest.mlp import MLP, from_sequential, load, random_mlp


def odd_sequential() -> nn.Sequential:
    """A user's 8 → 20 → 12 → 3 network with biases and two different activations."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 20), nn.ReLU(), nn.Linear(20, 12), nn.Tanh(), nn.Linear(12, 3)).double()


@pytest.fixture
def odd_net() -> MLP:
    return from_sequential(odd_sequential())


# item 1: tail on networks whose widths differ


@pytest.mark.parametrize("layer", [1, 2, 3])
def test_lpe_on_odd_widths_is_the_gram_charlier_tail_of_the_marginals(odd_net: MLP, layer: int) -> None:
    """The Heaviside unit's kprop mean equals Φ̄(x) + κ_3/6 w_H(3) + κ_4/24 w_H(4) of the propagated marginals,
    one value per neuron of the layer (20, 12 or 3 of them)."""
    cumulants = marginal_cumulants(odd_net, layer, Scheme(3, "simple"))
    result = lpe(odd_net, layer, 0.3, order=3)
    assert result.raw.shape == (odd_net.dims[layer],)
    torch.testing.assert_close(result.raw, hermite_tail(cumulants, 0.3, skew_squared=False), rtol=1e-11, atol=1e-15)


@pytest.mark.parametrize("layer", [1, 2, 3])
@pytest.mark.parametrize("upper", [True, False])
def test_monte_carlo_tail_on_odd_widths_counts_exactly(odd_net: MLP, layer: int, upper: bool) -> None:
    """Brute force: the same inputs (chunk 0 of the seed) through forward_layers, counted directly."""
    samples, threshold = 500, 0.2
    result = tail_probability(odd_net, layer, threshold, "mc", upper=upper, samples=samples, seed=4)
    x = torch.randn(samples, 8, generator=chunk_generator(4, 0), dtype=torch.float64)
    z = x
    for index in range(layer):
        z = z @ odd_net.weights[index].T + odd_net.biases[index]
        if index < layer - 1:
            z = torch.relu(z) if index == 0 else torch.tanh(z)
    expected = ((z > threshold) if upper else (z < threshold)).sum(dim=0)
    assert torch.equal(result.counts, expected)


@pytest.mark.parametrize("method", ("kprop",) + TAIL_METHODS)
def test_cli_tail_of_a_users_sequential_net(capsys, tmp_path, method: str) -> None:
    path = tmp_path / "user.npz"
    from_sequential(odd_sequential()).save(path)
    extra = ["--samples", "1000"] if method == "mc" else []
    code, out, err = run(capsys, "tail", "--weights", str(path), "--layer", "2", "--threshold", "0.5",
                         "--method", method, "--json", *extra)
    assert (code, err) == (0, "")
    probabilities = json.loads(out)["prob"]
    assert len(probabilities) == 12 and all(0 <= p <= 1 for p in probabilities)


def test_exceedance_table_refuses_layers_of_different_widths(odd_net: MLP) -> None:
    from mechest.estimators.tail import exceedance_table

    with pytest.raises(MechestError, match="different widths"):
        exceedance_table(odd_net, (1, 2), ((0.0, True),), samples=10, seed=0)


# item 2: overflow is an error naming the first layer that went non-finite


def relu_net(*scales: float) -> MLP:
    """An 8 → 20 → 12 → 3 ReLU network with biases, W_l scaled by scales[l]."""
    net = from_sequential(odd_sequential())
    return MLP([w * scale for w, scale in zip(net.weights, scales, strict=True)], net.biases, ["relu", "relu"])


def kprop_overflow_net() -> MLP:
    """W_1 scaled by 1e160: the pre-activation of layer 2 has values ~1e160 but variance ~1e320, above float64's
    largest number."""
    return relu_net(1, 1e160, 1)


def mc_overflow_net() -> MLP:
    """W_0 and W_1 scaled by 1e160: values ~1e160 at layer 1, ~1e320 = inf at layer 2 (ReLU does not saturate)."""
    return relu_net(1e160, 1e160, 1)


def saturating_net() -> MLP:
    """The odd net (ReLU, then tanh) with W_1 scaled by 1e160: tanh of ~±1e160 is exactly ±1."""
    net = from_sequential(odd_sequential())
    return MLP([net.weights[0], net.weights[1] * 1e160, net.weights[2]], net.biases, net.activations)


@pytest.mark.parametrize(("order", "variant", "factored"), [(1, "simple", False), (1, "isotropic", False),
                                                            (2, "simple", False), (2, "augment", False),
                                                            (3, "simple", False), (3, "simple", True),
                                                            (3, "augment", True), (4, "simple", True)])
def test_kprop_overflow_names_hidden_layer_2(order: int, variant: str, factored: bool) -> None:
    with pytest.raises(MechestError, match=r"^kprop: the (mean|variance) of hidden layer 2 is not finite"):
        estimate(kprop_overflow_net(), "kprop", order=order, variant=variant, factored=factored)


def test_monte_carlo_overflow_names_hidden_layer_2() -> None:
    with pytest.raises(MechestError, match=r"^mc: the value of hidden layer 2 is not finite"):
        estimate(mc_overflow_net(), "mc", samples=100)


def test_monte_carlo_ignores_saturated_overflow() -> None:
    """Values of 1e160 into tanh give exactly ±1: the Monte Carlo result is finite and right, so no error (kprop,
    whose variances overflow, refuses the same net)."""
    result = estimate(saturating_net(), "mc", samples=100)
    assert bool(torch.isfinite(result.mean).all()) and bool(torch.isfinite(result.stderr).all())


def test_truth_of_an_overflowing_net_writes_nothing(tmp_path) -> None:
    with pytest.raises(MechestError, match="mc: the value of hidden layer 2 is not finite"):
        compute_truth(mc_overflow_net(), 300, tmp_path / "truth.npz", chunk_size=100)
    assert list(tmp_path.iterdir()) == []


def test_variance_overflow_alone_is_an_error() -> None:
    """Output values ~1e160 are finite, their squares are not: the variance, and the stderr, would be inf."""
    net = relu_net(1, 1, 1e160)
    with pytest.raises(MechestError, match=r"^mc: the variance of the output is not finite"):
        estimate(net, "mc", samples=100)


@pytest.mark.parametrize(("method", "message"), [("lpe", "lpe: the (mean|variance) of hidden layer 2"),
                                               ("edgeworth", "kprop: the (mean|variance) of hidden layer 2"),
                                               ("saddlepoint", "kprop: the (mean|variance) of hidden layer 2"),
                                               ("mc", "mc: the pre-activation of layer 2")])
def test_tail_overflow_names_layer_2(method: str, message: str) -> None:
    """Layer numbers count pre-activations from 1 (as --layer does); hidden layer l is the activation after it."""
    net = mc_overflow_net() if method == "mc" else kprop_overflow_net()
    with pytest.raises(MechestError, match=rf"^{message} is not finite \(overflow\?\)$"):
        tail_probability(net, 3, 0.5, method, samples=100 if method == "mc" else None)


def test_far_threshold_gives_a_finite_edgeworth_tail() -> None:
    """x = 1e100 standard deviations out: He_5(x) overflows but the density is 0, so the tail is exactly 0."""
    cumulants = torch.tensor([[0.0], [1.0], [0.5], [0.3]], dtype=torch.float64)
    assert hermite_tail(cumulants, 1e100).tolist() == [0.0]
    assert hermite_tail(cumulants, 1e100, upper=False).tolist() == [1.0]


def test_cli_overflow_is_one_line_and_no_json(capsys, tmp_path) -> None:
    path = str(tmp_path / "big.npz")
    mc_overflow_net().save(path)
    for method, extra in (("kprop", []), ("mc", ["--samples", "100"])):
        code, out, err = run(capsys, "estimate", "--weights", path, "--method", method, "--json", *extra)
        assert (code, out, err.count("\n")) == (2, "", 1) and "is not finite (overflow?)" in err
    code, out, err = run(capsys, "truth", "--weights", path, "--samples", "100", "--workers", "0",
                         "--out", str(tmp_path / "truth.npz"))
    assert (code, out, err.count("\n")) == (2, "", 1) and not (tmp_path / "truth.npz").exists()


def test_float32_overflow_says_so(capsys, tmp_path) -> None:
    """Finite float64 weights of 1e39 do not fit in float32: say that, not "NaN or infinite values"."""
    net = from_sequential(odd_sequential())
    net = MLP([net.weights[0] * 1e39] + net.weights[1:], net.biases, net.activations)
    with pytest.raises(MechestError, match=r"^weight_0 overflows float32: its largest entry .* is above 3.4e\+38"):
        net.to(dtype=torch.float32)
    path = str(tmp_path / "big.npz")
    net.save(path)
    for command in (["estimate", "--weights", path], ["truth", "--weights", path, "--samples", "10", "--out",
                                                      str(tmp_path / "t.npz"), "--workers", "0"]):
        code, _, err = run(capsys, *command, "--dtype", "float32")
        assert code == 2 and "weight_0 overflows float32" in err and "NaN" not in err


def test_truth_file_of_nan_is_refused(tmp_path) -> None:
    path = tmp_path / "truth.npz"
    np.savez(path, mean=np.array([np.nan, 1.0]), variance=np.ones(2), samples=np.array(10), seed=np.array(0),
             fingerprint=np.array("x"))
    with pytest.raises(MechestError, match="its mean is not numeric and finite"):
        load_truth(path)


def test_score_json_has_no_nan_for_a_constant_output(capsys, tmp_path) -> None:
    """A network whose output does not vary: MSE/Var is undefined, which JSON says as null, not NaN."""
    net = from_sequential(odd_sequential())
    net = MLP(net.weights[:2] + [torch.zeros_like(net.weights[2])], net.biases, net.activations)
    weights, truth = str(tmp_path / "net.npz"), str(tmp_path / "truth.npz")
    net.save(weights)
    assert run(capsys, "truth", "--weights", weights, "--samples", "100", "--workers", "0", "--out", truth)[0] == 0
    code, out, _ = run(capsys, "score", "--weights", weights, "--truth", truth, "--json")
    assert code == 0 and "NaN" not in out and json.loads(out)["mse_over_var"] is None


# item 4: sample counts that could not finish


def test_sample_time_limit_is_a_year_at_a_petaflop() -> None:
    """1e9 FLOPs per sample at 1e15 FLOP/s: a year (31557600 s) is 3.15576e13 samples."""
    assert check_sample_time(31_557_600_000_000, 10**9) == 31_557_600_000_000
    with pytest.raises(MechestError, match=r"^3.16e\+13 samples of 1,000,000,000 FLOPs each would take at least "
                                           r"1 years \(at 1e\+15 FLOP/s\); this network accepts at most 3.16e\+13"):
        check_sample_time(31_557_700_000_000, 10**9)
    with pytest.raises(MechestError, match=r"at least 2.78 hours .*, but at most 1e\+15 samples are accepted$"):
        check_sample_time(10**16, 1000)


def test_impossible_sample_counts_are_refused_before_sampling(capsys, tmp_path, odd_net: MLP) -> None:
    with pytest.raises(MechestError, match="years"):
        estimate(odd_net, "mc", samples=10**30)
    with pytest.raises(MechestError, match="years"):
        tail_probability(odd_net, 2, 0.0, "mc", samples=10**30)
    path, out = str(tmp_path / "net.npz"), tmp_path / "truth.npz"
    odd_net.save(path)
    for command in (["estimate", "--method", "mc"], ["truth", "--out", str(out)]):
        code, stdout, err = run(capsys, *command, "--weights", path, "--samples", "1e30")
        assert (code, stdout, err.count("\n")) == (2, "", 1) and "years" in err
    assert not out.exists()


def test_cluster_runner_reads_chunk_numbers_lazily(monkeypatch) -> None:
    """A run of billions of chunks must not list their numbers before computing the first."""
    from mechest.cli import build_parser, chunk_runner
    from mechest.integrations import dask as distributed

    class Chunks:
        """Chunk numbers 0, 1, ... that fail the test when read past the 10th."""

        def __iter__(self):
            yield from range(10)
            raise AssertionError("chunk numbers read past the ones computed")

    def fake_runner(net, seed, samples, chunk_size, chunks):
        for chunk in itertools.islice(chunks, 3):
            yield chunk, None

    monkeypatch.setattr(distributed, "cluster_client", lambda *args: contextlib.nullcontext())
    monkeypatch.setattr(distributed, "dask_runner", lambda client: fake_runner)
    args = build_parser().parse_args(["truth", "--weights", "w.npz", "--samples", "1", "--out", "t.npz"])
    with chunk_runner(args, torch.device("cpu")) as runner:
        assert [chunk for chunk, _ in runner(None, 0, 10**30, 1, Chunks())] == [0, 1, 2]


# item 5: requests too large for memory are refused before allocating


@pytest.fixture
def memory(monkeypatch) -> Callable[[float], None]:
    """Set the memory limits.available_memory reports (bytes)."""
    def set_available(size: float) -> None:
        monkeypatch.setattr(limits, "available_memory", lambda device: int(size))
    return set_available


def test_available_memory_is_at_most_the_physical_memory() -> None:
    available = limits.available_memory(torch.device("cpu"))
    assert 0 < available <= os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def test_unfactored_order_4_is_refused_with_what_would_fit(memory, odd_net: MLP) -> None:
    """Widths 8, 20, 12, 3: n = 20. Just under K = 4's 16 n⁴ numbers, K = 4 factored, K = 3 and width 19 fit."""
    needed = limits.propagation_bytes(20, 2, 4, "simple", False)
    assert needed == 16 * 20**4 * 8  # 16 n⁴ float64 numbers; factored: 36 L n³
    memory(needed - 1)
    with pytest.raises(MechestError, match=rf"^kprop K=4 simple at width 20 needs about {needed / 1e9:.3g} GB of "
                                           rf"memory, but {needed / 1e9:.3g} GB is available; what would fit: "
                                           rf"--factored \({36 * 2 * 20**3 * 8 / 1e9:.3g} GB\), --order 3, "
                                           r"a width of at most 19$"):
        estimate(odd_net, "kprop", order=4)
    with pytest.raises(MechestError, match="what would fit"):
        tail_probability(odd_net, 3, 0.0, "lpe", order=4)
    with pytest.raises(MechestError, match="what would fit"):
        tail_probability(odd_net, 3, 0.0, "edgeworth", order=4)
    memory(needed)
    assert estimate(odd_net, "kprop", order=4).mean.shape == (3,)


def test_augment_order_2_suggests_the_simple_variant(memory, odd_net: MLP) -> None:
    """At depth 2, K = 2 augment holds (48 + 8·2) n² = 64 n² numbers, simple 10 n²: half of the first at width 20
    (12800 numbers) fits simple (4000) and widths up to 14 (64·14² = 12544 ≤ 12800 < 64·15²)."""
    memory(limits.propagation_bytes(20, 2, 2, "augment", False) / 2)
    with pytest.raises(MechestError, match=r"what would fit: --variant simple \(3.2e-05 GB\), --order 1, a width of "
                                           r"at most 14$"):
        estimate(odd_net, "kprop", order=2, variant="augment")


def test_cli_refuses_oversized_requests_before_allocating(capsys, memory, tmp_path) -> None:
    memory(1e6)
    code, out, err = run(capsys, "estimate", "--width", "24", "--depth", "2", "--order", "4")
    # K = 4 holds 16 n⁴ float64 numbers: 128·9⁴ ≤ 1e6 < 128·10⁴
    assert (code, out, err.count("\n")) == (2, "", 1) and "a width of at most 9" in err
    code, out, err = run(capsys, "net", "--width", "1000", "--depth", "3", "--out", str(tmp_path / "net.npz"))
    assert (code, out, err.count("\n")) == (2, "", 1) and not (tmp_path / "net.npz").exists()
    assert err.endswith("a width of at most 176 fits\n")  # 4 linear maps: 8 (4 n² + 4 n) ≤ 1e6 up to n = 176


# item 8: files that are not .npz archives


@pytest.mark.parametrize(("content", "message"), [
    (b"weight_0 = [[1, 2]]\n", "not a valid .npz file (an .npz file is a zip archive of .npy arrays; this one is not"),
    (b"", "not a valid .npz file"),
    (b"\x80\x04\x95pickle", "not a valid .npz file"),
    (None, "it is a single .npy array, not an .npz archive"),
    ("object", "its array 'weight_0' holds Python objects, not numbers or text"),
])
def test_files_that_are_not_npz_archives_never_mention_pickle(capsys, tmp_path, content, message: str) -> None:
    path = tmp_path / "net.npz"
    if content is None:
        with open(path, "wb") as handle:
            np.save(handle, np.ones((2, 2)))
    elif content == "object":
        np.savez(path, weight_0=np.array([{"a": 1}], dtype=object))
    else:
        path.write_bytes(content)
    for command in (["estimate", "--weights", str(path)], ["score", "--weights", str(path), "--truth", str(path)],
                    ["tail", "--weights", str(path), "--layer", "1", "--threshold", "0"]):
        code, out, err = run(capsys, *command)
        assert (code, out, err.count("\n")) == (2, "", 1) and message in err and "pickle" not in err
    truth = tmp_path / "truth.npz"
    truth.write_bytes(path.read_bytes())
    from_sequential(odd_sequential()).save(path)
    code, _, err = run(capsys, "score", "--weights", str(path), "--truth", str(truth))
    assert code == 2 and message in err and "pickle" not in err


# item 9: torch modules mechest skips or cannot read


def test_dropout_and_identity_are_skipped_as_in_eval_mode() -> None:
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(8, 20), nn.Dropout(0.3), nn.ReLU(), nn.Identity(), nn.Dropout(),
                          nn.Sequential(nn.Linear(20, 12), nn.Tanh()), nn.Linear(12, 3)).double().eval()
    net = from_sequential(model)
    assert net.dims == [8, 20, 12, 3] and net.activations == ["relu", "tanh"]
    x = torch.randn(5, 8, dtype=torch.float64)
    torch.testing.assert_close(net(x), model(x), rtol=0, atol=1e-14)


@pytest.mark.parametrize(("model", "message"), [
    (nn.Sequential(nn.Flatten(), nn.Linear(4, 2)), "^unsupported module Flatten; mechest reads nn.Linear layers "),
    (nn.Sequential(nn.Conv1d(1, 1, 1), nn.Linear(4, 2)), "^unsupported module Conv1d; mechest reads nn.Linear "),
    (nn.Sequential(nn.Linear(4, 4), nn.Conv1d(1, 1, 1), nn.Linear(4, 2)), "^unsupported module Conv1d; mechest reads "),
    (nn.Sequential(nn.ReLU(), nn.Linear(4, 2)), "^ReLU comes before the first nn.Linear"),
    (nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Tanh(), nn.Linear(4, 2)), r"^two activations in a row \(relu, "),
    (nn.Sequential(nn.Dropout()), "^the model has no nn.Linear layer"),
    (nn.Linear(4, 2), "^expected an nn.Sequential, got Linear"),
])
def test_unsupported_models_say_what_is_supported(model: nn.Module, message: str) -> None:
    with pytest.raises(MechestError, match=message):
        from_sequential(model)


# item 10: input that used to be silently ignored


@pytest.mark.parametrize(("missing", "message"), [(["weight_3"], "has weight_4 but no weight_3"),
                                                  (["weight_4", "weight_3"], "has bias_3 but no weight_3")])
def test_a_gap_in_the_layer_numbers_is_an_error(tmp_path, missing: list[str], message: str) -> None:
    """Five layers of width 3 (biases on all); without weight_3 the file used to load as a 3-layer network."""
    net = random_mlp(3, 4, bias_mean=0.1, seed=0)
    arrays = {f"{kind}_{layer}": tensor.numpy() for layer in range(5)
              for kind, tensor in (("weight", net.weights[layer]), ("bias", net.biases[layer]))}
    for name in missing:
        del arrays[name]
    path = tmp_path / "gap.npz"
    np.savez(path, activation=np.array("relu"), **arrays)
    with pytest.raises(MechestError, match=f"{message}: layers must be numbered 0, 1, 2, ... without gaps$"):
        load(path)


def test_samples_with_a_method_that_draws_none_is_an_error(capsys, tmp_path, odd_net: MLP) -> None:
    with pytest.raises(MechestError, match="is for method mc; kprop draws no samples"):
        estimate(odd_net, "kprop", samples=1000)
    for method in ("lpe", "edgeworth", "saddlepoint"):
        with pytest.raises(MechestError, match=f"is for method mc; {method} draws no samples"):
            tail_probability(odd_net, 2, 0.0, method, samples=1000)
    path = str(tmp_path / "net.npz")
    odd_net.save(path)
    for command in (["estimate"], ["tail", "--layer", "2", "--threshold", "0"]):
        code, out, err = run(capsys, *command, "--weights", path, "--samples", "1000")
        assert (code, out, err.count("\n")) == (2, "", 1) and "draws no samples" in err


def test_a_network_no_machine_holds_is_refused(capsys, tmp_path) -> None:
    """Width 10⁷: 8·10¹⁴ bytes per weight matrix, with the machine's real memory."""
    code, out, err = run(capsys, "net", "--width", "10000000", "--depth", "1", "--out", str(tmp_path / "net.npz"))
    assert (code, out, err.count("\n")) == (2, "", 1) and "needs about 1.6e+06 GB for its weights" in err
