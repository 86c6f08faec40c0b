"""What the command line says about itself: usage, version, help for every option, progress in a log."""

from __future__ import annotations

import argparse
import io

import pytest

import mechest
from mechest.cli import build_parser, main
from mechest.estimators.tail import METHODS as TAIL_METHODS
from mechest.progress import LogProgress, progress_bar


def test_bare_mechest_prints_the_commands(capsys) -> None:
    assert main([]) == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: mechest") and all(name in err for name in ("estimate", "truth", "tail-bench"))


def test_version(capsys) -> None:
    with pytest.raises(SystemExit) as stopped:
        main(["--version"])
    assert stopped.value.code == 0 and capsys.readouterr().out == f"mechest {mechest.__version__}\n"


def parsers(parser: argparse.ArgumentParser, name: str = "mechest"):
    """``parser`` and every subcommand's parser, with their command names."""
    yield name, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for command, subparser in action.choices.items():
                yield from parsers(subparser, f"{name} {command}")


def test_every_option_has_help() -> None:
    missing = [f"{name} {action.option_strings[0]}" for name, parser in parsers(build_parser())
               for action in parser._actions if action.option_strings and not action.help]
    assert missing == []


def test_tail_method_help_names_every_method() -> None:
    tail = dict(parsers(build_parser()))["mechest tail"]
    method = next(action for action in tail._actions if "--method" in action.option_strings)
    assert all(name in method.help for name in ("kprop",) + TAIL_METHODS) and "saddlepoint" in method.help


def test_log_progress_writes_a_line_every_interval() -> None:
    now = [100.0]
    log = io.StringIO()
    with LogProgress(1200, initial=100, unit="sample", desc="Monte Carlo", interval=10, clock=lambda: now[0],
                     file=log) as bar:
        for _ in range(11):  # 100 samples every 2 s
            now[0] += 2
            bar.update(100)
        bar.set_postfix_str("seed 3")
    # 50 samples/s (the 100 resumed ones not counted): a line at 10 s and 20 s, and one at the end
    assert log.getvalue().splitlines() == [
        "Monte Carlo: 600/1.20k samples (50%) after 00:10, ~00:12 left",
        "Monte Carlo: 1.10k/1.20k samples (92%) after 00:20, ~00:02 left",
        "Monte Carlo: 1.20k/1.20k samples (100%) after 00:22, ~00:00 left, seed 3"]


def test_a_short_run_logs_nothing() -> None:
    log = io.StringIO()
    with LogProgress(10, clock=lambda: 0.0, file=log) as bar:
        bar.update(10)
    assert log.getvalue() == ""


def test_progress_goes_to_a_log_when_stderr_is_not_a_terminal(capsys) -> None:
    assert isinstance(progress_bar(10, unit="sample", shown=True), LogProgress)  # pytest's captured stderr
    assert not isinstance(progress_bar(10, unit="sample", shown=False), LogProgress)
