"""The results store: one directory holding a Parquet table of runs and the cached ground truths.

Layout of a results directory::

    RESULTS/runs/<run id>-<part>.parquet     rows of one benchmark run (one file per finished network)
    RESULTS/truths/<fingerprint>-<N>.npz      Monte Carlo ground truths with N samples (mechest.estimators.truth)
    RESULTS/figures/*.png, *.pdf              plots of the last benchmark run (mechest.experiments.plots)

Concurrency: every part file is written under a temporary name and renamed into place (``os.replace`` is
atomic), and no file is ever appended to, so two runs writing at once never corrupt each other and a reader
sees only complete parts. The table is the concatenation of all parts (``read_runs``).
"""

from __future__ import annotations

import os
import platform
import socket
import uuid
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import torch

from mechest.errors import MechestError
from mechest.files import atomic_path

RUNS_DIR = "runs"
TRUTHS_DIR = "truths"
FIGURES_DIR = "figures"

#: Columns of the runs table: name -> Arrow type. Every row has every column (null where not applicable).
SCHEMA = pa.schema([
    ("run_id", pa.string()),
    ("time", pa.string()),
    ("machine", pa.string()),
    ("width", pa.int64()),
    ("depth", pa.int64()),
    ("activation", pa.string()),
    ("net_seed", pa.int64()),
    ("weights_hash", pa.string()),
    ("method", pa.string()),
    ("order", pa.int64()),
    ("variant", pa.string()),
    ("factored", pa.bool_()),
    ("samples", pa.int64()),
    ("dtype", pa.string()),
    ("flops_raw", pa.float64()),
    ("flops_discounted", pa.float64()),
    ("forward_flops", pa.float64()),
    ("seconds", pa.float64()),
    ("mse", pa.float64()),
    ("variance", pa.float64()),
    ("noise_floor", pa.float64()),
    ("mse_over_var", pa.float64()),
    ("truth_samples", pa.int64()),
])
COLUMNS = tuple(SCHEMA.names)


def machine_description() -> str:
    """Host name, processor and torch build/threads: enough to tell apart timings from different machines."""
    return (f"{socket.gethostname()} {platform.machine()} {os.cpu_count()} cpus, "
            f"torch {torch.__version__} {torch.get_num_threads()} threads")


def new_run_id() -> str:
    """A sortable, collision-free run id: UTC time plus random hex."""
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:8]


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def runs_dir(results: str | Path) -> Path:
    return Path(results) / RUNS_DIR


def truths_dir(results: str | Path) -> Path:
    return Path(results) / TRUTHS_DIR


def figures_dir(results: str | Path) -> Path:
    return Path(results) / FIGURES_DIR


def make_directory(path: Path) -> Path:
    """Create ``path`` (and parents) or raise a one-line MechestError."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise MechestError(f"cannot create directory {path}: {error.strerror or error}") from None
    return path


def to_table(rows: Sequence[Mapping[str, object]]) -> pa.Table:
    """Rows (dicts with keys among COLUMNS; missing keys are null) as an Arrow table with SCHEMA."""
    unknown = {key for row in rows for key in row} - set(COLUMNS)
    if unknown:
        raise MechestError(f"unknown result columns: {', '.join(sorted(unknown))}")
    return pa.Table.from_pylist([{name: row.get(name) for name in COLUMNS} for row in rows], schema=SCHEMA)


def write_part(results: str | Path, run_id: str, part: int, rows: Sequence[Mapping[str, object]]) -> Path:
    """Write ``rows`` as the part file ``runs/<run_id>-<part>.parquet`` of ``results``, atomically."""
    directory = make_directory(runs_dir(results))
    path = directory / f"{run_id}-{part:04d}.parquet"
    table = to_table(rows)
    with atomic_path(path) as temporary:
        pq.write_table(table, temporary)
    return path


def read_runs(results: str | Path) -> pa.Table:
    """Every complete part file of ``results`` concatenated (an empty table if there are none)."""
    directory = runs_dir(results)
    if not Path(results).is_dir():
        raise MechestError(f"no results directory {results}")
    parts = sorted(directory.glob("*.parquet")) if directory.is_dir() else []
    tables = []
    for path in parts:
        try:
            table = pq.read_table(path)
        except (OSError, pa.ArrowException) as error:
            raise MechestError(f"cannot read {path}: {error}") from None
        tables.append(table.select([name for name in COLUMNS if name in table.column_names]))
    if not tables:
        return SCHEMA.empty_table()
    return pa.concat_tables(tables, promote_options="default")


def parse_filter(text: str) -> tuple[str, str]:
    """``column=value`` -> (column, value); the column must exist."""
    column, separator, value = text.partition("=")
    if not separator or column not in COLUMNS:
        raise MechestError(f"bad filter {text!r}: expected COLUMN=VALUE with COLUMN one of {', '.join(COLUMNS)}")
    return column, value


def matches(value: object, wanted: str) -> bool:
    """Whether a cell equals the text ``wanted`` (numbers compared as numbers, booleans as true/false)."""
    if value is None:
        return wanted in ("", "null", "none")
    if isinstance(value, bool):
        return wanted.lower() in (("true", "1", "yes") if value else ("false", "0", "no"))
    if isinstance(value, (int, float)):
        try:
            return float(wanted) == float(value)
        except ValueError:
            return False
    return str(value) == wanted


def filter_rows(rows: Iterable[Mapping[str, object]], filters: Sequence[tuple[str, str]]) -> list[dict]:
    """The rows whose every filtered column matches (see ``matches``)."""
    return [dict(row) for row in rows if all(matches(row.get(column), value) for column, value in filters)]
