"""Writing output files atomically: through a temporary file in the same folder, so that a failure never
leaves a half-written file behind, with a one-line MechestError on an unwritable path."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from mechest.errors import MechestError


def write_npz_atomically(path: str | Path, arrays: dict[str, np.ndarray]) -> None:
    """np.savez of ``arrays`` to ``path``."""
    path = Path(path)
    temporary = path.with_name(path.name + ".partial.npz")
    try:
        np.savez(temporary, **arrays)
        temporary.replace(path)
    except OSError as error:
        temporary.unlink(missing_ok=True)
        raise MechestError(f"cannot write {path}: {error.strerror or error}") from None


def write_text_atomically(path: str | Path, text: str) -> None:
    """``text`` to ``path``."""
    temporary = f"{path}.partial"
    try:
        with open(temporary, "w") as handle:
            handle.write(text)
        os.replace(temporary, path)
    except OSError as error:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise MechestError(f"cannot write {path}: {error.strerror or error}") from None
