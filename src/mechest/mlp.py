"""Multilayer perceptrons: the networks whose expected output mechest estimates.

Convention (docs/method.md §1.1): an MLP has L linear maps and L - 1 hidden layers,

    z_0 = W_0 x + b_0,   a_l = φ_l(z_l),   z_{l+1} = W_{l+1} a_l + b_{l+1},

and its output is z_{L-1} (no activation on it). W_l has shape (out, in), as ``nn.Linear.weight``.
The input is x ~ N(0, I).
"""

from __future__ import annotations

import hashlib
import math
import re
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mechest.errors import MechestError
from mechest.files import write_npz_atomically
from mechest.limits import check_network_memory, is_finite
from mechest.math.wick import ACTIVATION_NAMES, activation_function, second_moment

_TORCH_MODULE_NAMES: dict[type[nn.Module], str] = {
    nn.ReLU: "relu",
    nn.Tanh: "tanh",
    nn.Sigmoid: "sigmoid",
}


class Activation(nn.Module):
    """An elementwise activation by mechest name, for activations torch has no module for."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = check_activation(name)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return activation_function(self.name)(x)

    def extra_repr(self) -> str:
        return self.name


def check_activation(name: str) -> str:
    """Return ``name`` if it is a supported activation, else raise a one-line MechestError."""
    if name not in ACTIVATION_NAMES:
        raise MechestError(f"unknown activation {name!r}; expected one of {', '.join(ACTIVATION_NAMES)}")
    return name


@dataclass
class MLP:
    """A fully connected network: weights[l] (out_l × in_l), optional biases[l], activations[l] per hidden layer."""

    weights: list[torch.Tensor]
    biases: list[torch.Tensor | None]
    activations: list[str]

    def __post_init__(self) -> None:
        validate(self.weights, self.biases, self.activations)

    @property
    def depth(self) -> int:
        """Number of hidden layers (= number of linear maps - 1)."""
        return len(self.weights) - 1

    @property
    def input_dim(self) -> int:
        return self.weights[0].shape[1]

    @property
    def output_dim(self) -> int:
        return self.weights[-1].shape[0]

    @property
    def dims(self) -> list[int]:
        """Widths of every layer, input first: [in, hidden_1, ..., out]."""
        return [self.input_dim] + [w.shape[0] for w in self.weights]

    @property
    def dtype(self) -> torch.dtype:
        return self.weights[0].dtype

    @property
    def device(self) -> torch.device:
        return self.weights[0].device

    def to(self, dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> MLP:
        """A copy with every array converted to ``dtype`` and moved to ``device``."""
        return MLP(
            [converted(w, f"weight_{layer}", dtype, device) for layer, w in enumerate(self.weights)],
            [None if b is None else converted(b, f"bias_{layer}", dtype, device)
             for layer, b in enumerate(self.biases)],
            list(self.activations),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Output z_{L-1} for a batch of inputs x of shape (batch, input_dim)."""
        return self.forward_layers(x)[-1]

    __call__ = forward

    def forward_layers(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Every activation a_0..a_{L-2}, then the output z_{L-1}, for inputs x of shape (batch, in)."""
        outputs = []
        h = x
        for layer, weight in enumerate(self.weights):
            h = h @ weight.T
            if self.biases[layer] is not None:
                h = h + self.biases[layer]
            if layer < self.depth:
                h = activation_function(self.activations[layer])(h)
            outputs.append(h)
        return outputs

    def flops_per_sample(self) -> int:
        """FLOPs per sample (docs/method.md §9): 2·in·out per linear map, +out per bias, +1 per activation entry."""
        linear = sum(2 * w.shape[0] * w.shape[1] for w in self.weights)
        bias = sum(b.numel() for b in self.biases if b is not None)
        nonlinear = sum(w.shape[0] for w in self.weights[:-1])
        return linear + bias + nonlinear

    def to_sequential(self) -> nn.Sequential:
        """An equivalent ``nn.Sequential`` of ``nn.Linear`` and activation modules."""
        modules: list[nn.Module] = []
        for layer, weight in enumerate(self.weights):
            linear = nn.Linear(weight.shape[1], weight.shape[0], bias=self.biases[layer] is not None)
            linear = linear.to(dtype=weight.dtype, device=weight.device)
            with torch.no_grad():
                linear.weight.copy_(weight)
                if self.biases[layer] is not None:
                    linear.bias.copy_(self.biases[layer])
            modules.append(linear)
            if layer < self.depth:
                modules.append(Activation(self.activations[layer]))
        return nn.Sequential(*modules)

    def fingerprint(self) -> str:
        """SHA-256 of the activations and the float64 values of every weight and bias (a cache key)."""
        digest = hashlib.sha256(",".join(self.activations).encode())
        for layer, weight in enumerate(self.weights):
            digest.update(f"weight_{layer}".encode())
            digest.update(weight.detach().cpu().to(torch.float64).contiguous().numpy().tobytes())
            if self.biases[layer] is not None:
                digest.update(f"bias_{layer}".encode())
                digest.update(self.biases[layer].detach().cpu().to(torch.float64).contiguous().numpy().tobytes())
        return digest.hexdigest()

    def save(self, path: str | Path) -> None:
        """Write the network as an .npz file (format in README.md); written atomically."""
        arrays: dict[str, np.ndarray] = {}
        for layer, weight in enumerate(self.weights):
            arrays[f"weight_{layer}"] = weight.detach().cpu().numpy()
            if self.biases[layer] is not None:
                arrays[f"bias_{layer}"] = self.biases[layer].detach().cpu().numpy()
        arrays["activation"] = np.array(self.activations, dtype=str)
        write_npz_atomically(path, arrays)


def validate(
    weights: Sequence[torch.Tensor], biases: Sequence[torch.Tensor | None], activations: Sequence[str]
) -> None:
    """Raise a one-line MechestError unless the arrays describe a well-formed finite MLP."""
    if len(weights) == 0:
        raise MechestError("a network needs at least one weight matrix")
    if len(biases) != len(weights):
        raise MechestError(f"got {len(biases)} bias entries for {len(weights)} weight matrices")
    if len(activations) != len(weights) - 1:
        raise MechestError(f"got {len(activations)} activations for {len(weights) - 1} hidden layers")
    for name in activations:
        check_activation(name)
    for layer, weight in enumerate(weights):
        if weight.ndim != 2:
            raise MechestError(f"weight_{layer} must be a matrix, got shape {tuple(weight.shape)}")
        if layer > 0 and weight.shape[1] != weights[layer - 1].shape[0]:
            raise MechestError(
                f"shape mismatch: weight_{layer} has {weight.shape[1]} inputs "
                f"but weight_{layer - 1} has {weights[layer - 1].shape[0]} outputs"
            )
        if not is_finite(weight):
            raise MechestError(f"weight_{layer} contains NaN or infinite values")
        bias = biases[layer]
        if bias is not None:
            if tuple(bias.shape) != (weight.shape[0],):
                raise MechestError(f"bias_{layer} has shape {tuple(bias.shape)}, expected ({weight.shape[0]},)")
            if not is_finite(bias):
                raise MechestError(f"bias_{layer} contains NaN or infinite values")


def converted(tensor: torch.Tensor, name: str, dtype: torch.dtype | None = None,
              device: torch.device | str | None = None) -> torch.Tensor:
    """``tensor`` in ``dtype`` on ``device``; a MechestError if a finite entry is too large for a narrower
    floating-point ``dtype`` (it would become infinite)."""
    if (dtype is not None and dtype.is_floating_point and tensor.is_floating_point() and tensor.numel()
            and torch.finfo(dtype).max < torch.finfo(tensor.dtype).max):
        largest = float(tensor.detach().abs().max())
        if torch.finfo(dtype).max < largest < math.inf:
            raise MechestError(f"{name} overflows {str(dtype).removeprefix('torch.')}: its largest entry {largest:.3g} "
                               f"is above {torch.finfo(dtype).max:.3g}; use float64")
    return tensor.to(device=device, dtype=dtype)


MAX_SEED = 2**63


def check_seed(seed: int) -> int:
    """Return ``seed`` if it is a whole number in [0, 2^63), else raise a one-line MechestError."""
    if not isinstance(seed, int) or not 0 <= seed < MAX_SEED:
        raise MechestError(f"a seed must be a whole number from 0 to 2^63 - 1, got {seed}")
    return seed


def per_layer(value: float | Sequence[float], count: int, what: str) -> list[float]:
    """Broadcast a scalar to ``count`` layers, or check that a sequence has ``count`` entries."""
    if isinstance(value, (int, float)):
        return [float(value)] * count
    values = [float(v) for v in value]
    if len(values) != count:
        raise MechestError(f"{what} needs {count} entries (one per linear layer), got {len(values)}")
    return values


def per_hidden_layer(activation: str | Sequence[str], depth: int) -> list[str]:
    """Broadcast one activation name to every hidden layer, or check a list of them (a list one too long drops its
    last)."""
    if isinstance(activation, str):
        return [check_activation(activation)] * depth
    names = list(activation)
    if len(names) == depth + 1:
        names = names[:-1]
    if len(names) != depth:
        raise MechestError(f"got {len(names)} activations for {depth} hidden layers")
    return [check_activation(name) for name in names]


def he_weight_variances(activations: Sequence[str], bias_means: Sequence[float]) -> list[float]:
    """He init (docs/method.md §1.1): w_var_0 = 1, w_var_l = 1 / E[φ_{l-1}(Z + b_mean_{l-1})²], Z ~ N(0, 1)."""
    variances = [1.0]
    for layer, name in enumerate(activations):
        moment = second_moment(name, bias_means[layer])
        if not moment > 0:
            raise MechestError(f"He init is undefined for {name}: E[φ(Z)²] = {moment}")
        variances.append(1.0 / moment)
    return variances


def critical_variances(activation: str, q_star: float, quadrature_nodes: int = 100) -> tuple[float, float]:
    """Critical init at fixed point q* (Pennington et al.): (σ_w², σ_b²).

    σ_w² = 1 / E[φ'(√q* Z)²] and σ_b² = q* - σ_w² E[φ(√q* Z)²], expectations by Gauss–Hermite.
    """
    nodes, weights = np.polynomial.hermite.hermgauss(quadrature_nodes)
    z = torch.tensor(math.sqrt(2.0 * q_star) * nodes, dtype=torch.float64, requires_grad=True)
    values = activation_function(activation)(z)
    # piecewise-constant activations (heaviside, sgn) have φ' = 0 almost everywhere and no autograd graph
    slope = torch.autograd.grad(values.sum(), z)[0] if values.requires_grad else torch.zeros_like(z)
    w = torch.tensor(weights / math.sqrt(math.pi), dtype=torch.float64)
    slope_moment = float((w * slope.detach() ** 2).sum())
    if not slope_moment > 0:
        raise MechestError(f"critical init is undefined for {activation}: E[φ'(Z)²] = 0")
    weight_var = 1.0 / slope_moment
    bias_var = q_star - weight_var * float((w * values.detach() ** 2).sum())
    if bias_var < -1e-6:
        raise MechestError(f"critical init has no solution for {activation} at q*={q_star}: σ_b² = {bias_var:.3g} < 0")
    return weight_var, max(bias_var, 0.0)


def random_mlp(
    width: int,
    depth: int,
    activation: str | Sequence[str] = "relu",
    *,
    input_dim: int | None = None,
    output_dim: int | None = None,
    init: str = "he",
    weight_var: float | Sequence[float] | None = None,
    bias_mean: float | Sequence[float] = 0.0,
    bias_var: float | Sequence[float] = 0.0,
    q_star: float = 1.0,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
) -> MLP:
    """A random MLP with ``depth`` hidden layers of size ``width``; W_l[i, j] ~ N(0, w_var_l / fan_in).

    ``init``: "he" (default; docs/method.md §1.1), "critical" (q*; needs one activation for every layer), or "manual"
    (``weight_var`` given per linear layer or as a scalar). A layer has a bias iff its bias variance is
    positive or its bias mean is nonzero; the bias is then N(bias_mean, bias_var) per entry.
    Reproducible: the same arguments give the same network.
    """
    if width < 1 or depth < 0:
        raise MechestError(f"width must be >= 1 and depth >= 0, got width={width}, depth={depth}")
    check_seed(seed)
    names = per_hidden_layer(activation, depth)

    def dims_of(hidden_width: int) -> list[int]:
        return [input_dim or hidden_width] + [hidden_width] * depth + [output_dim or hidden_width]

    check_network_memory(dims_of, width)  # drawn in float64
    dims = dims_of(width)
    count = depth + 1
    means = per_layer(bias_mean, count, "bias_mean")
    variances_b = per_layer(bias_var, count, "bias_var")
    if any(v < 0 for v in variances_b):
        raise MechestError("bias_var must be non-negative")
    if init == "he":
        variances_w = he_weight_variances(names, means)
    elif init == "critical":
        if len(set(names)) > 1:
            raise MechestError("critical init needs the same activation in every hidden layer")
        sigma_w2, sigma_b2 = critical_variances(names[0] if names else "identity", q_star)
        variances_w = [q_star - sigma_b2] + [sigma_w2] * depth
        variances_b = [sigma_b2] * count
    elif init == "manual":
        if weight_var is None:
            raise MechestError("init='manual' needs weight_var")
        variances_w = per_layer(weight_var, count, "weight_var")
    else:
        raise MechestError(f"unknown init {init!r}; expected he, critical or manual")
    if weight_var is not None and init != "manual":
        raise MechestError("weight_var is only used with init='manual'")
    if any(v < 0 for v in variances_w):
        raise MechestError("weight variances must be non-negative")
    generator = torch.Generator().manual_seed(seed)
    weights, biases = [], []
    for layer in range(count):
        fan_in, fan_out = dims[layer], dims[layer + 1]
        scale = math.sqrt(variances_w[layer] / fan_in)
        weights.append(torch.randn(fan_out, fan_in, generator=generator, dtype=torch.float64).mul_(scale).to(dtype))
        if variances_b[layer] > 0 or means[layer] != 0:
            noise = torch.randn(fan_out, generator=generator, dtype=torch.float64)
            biases.append((means[layer] + math.sqrt(variances_b[layer]) * noise).to(dtype))
        else:
            biases.append(None)
    return MLP(weights, biases, names)


NO_OP_MODULES = (nn.Identity, nn.Dropout, nn.AlphaDropout, nn.FeatureAlphaDropout, nn.Dropout1d)
"""Modules that are the identity in eval mode: ``from_sequential`` skips them."""


def supported_modules() -> str:
    """What ``from_sequential`` reads, for error messages."""
    torch_names = ", ".join(f"nn.{module.__name__}" for module in (*_TORCH_MODULE_NAMES, nn.GELU))
    return (f"nn.Linear layers with one elementwise activation between two of them ({torch_names}, or "
            f"mechest.Activation(name) for {', '.join(ACTIVATION_NAMES)}); nn.Identity and nn.Dropout are skipped")


def sequential_modules(model: nn.Module) -> list[nn.Module]:
    """The modules of an ``nn.Sequential``, nested ones expanded in order."""
    if not isinstance(model, nn.Sequential):
        raise MechestError(f"expected an nn.Sequential, got {type(model).__name__}")
    return [leaf for module in model
            for leaf in (sequential_modules(module) if isinstance(module, nn.Sequential) else [module])]


def from_sequential(model: nn.Sequential) -> MLP:
    """Read an ``nn.Sequential`` of ``nn.Linear`` layers with supported activations between them, as evaluated
    (eval mode: ``nn.Dropout`` and ``nn.Identity`` are skipped; nested ``nn.Sequential`` are expanded).

    Two linear layers in a row get the identity activation between them; the last module must be linear.
    """
    weights: list[torch.Tensor] = []
    biases: list[torch.Tensor | None] = []
    activations: list[str] = []
    pending: str | None = None
    for module in sequential_modules(model):
        if isinstance(module, NO_OP_MODULES):
            continue
        if isinstance(module, nn.Linear):
            if weights:
                activations.append(pending or "identity")
            pending = None
            weights.append(module.weight.detach().clone())
            biases.append(None if module.bias is None else module.bias.detach().clone())
            continue
        name = module_activation_name(module)
        if not weights:
            raise MechestError(f"{type(module).__name__} comes before the first nn.Linear; mechest's input x goes "
                               "into a linear layer first")
        if pending is not None:
            raise MechestError(f"two activations in a row ({pending}, then {name}); mechest reads one activation "
                               "between two nn.Linear layers")
        pending = name
    if not weights:
        raise MechestError(f"the model has no nn.Linear layer; mechest reads {supported_modules()}")
    if pending is not None:
        raise MechestError("the last module must be nn.Linear (mechest's output has no activation)")
    return MLP(weights, biases, activations)


def module_activation_name(module: nn.Module) -> str:
    """The mechest name of a torch activation module, or a MechestError for unsupported ones."""
    if isinstance(module, Activation):
        return module.name
    if isinstance(module, nn.GELU):
        if module.approximate != "none":
            raise MechestError("only the exact (erf) GELU is supported, not approximate='tanh'")
        return "gelu"
    for module_type, name in _TORCH_MODULE_NAMES.items():
        if isinstance(module, module_type):
            return name
    raise MechestError(f"unsupported module {type(module).__name__}; mechest reads {supported_modules()}")


def load(path: str | Path, dtype: torch.dtype = torch.float64) -> MLP:
    """Read an .npz network file: weight_0..weight_L (out × in), optional bias_l, and activation."""
    path = Path(path)
    if not path.is_file():
        raise MechestError(f"cannot read {path}: no such file")
    arrays = read_npz(path)
    count = 0
    while f"weight_{count}" in arrays:
        count += 1
    if count == 0:
        raise MechestError(f"{path} has no weight_0 array")
    check_layer_numbers(path, arrays, count)
    weights = [numeric_tensor(arrays[f"weight_{layer}"], f"weight_{layer}", dtype) for layer in range(count)]
    biases = [
        numeric_tensor(arrays[f"bias_{layer}"], f"bias_{layer}", dtype) if f"bias_{layer}" in arrays else None
        for layer in range(count)
    ]
    activation = arrays.get("activation", np.array("relu"))
    names = [str(activation)] * (count - 1) if activation.ndim == 0 else [str(a) for a in activation]
    if len(names) != count - 1:
        raise MechestError(f"{path} has {len(names)} activation names for {count - 1} hidden layers")
    return MLP(weights, biases, per_hidden_layer(names, count - 1))


def check_layer_numbers(path: Path, arrays: dict[str, np.ndarray], count: int) -> None:
    """A MechestError if ``arrays`` holds a weight_N or bias_N beyond the ``count`` layers weight_0..weight_{count-1}
    (a gap in the numbering would silently drop every layer after it)."""
    beyond = sorted((match[1] != "weight", int(match[2]), match[0]) for key in arrays
                    if (match := re.fullmatch(r"(weight|bias)_(\d+)", key)) and int(match[2]) >= count)
    if beyond:
        raise MechestError(f"{path} has {beyond[0][2]} but no weight_{count}: layers must be numbered 0, 1, 2, ... "
                           "without gaps")


ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")  # a zip archive's first entry, or an empty archive
NPY_MAGIC = b"\x93NUMPY"


def read_npz(path: Path) -> dict[str, np.ndarray]:
    """Every array of an .npz file, or a one-line MechestError if it is not a readable .npz archive of plain
    (numeric or text) arrays. Files are never unpickled."""
    try:
        with open(path, "rb") as handle:
            start = handle.read(len(NPY_MAGIC))
    except OSError as error:
        raise MechestError(f"cannot read {path}: {error.strerror or error}") from None
    if start.startswith(NPY_MAGIC):
        raise MechestError(f"cannot read {path}: it is a single .npy array, not an .npz archive of named arrays")
    if not start.startswith(ZIP_MAGICS):
        raise MechestError(f"cannot read {path}: not a valid .npz file (an .npz file is a zip archive of .npy arrays; "
                           "this one is not a zip archive)")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {}
            for key in data.files:
                try:
                    arrays[key] = data[key]
                except ValueError as error:
                    if "pickle" not in str(error):
                        raise
                    raise MechestError(f"cannot read {path}: its array {key!r} holds Python objects, not numbers "
                                       "or text") from None
    except MechestError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        raise MechestError(f"cannot read {path}: not a valid .npz file ({error})") from None
    for key, value in arrays.items():
        if not isinstance(value, np.ndarray):  # a member that is not .npy data comes back as bytes
            raise MechestError(f"cannot read {path}: not a valid .npz file ({key} is not an array)")
    return arrays


def numeric_tensor(array: np.ndarray, name: str, dtype: torch.dtype) -> torch.Tensor:
    """Convert a numeric array from a file to a tensor, with a clear error for non-numeric data."""
    if not np.issubdtype(array.dtype, np.number):
        raise MechestError(f"{name} is not numeric (dtype {array.dtype})")
    if np.issubdtype(array.dtype, np.complexfloating):  # casting would drop the imaginary parts
        raise MechestError(f"{name} is complex (dtype {array.dtype}); weights and biases must be real")
    return converted(torch.from_numpy(np.asarray(array, dtype=np.float64)), name, dtype)
