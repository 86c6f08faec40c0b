"""The README's examples do what it says they do."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from mechest.cli import main

README = Path(__file__).resolve().parent.parent / "README.md"


def readme_commands(prefix: str) -> list[list[str]]:
    """The README's command lines that start with ``mechest PREFIX``, as argv lists (comments dropped)."""
    lines = re.findall(rf"^mechest {re.escape(prefix)} .*$", README.read_text(), flags=re.MULTILINE)
    return [shlex.split(line, comments=True)[1:] for line in lines]


def test_the_random_network_example_shows_nonzero_means(capsys) -> None:
    """A bias-free odd activation (tanh) gives an output mean of exactly 0: 64 zeros show nothing."""
    examples = [argv for argv in readme_commands("estimate") if "--weights" not in argv]
    assert len(examples) == 1
    assert main(examples[0]) == 0
    rows = capsys.readouterr().out.splitlines()[3:]
    means = [float(row.split()[1]) for row in rows]
    assert len(means) == 64 and max(abs(mean) for mean in means) > 0.1

