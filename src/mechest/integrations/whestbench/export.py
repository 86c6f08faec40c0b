"""``mechest whestbench export``: write a self-contained WhestBench estimator package."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from mechest.errors import MechestError
from mechest.files import check_output_directory, reason
from mechest.kprop import executor
from mechest.kprop.executor import plan_key
from mechest.kprop.spec import PACKAGE_PLANS, executor_spec

# Copied, not imported: estimator.py imports whestbench and flopscope, which are an optional extra.
SOURCES = Path(__file__).resolve().parent

FILES = ("estimator.py", "mechest_propagate.py", "mechest_plan.json", "mechest_config.json")


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


DEFAULT_STRASSEN = 0
"""Most levels of Strassen's recursion the package's K = 3 may use (it takes the cheapest predicted). Off by
default: at 1024×16 three levels pushed the residual time per network to 0.51 s, over phase 2's 0.4 s gate
(docs/results.md)."""


def package_config(max_order: int, budget_fraction: float, min_window: int, safety: float, augment: bool,
                   compression: tuple[int, float, int] | None = DEFAULT_COMPRESSION,
                   strassen: int = DEFAULT_STRASSEN) -> dict:
    """The options the estimator reads at setup (checked here, so the package never holds a bad value)."""
    if max_order not in (1, 2, 3):
        raise MechestError(f"--order must be 1, 2 or 3 for WhestBench, got {max_order}")
    if not 0 < budget_fraction <= 1:
        raise MechestError(f"--budget-fraction must be in (0, 1], got {budget_fraction}")
    if min_window < 0:
        raise MechestError(f"--min-window must be 0 (never window) or more, got {min_window}")
    if safety < 1:
        raise MechestError(f"--safety must be at least 1, got {safety}")
    if compression is not None and (compression[0] < 1 or not 0 < compression[1] <= 1 or compression[2] < 0):
        raise MechestError(f"--compress needs age ≥ 1, 0 < fraction ≤ 1 and power ≥ 0, got {compression}")
    if not 0 <= strassen <= 6:
        raise MechestError(f"--strassen must be 0 (dense products) to 6, got {strassen}")
    return {"max_order": max_order, "budget_fraction": budget_fraction, "min_window": min_window, "safety": safety,
            "augment": augment, "compression": None if compression is None else
            {"age": compression[0], "rank_fraction": compression[1], "power": compression[2]},
            "strassen": strassen}


def export_package(out: str | Path, max_order: int = 3, budget_fraction: float = 1.0, min_window: int = 0,
                   safety: float = 1.02, augment: bool = True,
                   compression: tuple[int, float, int] | None = DEFAULT_COMPRESSION,
                   strassen: int = DEFAULT_STRASSEN) -> Path:
    """Write estimator.py, its propagation module, the plans (K = 3 simple and core, K = 2 augment) and the config
    into ``out`` (atomically)."""
    config = package_config(max_order, budget_fraction, min_window, safety, augment, compression, strassen)
    target = Path(out)
    if target.exists() and (not target.is_dir() or any(p.name not in FILES for p in target.iterdir())):
        raise MechestError(f"{target} exists and is not an earlier export; choose another --out")
    check_output_directory(target.parent if target.exists() else target)  # the package is renamed into place
    staging = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".whest-export-{os.getpid()}-", dir=target.parent))
        shutil.copyfile(SOURCES / "estimator.py", staging / "estimator.py")
        shutil.copyfile(executor.__file__, staging / "mechest_propagate.py")
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
