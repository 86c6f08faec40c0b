"""Networks: construction, inits, forward pass, torch and file round trips, input validation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from mechest.errors import MechestError
from mechest.estimators.estimate import estimate
from mechest.math.wick import ACTIVATION_NAMES
from mechest.mlp import MLP, critical_variances, from_sequential, he_weight_variances, load, random_mlp


def manual_forward(net: MLP, x: torch.Tensor) -> torch.Tensor:
    functions = {"relu": torch.relu, "tanh": torch.tanh, "identity": lambda z: z}
    h = x
    for layer, weight in enumerate(net.weights):
        h = h @ weight.T + (0 if net.biases[layer] is None else net.biases[layer])
        if layer < net.depth:
            h = functions[net.activations[layer]](h)
    return h


def test_forward_matches_manual_computation() -> None:
    net = random_mlp(6, 3, ["relu", "tanh", "identity"], bias_mean=0.1, bias_var=0.2, seed=3)
    x = torch.randn(5, 6, dtype=torch.float64)
    torch.testing.assert_close(net(x), manual_forward(net, x), rtol=0, atol=1e-14)


def test_shapes_for_rectangular_network() -> None:
    net = random_mlp(7, 2, input_dim=3, output_dim=2, seed=0)
    assert net.dims == [3, 7, 7, 2]
    assert net(torch.zeros(4, 3, dtype=torch.float64)).shape == (4, 2)


def test_seeded_networks_are_reproducible_and_seed_dependent() -> None:
    a, b, c = random_mlp(5, 2, seed=1), random_mlp(5, 2, seed=1), random_mlp(5, 2, seed=2)
    assert all(torch.equal(x, y) for x, y in zip(a.weights, b.weights))
    assert not torch.equal(a.weights[0], c.weights[0])
    assert a.fingerprint() == b.fingerprint() != c.fingerprint()


@pytest.mark.parametrize("name", ACTIVATION_NAMES)
def test_sequential_round_trip_for_every_activation(name: str) -> None:
    net = random_mlp(4, 2, name, bias_mean=0.3, seed=0)
    sequential = net.to_sequential()
    x = torch.randn(3, 4, dtype=torch.float64)
    torch.testing.assert_close(sequential(x), net(x), rtol=0, atol=1e-14)
    back = from_sequential(sequential)
    assert back.activations == net.activations
    torch.testing.assert_close(back(x), net(x), rtol=0, atol=0)


def test_from_plain_torch_modules() -> None:
    model = nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 5), nn.GELU(), nn.Linear(5, 5), nn.Linear(5, 2))
    net = from_sequential(model.double())
    assert net.activations == ["relu", "gelu", "identity"]
    x = torch.randn(4, 3, dtype=torch.float64)
    torch.testing.assert_close(net(x), model(x), rtol=0, atol=1e-14)


@pytest.mark.parametrize("model", [
    nn.Sequential(nn.ReLU(), nn.Linear(2, 2)),
    nn.Sequential(nn.Linear(2, 2), nn.ReLU()),
    nn.Sequential(nn.Linear(2, 2), nn.ELU(), nn.Linear(2, 2)),
    nn.Sequential(nn.Linear(2, 2), nn.GELU(approximate="tanh"), nn.Linear(2, 2)),
])
def test_unsupported_sequential_models_are_rejected(model: nn.Sequential) -> None:
    with pytest.raises(MechestError):
        from_sequential(model)


def test_npz_round_trip(tmp_path) -> None:
    net = random_mlp(5, 3, ["relu", "gelu", "sgn"], bias_mean=[0.1, 0.0, 0.0, 0.2], seed=4)
    path = tmp_path / "net.npz"
    net.save(path)
    back = load(path)
    assert back.activations == net.activations
    assert [b is None for b in back.biases] == [False, True, True, False]
    assert back.fingerprint() == net.fingerprint()


def test_file_with_one_activation_string_and_extra_arrays(tmp_path) -> None:
    path = tmp_path / "net.npz"
    rng = np.random.default_rng(0)
    np.savez(path, weight_0=rng.normal(size=(4, 3)), weight_1=rng.normal(size=(2, 4)),
             activation=np.array("tanh"), notes=np.array("ignored"))
    net = load(path)
    assert net.activations == ["tanh"] and net.dims == [3, 4, 2]


@pytest.mark.parametrize("arrays, message", [
    ({"weight_0": np.full((2, 2), np.nan)}, "NaN"),
    ({"weight_0": np.ones((3, 2)), "weight_1": np.ones((2, 4)), "activation": np.array(["relu"])}, "shape mismatch"),
    ({"weight_0": np.ones((2, 2)), "weight_1": np.ones((2, 2)), "activation": np.array(["swish"])},
     "unknown activation"),
    ({"weight_0": np.ones((2, 2)), "bias_0": np.ones(3)}, "bias_0"),
    ({"bias_0": np.ones(3)}, "weight_0"),
    ({"weight_0": np.array([["a", "b"]])}, "not numeric"),
])
def test_bad_files_raise_one_line_errors(tmp_path, arrays, message) -> None:
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(MechestError, match=message) as raised:
        load(path)
    assert "\n" not in str(raised.value)


def test_missing_and_unreadable_files(tmp_path) -> None:
    with pytest.raises(MechestError, match="no such file"):
        load(tmp_path / "absent.npz")
    (tmp_path / "junk.npz").write_text("not an archive")
    with pytest.raises(MechestError, match="not a valid"):
        load(tmp_path / "junk.npz")


def test_he_variances_match_design_values() -> None:
    expected = {"relu": 2.0, "heaviside": 2.0, "gelu": 2.351715614073372, "tanh": 2.536175433175718,
                "sigmoid": 3.40856, "sgn": 1.0, "square": 1 / 3, "cube": 1 / 15}
    for name, value in expected.items():
        assert he_weight_variances([name], [0.0])[1] == pytest.approx(value, rel=1e-5), name


def test_he_variance_uses_bias_mean_as_the_golden_biased_relu_net() -> None:
    # goldens README: biased ReLU net with bias mean 0.1 uses w_var = 1 / E[relu(Z + 0.1)^2] = 1.70963...
    assert he_weight_variances(["relu"], [0.1])[1] == pytest.approx(1.7096315002483509, rel=1e-12)


def test_he_init_gives_unit_first_layer_variance_and_right_weight_scale() -> None:
    width = 256
    net = random_mlp(width, 2, "relu", seed=0)
    # sample variance of n² Gaussian entries has relative standard error sqrt(2 / n²) ≈ 0.0055; allow 5 of them
    for weight, w_var in zip(net.weights, [1.0, 2.0, 2.0]):
        assert float(weight.var()) * width == pytest.approx(w_var, rel=5 * math.sqrt(2 / width**2))
    # the first pre-activations z_i = W_0[i] · x have variance ‖W_0[i]‖², on average 1 across neurons
    row_variances = net.weights[0].pow(2).sum(dim=1)
    assert float(row_variances.mean()) == pytest.approx(1.0, rel=5 * math.sqrt(2 / width**2))


def test_critical_init_values() -> None:
    assert critical_variances("relu", 1.0)[0] == pytest.approx(2.0, rel=1e-12)
    weight_var, bias_var = critical_variances("tanh", 0.0259)
    assert weight_var == pytest.approx(1.05, abs=0.01) and bias_var == pytest.approx(2e-5, abs=1e-5)
    net = random_mlp(8, 3, "tanh", init="critical", q_star=1.0, seed=0)
    assert all(b is not None for b in net.biases)


def test_invalid_construction_arguments() -> None:
    with pytest.raises(MechestError, match="unknown activation"):
        random_mlp(4, 2, "swish")
    with pytest.raises(MechestError, match="activations"):
        random_mlp(4, 2, ["relu"] * 5)
    with pytest.raises(MechestError, match="critical init"):
        random_mlp(4, 1, "heaviside", init="critical")
    with pytest.raises(MechestError, match="width"):
        random_mlp(0, 2)
    with pytest.raises(MechestError, match="weight_var"):
        random_mlp(4, 2, init="manual")


@pytest.mark.parametrize("method", ["kprop", "mc"])
def test_estimate_revalidates_a_network_changed_after_it_was_made(method: str) -> None:
    """An MLP is a mutable dataclass: a weight set to NaN in place, or an activation list grown, after the network
    was built still gets its one-line error from ``estimate`` (which re-validates it through ``MLP.to``), not a
    non-finite estimate or an AttributeError."""
    options = {"samples": 10} if method == "mc" else {}
    net = random_mlp(4, 2, "relu", seed=0)
    net.weights[0][0, 0] = float("nan")
    with pytest.raises(MechestError, match="weight_0 contains NaN"):
        estimate(net, method, **options)
    net = random_mlp(4, 2, "relu", seed=0)
    net.activations.append("relu")
    with pytest.raises(MechestError, match="activations for 2 hidden layers"):
        estimate(net, method, **options)
