"""The recipe is one command: docs/study.md, hbt-train --help and the study's own runs must say the same."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from click.testing import CliRunner

from hbt.bench.hybrid_study import at_recipe_2, training_command
from hbt.cli.train import main as train_cli

ROOT = Path(__file__).resolve().parents[1]


def recipe_lines(text: str) -> list[str]:
    """hbt-train command lines (backslash continuations joined) that train on answer sentences: the recipe's."""
    joined = re.sub(r"\\\n\s*", " ", text)
    return [line.split("#")[0].strip() for line in joined.splitlines()
            if line.strip().startswith("hbt-train") and "--passage-unit sentence" in line]


def options(line: str, tmp_path: Path) -> dict:
    """The command's resolved hbt-train options (defaults included), without the paths --data and --out."""
    args = shlex.split(line)[1:]
    data = tmp_path / "train.jsonl"
    data.touch()
    args[args.index("--data") + 1] = str(data)
    params = {k: v for k, v in train_cli.make_context("hbt-train", args).params.items() if k not in ("data", "out")}
    if params.pop("bf16", False):  # the older spelling of --precision bf16
        params["precision"] = "bf16"
    return params


def study_recipe(tmp_path: Path) -> dict:
    job = at_recipe_2("hybrid", 0, ("mlqa-r-test",))  # recipe 2: chosen on the dev half
    return options(shlex.join(training_command(job, Path("data.jsonl"), 16, tmp_path / "run")), tmp_path)


def test_the_docs_recipe_is_the_command_the_study_ran(tmp_path):
    lines = recipe_lines((ROOT / "docs" / "study.md").read_text())
    assert lines, "docs/study.md states no hbt-train recipe (--passage-unit sentence)"
    for line in lines:
        assert options(line, tmp_path) == study_recipe(tmp_path), line


def test_hbt_train_help_states_the_same_recipe(tmp_path):
    help_text = CliRunner().invoke(train_cli, ["--help"], terminal_width=400).output
    lines = recipe_lines(help_text)
    assert len(lines) == 1, help_text
    assert options(lines[0], tmp_path) == study_recipe(tmp_path)
