"""Fuzzing the command line in-process: malformed and extreme .npz files and option combinations, generated from a
fixed seed. Every run either succeeds with finite output or exits with code 2 and one line on stderr; never a
traceback, and never a partial file in the output folder."""

from __future__ import annotations

import json
import math
import random
import re
import signal
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from mechest.cli import main
from mechest.errors import MechestError
from mechest.estimators.truth import compute_truth
from mechest.integrations.whestbench.export import FILES as PACKAGE_FILES
from mechest.math.wick import ACTIVATION_NAMES
from mechest.mlp import load

SEED = 16
Writer = Callable[[Path], None]


@dataclass(frozen=True)
class Case:
    """A command line; ``files`` writes its inputs (by name, into the input folder); ``outputs`` are the files it
    writes into the output folder when it succeeds."""

    argv: tuple[str, ...]
    files: dict[str, Writer] = field(default_factory=dict)
    outputs: tuple[str, ...] = ()
    seconds: float = 20.0


# ---- network files --------------------------------------------------------------------------------------------


def random_arrays(rng: random.Random) -> dict[str, np.ndarray]:
    """A valid network of odd shapes: input, hidden widths and output all drawn independently, maybe biases."""
    depth = rng.randint(0, 3)
    dims = [rng.randint(1, 5) for _ in range(depth + 2)]
    generator = np.random.default_rng(rng.randrange(2**32))
    arrays = {f"weight_{layer}": generator.normal(0, 1 / math.sqrt(dims[layer]), (dims[layer + 1], dims[layer]))
              for layer in range(depth + 1)}
    for layer in range(depth + 1):
        if rng.random() < 0.3:
            arrays[f"bias_{layer}"] = generator.normal(0, 0.3, dims[layer + 1])
    if depth:
        names = [rng.choice(ACTIVATION_NAMES) for _ in range(depth)]
        arrays["activation"] = np.array(names[0] if rng.random() < 0.3 else names)
    return arrays


def savez(arrays: dict[str, np.ndarray]) -> Writer:
    def write(path: Path) -> None:
        with open(path, "wb") as handle:
            np.savez(handle, **arrays)
    return write


def raw(data: bytes) -> Writer:
    return lambda path: path.write_bytes(data)


def truncated(arrays: dict[str, np.ndarray]) -> Writer:
    def write(path: Path) -> None:
        savez(arrays)(path)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    return write


def zip_of_text(path: Path) -> None:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("weight_0.npy", "not an array")


def npy(path: Path) -> None:
    with open(path, "wb") as handle:
        np.save(handle, np.ones((2, 2)))


def with_object_array(arrays: dict[str, np.ndarray]) -> Writer:
    def write(path: Path) -> None:
        with open(path, "wb") as handle:
            np.savez(handle, **{**arrays, "weight_0": np.array([[1.0, "a"]], dtype=object)})
    return write


# How each malformation changes a valid network's arrays; (name, function(arrays, rng) -> arrays or a Writer).
def pick_weight(arrays: dict, rng: random.Random) -> str:
    return rng.choice(sorted(key for key in arrays if key.startswith("weight_")))


def scaled(factor: float):
    def apply(arrays, rng):
        key = pick_weight(arrays, rng)
        return {**arrays, key: arrays[key] * factor}
    return apply


def poisoned(value: float):
    def apply(arrays, rng):
        key = rng.choice(sorted(key for key in arrays if key != "activation"))
        array = arrays[key].copy()
        array.flat[rng.randrange(array.size)] = value
        return {**arrays, key: array}
    return apply


def reshaped(shape_of: Callable[[np.ndarray], tuple]):
    def apply(arrays, rng):
        key = pick_weight(arrays, rng)
        return {**arrays, key: np.zeros(shape_of(arrays[key]))}
    return apply


def retyped(dtype):
    def apply(arrays, rng):
        key = pick_weight(arrays, rng)
        return {**arrays, key: arrays[key].astype(dtype)}
    return apply


def dropped(arrays, rng):
    key = pick_weight(arrays, rng)
    return {name: value for name, value in arrays.items() if name != key}


def extra(arrays, rng):
    return {**arrays, "notes": np.array("hello"), "weight_x": np.ones(3), "bias_99": np.ones(2)}


def activation_as(value):
    return lambda arrays, rng: {**arrays, "activation": value}


def bias_of_length(length: int):
    def apply(arrays, rng):
        return {**arrays, "bias_0": np.ones(length)}
    return apply


MALFORMATIONS: list[tuple[str, Callable]] = [
    ("valid", lambda arrays, rng: arrays),
    ("valid", lambda arrays, rng: arrays),
    ("times 1e200", scaled(1e200)),
    ("times 1e150", scaled(1e150)),
    ("times 1e-200", scaled(1e-200)),
    ("times 0", scaled(0.0)),
    ("a NaN", poisoned(float("nan"))),
    ("an inf", poisoned(float("inf"))),
    ("a -inf", poisoned(-float("inf"))),
    ("a 1e300", poisoned(1e300)),
    ("0 rows", reshaped(lambda w: (0, w.shape[1]))),
    ("0 columns", reshaped(lambda w: (w.shape[0], 0))),
    ("0-dim", reshaped(lambda w: ())),
    ("1-dim", reshaped(lambda w: (w.size,))),
    ("3-dim", reshaped(lambda w: (1, *w.shape))),
    ("int weights", retyped(np.int64)),
    ("bool weights", retyped(bool)),
    ("float16 weights", retyped(np.float16)),
    ("complex weights", retyped(np.complex128)),
    ("string weights", retyped(str)),
    ("a weight missing", dropped),
    ("extra keys", extra),
    ("unknown activation", activation_as(np.array("swish"))),
    ("numeric activation", activation_as(np.array([1.5, 2.5]))),
    ("empty activation list", activation_as(np.array([], dtype=str))),
    ("2-d activation", activation_as(np.array([["relu"]]))),
    ("too many activations", activation_as(np.array(["relu"] * 7))),
    ("long bias", bias_of_length(9)),
    ("empty bias", bias_of_length(0)),
]
RAW_FILES: list[tuple[str, Callable[[dict], Writer]]] = [
    ("text file", lambda arrays: raw(b"weight_0 = [[1, 2]]\n")),
    ("empty file", lambda arrays: raw(b"")),
    ("random bytes", lambda arrays: raw(random.Random(1).randbytes(300))),
    ("truncated zip", truncated),
    ("zip of text", lambda arrays: zip_of_text),
    (".npy content", lambda arrays: npy),
    ("object array", with_object_array),
]


def network_command(rng: random.Random, net: str, depth: int) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """A random command that reads the network file ``net`` (argv, outputs)."""
    kind = rng.choice(["kprop", "kprop", "mc", "tail", "tail", "truth", "distill"])
    if kind == "kprop":
        order = rng.randint(1, 4)
        variant = rng.choice(["simple", "augment"] + (["isotropic"] if order == 1 else []))
        factored = ["--factored"] if order >= 3 and variant == "simple" and rng.random() < 0.5 else []
        return ("estimate", "--weights", net, "--order", str(order), "--variant", variant, *factored, "--json"), ()
    if kind == "mc":
        return ("estimate", "--weights", net, "--method", "mc", "--samples", str(rng.randint(1, 300)), "--json"), ()
    if kind == "tail":
        method = rng.choice(["kprop", "edgeworth", "saddlepoint", "mc"])
        samples = ("--samples", "200") if method == "mc" else ()
        return ("tail", "--weights", net, "--layer", str(rng.randint(1, depth + 1)), "--threshold",
                str(rng.choice([0.0, 1.5, -2.0])), "--method", method, *samples, "--json"), ()
    if kind == "truth":
        return ("truth", "--weights", net, "--samples", str(rng.randint(1, 500)), "--workers", "0",
                "--out", "OUT/truth.npz"), ("truth.npz",)
    return ("distill", "--teacher", net, "--student-width", "3", "--steps", "2", "--log-every", "1",
            "--test-samples", "64", "--no-baseline", "--out", "OUT/student.npz", "--json", "OUT/log.json"), \
        ("student.npz", "log.json")


def network_file_cases(rng: random.Random, count: int) -> Iterator[tuple[str, Case]]:
    for index in range(count):
        arrays = random_arrays(rng)
        depth = sum(key.startswith("weight_") for key in arrays) - 1
        if rng.random() < 0.15:
            label, make = rng.choice(RAW_FILES)
            writer = make(arrays)
        else:
            label, malform = rng.choice(MALFORMATIONS)
            writer = savez(malform(arrays, rng))
        argv, outputs = network_command(rng, "IN/net.npz", depth)
        yield (f"file{index}-{label}-{argv[0]}",
               Case(argv, {"net.npz": writer}, outputs))


# ---- options --------------------------------------------------------------------------------------------------

def truth_of_net(path: Path) -> None:
    """A 1000-sample truth of the network next to it (IN/net.npz, written first)."""
    compute_truth(load(path.with_name("net.npz")), 1000, path, seed=9)


# (valid, invalid) values per kind of option; each option is drawn valid nine times in ten
COUNTS = (["1", "7", "1e2"], ["0", "-3", "2.5", "nan", "inf", "lots"])
REALS = (["0", "-2", "0.5", "1e-3"], ["nan", "inf", "-inf", "1e300", "x"])
SEEDS = (["0", "5", str(2**63 - 1)], ["-1", str(2**63), "1.5"])


def option_cases(rng: random.Random, count: int, net: Writer) -> Iterator[tuple[str, Case]]:
    """Option combinations around a valid 4→5→3→2 network with biases (IN/net.npz)."""
    def pick(good: list[str], bad: list[str]) -> str:
        return rng.choice(good if rng.random() < 0.9 else bad)

    def flag(name: str) -> list[str]:
        return [name] if rng.random() < 0.3 else []

    for index in range(count):
        kind = rng.choice(["net", "estimate", "estimate-random", "tail", "truth", "score", "distill", "export",
                           "results", "demo"])
        outputs: tuple[str, ...] = ()
        if kind == "net":
            argv = ("net", "--width", pick(["1", "3"], ["0", "-2"]), "--depth", pick(["0", "1", "2"], ["-1"]),
                    "--activation", pick(["relu", "tanh", "cube", "heaviside"], ["swish", ""]),
                    "--init", pick(["he", "critical"], ["xavier"]), "--bias-mean", pick(*REALS),
                    "--bias-var", pick(["0", "0.5"], ["-1", "nan", "inf"]), "--seed", pick(*SEEDS),
                    "--out", pick(["OUT/net.npz"], ["OUT", "OUT/missing/net.npz"]))
            outputs = ("net.npz",)
        elif kind in ("estimate", "estimate-random"):
            network = ("--weights", "IN/net.npz") if kind == "estimate" else (
                "--width", pick(["3", "1"], ["0", "-1"]), "--depth", pick(["0", "2"], ["-4"]),
                "--activation", pick(list(ACTIVATION_NAMES), ["bogus"]))
            method = pick(["kprop", "mc"], ["exact"])
            samples = ("--samples", pick(*COUNTS)) if method == "mc" or rng.random() < 0.2 else ()
            argv = ("estimate", *network, "--method", method, "--order", pick(["1", "2", "3", "4"], ["0", "5"]),
                    "--variant", pick(["simple", "augment", "isotropic"], ["fancy"]), *flag("--factored"),
                    *samples, "--seed", pick(*SEEDS), "--dtype", pick(["float32", "float64"], ["float16"]), "--json")
        elif kind == "tail":
            method = pick(["kprop", "lpe", "edgeworth", "saddlepoint", "mc"], ["magic"])
            samples = ("--samples", pick(*COUNTS)) if method == "mc" else ()
            argv = ("tail", "--weights", "IN/net.npz", "--layer", pick(["1", "2", "3"], ["0", "-1", "4", "x"]),
                    "--threshold", pick(*REALS), "--method", method, "--order", pick(["1", "2", "3"], ["9"]),
                    *samples, *flag("--lower"), *flag("--factored"), "--json")
        elif kind == "truth":
            argv = ("truth", "--weights", "IN/net.npz", "--samples", pick(*COUNTS), "--seed", pick(*SEEDS),
                    "--chunk-size", pick(["1", "7", "64"], ["0", "-1", "x"]),
                    "--dtype", pick(["float32", "float64"], ["int8"]), "--workers", pick(["0"], ["-1"]),
                    "--out", pick(["OUT/truth.npz"], ["OUT", "OUT/x/truth.npz"]))
            outputs = ("truth.npz",)
        elif kind == "score":
            method = pick(["kprop", "mc"], ["guess"])
            samples = ("--samples", pick(*COUNTS)) if method == "mc" else ()
            argv = ("score", "--weights", "IN/net.npz", "--truth", pick(["IN/truth.npz"], ["IN/net.npz", "IN/x.npz"]),
                    "--method", method, *samples, "--json")
        elif kind == "distill":
            argv = ("distill", "--teacher", "IN/net.npz", "--student-width", pick(["2", "3"], ["0", "-1"]),
                    "--steps", pick(["1", "2"], ["0", "-2"]), "--order", pick(["2", "3"], ["1", "5"]),
                    "--method", pick(["kprop", "mehler"], ["sgd"]), "--lr", pick(["1e-2", "0.1"], REALS[1]),
                    "--log-every", pick(["1"], ["0"]), "--test-samples", pick(["16", "64"], COUNTS[1]),
                    "--batch-size", pick(["4"], ["0"]), *flag("--no-baseline"),
                    "--out", "OUT/student.npz", "--plot", pick(["OUT/loss.png", "OUT/loss.pdf"], ["OUT/loss.bogus",
                                                                                             "OUT"]))
            outputs = ("student.npz", "loss.png", "loss.pdf")
        elif kind == "export":
            argv = ("whestbench", "export", "--order", pick(["1", "2", "3"], ["0", "4"]),
                    "--budget-fraction", pick(["1", "0.5"], ["0", "2", "nan"]),
                    "--min-window", pick(["0", "2"], ["-1"]),
                    *flag("--no-augment"), "--compress", pick(["6,0.25,1", "none"], ["0,0.25,1", "4,2,1", "x"]),
                    "--strassen", pick(["0", "2"], ["-1", "9"]), "--thin", pick(["16,1", "none"], ["x", "4", "2,-1"]),
                    "--prune", pick(["4", "none"], ["x", "-1", "nan"]), "--out", pick(["OUT/package"], ["OUT"]))
            outputs = ("package", *PACKAGE_FILES)  # --out OUT: the (empty) output folder becomes the package
        elif kind == "results":
            argv = ("results", "--results", pick(["OUT"], ["IN/net.npz", "OUT/none"]), "--where",
                    pick(["width=4"], ["nonsense", "method"]))
        else:
            argv = ("demo", "--width", pick(["2", "3"], ["0", "-1"]), "--depth", pick(["1"], ["0", "-1"]),
                    "--reference-samples", pick(["2", "1e2"], ["1", "0"]), "--seed", pick(*SEEDS))
        files = {"net.npz": net, "truth.npz": truth_of_net} if kind == "score" else {"net.npz": net}
        yield f"options{index}-{kind}", Case(argv, files, outputs)


def extreme_cases(net: Writer) -> Iterator[tuple[str, Case]]:
    """Requests refused up front (mechest.limits): sample counts that could not finish, networks no machine
    holds. Were they run they would not end or would exhaust memory, so they get a short time limit."""
    yield "huge-samples-mc", Case(("estimate", "--weights", "IN/net.npz", "--method", "mc", "--samples", "1e30"),
                                  {"net.npz": net}, seconds=1.0)
    yield "huge-samples-truth", Case(("truth", "--weights", "IN/net.npz", "--samples", "1e30", "--workers", "0",
                                      "--out", "OUT/truth.npz"), {"net.npz": net}, ("truth.npz",), seconds=1.0)
    yield "huge-width-net", Case(("net", "--width", "1000000", "--depth", "1", "--out", "OUT/net.npz"), {},
                                 ("net.npz",), seconds=1.0)
    yield "huge-width-estimate", Case(("estimate", "--width", "1000000", "--depth", "1", "--order", "2"), {},
                                      seconds=1.0)


def all_cases() -> list:
    rng = random.Random(SEED)
    net = savez({"weight_0": np.random.default_rng(0).normal(size=(5, 4)), "bias_0": np.full(5, 0.1),
                 "weight_1": np.random.default_rng(1).normal(size=(3, 5)) / 3,
                 "weight_2": np.random.default_rng(2).normal(size=(2, 3)), "activation": np.array(["relu", "tanh"])})
    cases = [*network_file_cases(rng, 130), *option_cases(rng, 100, net), *extreme_cases(net)]
    return [pytest.param(case, id=name) for name, case in cases]


def test_complex_weights_are_refused(tmp_path) -> None:
    savez({"weight_0": np.ones((2, 3), dtype=np.complex128)})(tmp_path / "net.npz")
    with pytest.raises(MechestError, match="weight_0 is complex"):
        load(tmp_path / "net.npz")


def test_an_archive_member_that_is_not_an_array_is_refused(tmp_path) -> None:
    zip_of_text(tmp_path / "net.npz")
    with pytest.raises(MechestError, match="weight_0 is not an array"):
        load(tmp_path / "net.npz")


# ---- checks ---------------------------------------------------------------------------------------------------


@contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """TimeoutError in this (the main) thread after ``seconds``."""
    def expire(signum, frame):
        raise TimeoutError(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise AssertionError(f"non-finite number {text} in the output")
    return value


def non_finite_constant(text: str) -> float:
    raise AssertionError(f"{text} in the JSON output")


def check_finite_output(stdout: str) -> None:
    for line in stdout.splitlines():
        if line.startswith(("{", "[")):
            json.loads(line, parse_float=finite_float, parse_constant=non_finite_constant)
        else:
            assert not re.search(r"(?<![\w.])-?(nan|inf)(?![\w])", line, flags=re.IGNORECASE), line


def check_finite_files(folder: Path) -> None:
    for path in folder.rglob("*.npz"):
        with np.load(path) as data:
            for key in data.files:
                if np.issubdtype(data[key].dtype, np.floating):
                    assert np.isfinite(data[key]).all(), f"{path.name}: {key} is not finite"


# Degenerate inputs (zero weights) give zero variances, which mechest snaps to 1e-10 with a warning by design.
@pytest.mark.filterwarnings("ignore:Snapping negative variance:RuntimeWarning")
@pytest.mark.parametrize("case", all_cases())
def test_every_run_succeeds_with_finite_output_or_fails_in_one_line(case: Case, tmp_path, capsys,
                                                                    monkeypatch) -> None:
    inputs, outputs = tmp_path / "IN", tmp_path / "OUT"
    inputs.mkdir()
    outputs.mkdir()
    for name, write in case.files.items():
        write(inputs / name)
    monkeypatch.chdir(tmp_path)
    try:
        with time_limit(case.seconds):
            code = main(list(case.argv))
    except SystemExit as stop:  # argparse: --help, or a bad option (one line, exit 2)
        code = stop.code
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    if code == 0:
        check_finite_output(captured.out)
        check_finite_files(outputs)
        assert {path.name for path in outputs.iterdir()} <= set(case.outputs)
    else:
        assert code == 2, captured.err
        assert captured.err.count("\n") == 1 and captured.err.startswith("mechest: error:"), captured.err
        assert list(outputs.iterdir()) == [], "a failed run left files in the output folder"
