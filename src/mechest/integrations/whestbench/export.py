"""``mechest whestbench export``: write a self-contained WhestBench estimator package."""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from mechest.errors import MechestError
from mechest.files import check_output_directory, reason
from mechest.kprop import executor
from mechest.kprop.executor.schemes import plan_key
from mechest.kprop.spec import PACKAGE_PLANS, executor_spec

# Copied, not imported: estimator.py imports whestbench and flopscope, which are an optional extra.
SOURCES = Path(__file__).resolve().parent

PROPAGATION = "mechest_propagate"
"""The executor package's name in the export (a verbatim copy of mechest/kprop/executor/)."""

FILES = ("estimator.py", PROPAGATION, "mechest_plan.json", "mechest_config.json", "mechest_propagate.py")
"""What an export holds (its last entry: the single-file executor of exports before it became a package)."""


DEFAULT_COMPRESSION = (6, 0.25, 1)
"""K = 3's source compression in the package (age, rank / width, power iterations; docs/whestbench.md): at
1024×16 it scored best of the ladder in docs/results.md ("Beyond the reference")."""


def parse_compression(text: str) -> tuple[int, float, int] | None:
    """``AGE,FRACTION,POWER`` (e.g. 6,0.25,1) or ``none``, as the CLI's --compress takes it."""
    if text.strip().lower() == "none":
        return None
    try:
        age, fraction, power = text.split(",")
        return int(age), float(fraction), int(power)
    except ValueError:
        raise MechestError(f"--compress must be AGE,FRACTION,POWER (e.g. 6,0.25,1) or none, got {text!r}") from None


DEFAULT_STRASSEN = 3
"""Most levels of Strassen's recursion the package's K = 3 may use (it takes the cheapest predicted, none below
the estimator's STRASSEN_MIN_WIDTH, and drops them layer by layer when the residual time runs high,
``ResidualGuard``). At 1024×16 the guarded default scores 1.10e-8 against 1.23e-8 with dense products, at 0.28 s
of residual time a network against 0.21 s (docs/results.md)."""


DEFAULT_THIN = (16, 1)
"""K = 3's thin correction legs in the package (rank of the residual, power iterations; docs/method.md §7.10), used
where compression is (exact K = 3 over COMPRESS_ABOVE of the budget): at 1024×16 ranks 8–32 tie within noise
(docs/results.md, "Thin correction legs"); 16 leaves a margin at other widths."""


def parse_thin(text: str) -> tuple[int, int] | None:
    """``RANK,POWER`` (e.g. 16,1) or ``none``, as the CLI's --thin takes it."""
    if text.strip().lower() == "none":
        return None
    try:
        rank, power = text.split(",")
        return int(rank), int(power)
    except ValueError:
        raise MechestError(f"--thin must be RANK,POWER (e.g. 16,1) or none, got {text!r}") from None


def parse_prune(text: str) -> float | None:
    """``SIGMAS`` (e.g. 4) or ``none``, as the CLI's --prune takes it."""
    if text.strip().lower() == "none":
        return None
    try:
        return float(text)
    except ValueError:
        raise MechestError(f"--prune must be a number of standard deviations (e.g. 4) or none, got {text!r}") from None


@dataclass(frozen=True)
class PackageOptions:
    """What an exported package may do, as `mechest whestbench export` and `score` take it: the highest order, the
    largest predicted FLOPs as a fraction of the budget, the smallest κ_3 window (0: never window), the safety
    factor on predicted FLOPs, K = 2 augment allowed, K = 3's source compression (age, rank / width, power; None:
    never), most Strassen levels (None: DEFAULT_STRASSEN, or 0 with a dead-unit threshold), K = 3's thin
    correction legs (rank, power; None: never) and the dead-unit threshold of the planned schemes (standard
    deviations; None: keep every unit)."""

    max_order: int = 3
    budget_fraction: float = 1.0
    min_window: int = 0
    safety: float = 1.02
    augment: bool = True
    compression: tuple[int, float, int] | None = DEFAULT_COMPRESSION
    strassen: int | None = None
    thin: tuple[int, int] | None = DEFAULT_THIN
    prune: float | None = None

    def config(self) -> dict:
        """The options as the estimator reads them at setup (checked here, so the package never holds a bad
        value)."""
        if self.max_order not in (1, 2, 3):
            raise MechestError(f"--order must be 1, 2 or 3 for WhestBench, got {self.max_order}")
        if not 0 < self.budget_fraction <= 1:
            raise MechestError(f"--budget-fraction must be in (0, 1], got {self.budget_fraction}")
        if self.min_window < 0:
            raise MechestError(f"--min-window must be 0 (never window) or more, got {self.min_window}")
        if self.safety < 1:
            raise MechestError(f"--safety must be at least 1, got {self.safety}")
        compression, thin = self.compression, self.thin
        if compression is not None and (compression[0] < 1 or not 0 < compression[1] <= 1 or compression[2] < 0):
            raise MechestError(f"--compress needs age ≥ 1, 0 < fraction ≤ 1 and power ≥ 0, got {compression}")
        strassen = self.strassen if self.strassen is not None else 0 if self.prune is not None else DEFAULT_STRASSEN
        if not 0 <= strassen <= 6:
            raise MechestError(f"--strassen must be 0 (dense products) to 6, got {strassen}")
        if thin is not None and (thin[0] < 0 or thin[1] < 0):
            raise MechestError(f"--thin needs rank ≥ 0 and power ≥ 0, got {thin}")
        if self.prune is not None and not (math.isfinite(self.prune) and self.prune > 0):
            raise MechestError(f"--prune must be a positive number of standard deviations or none, got {self.prune}")
        if self.prune is not None and strassen:
            raise MechestError("--prune and --strassen cannot be combined: pruned widths are rarely divisible by "
                               "2^levels, where Strassen's product falls back to the dense one its cost model "
                               "does not price")
        return {"max_order": self.max_order, "budget_fraction": self.budget_fraction, "min_window": self.min_window,
                "safety": self.safety, "augment": self.augment,
                "compression": None if compression is None else
                {"age": compression[0], "rank_fraction": compression[1], "power": compression[2]},
                "strassen": strassen, "thin": None if thin is None else {"rank": thin[0], "power": thin[1]},
                "prune": self.prune}


def export_package(out: str | Path, options: PackageOptions = PackageOptions()) -> Path:
    """Write estimator.py, its propagation package, the plans (K = 3 simple and core, K = 2 augment) and the config
    into ``out`` (atomically)."""
    config = options.config()
    target = Path(out)
    if target.exists() and (not target.is_dir() or any(p.name not in FILES for p in target.iterdir())):
        raise MechestError(f"{target} exists and is not an earlier export; choose another --out")
    check_output_directory(target.parent if target.exists() else target)  # the package is renamed into place
    staging = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".whest-export-{os.getpid()}-", dir=target.parent))
        shutil.copyfile(SOURCES / "estimator.py", staging / "estimator.py")
        shutil.copytree(Path(executor.__file__).parent, staging / PROPAGATION,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        (staging / "mechest_plan.json").write_text(json.dumps({plan_key(k, v): executor_spec(k, v)
                                                                      for k, v in PACKAGE_PLANS}))
        (staging / "mechest_config.json").write_text(json.dumps(config, indent=1))
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    except OSError as error:
        raise MechestError(f"cannot write {target}: {reason(error)}") from None
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
    return target
