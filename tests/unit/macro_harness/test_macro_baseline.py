"""``--baseline-tree``: each cygate contender also runs on another checkout's code, in the same
rounds, and the report gives this tree against it round by round."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from benchmarks.macro.registry import by_name
from benchmarks.macro.report import against_baseline
from benchmarks.macro.rounds import Rounds
from benchmarks.macro.run import _parse_args, round_order, with_baseline
from test_macro_rounds import _result

pytestmark = pytest.mark.once


def test_each_cygate_contender_gets_a_twin_on_the_other_tree(tmp_path: Path) -> None:
    contenders = with_baseline(by_name(["cygate-full", "granian-same-bytes"]), tmp_path)
    assert [c.name for c in contenders] == [
        "cygate-full",
        "cygate-full@base",
        "granian-same-bytes",
    ]
    this, base = contenders[0], contenders[1]
    assert base.command == this.command
    assert {k: v for k, v in base.env.items() if k != "PYTHONPATH"} == this.env
    # The other tree's sources come first on sys.path, ahead of this checkout's install.
    assert base.env["PYTHONPATH"].split(os.pathsep)[0] == str(tmp_path / "src")


def test_braces_in_the_path_survive_the_template(tmp_path: Path) -> None:
    tree = tmp_path / "a{b}"
    (base,) = [c for c in with_baseline(by_name(["cygate-full"]), tree) if "@" in c.name]
    assert base.env["PYTHONPATH"].format_map({}).startswith(str(tree / "src"))


def test_the_trees_take_turns_at_running_first(tmp_path: Path) -> None:
    contenders = with_baseline(by_name(["granian-same-bytes", "cygate-full"]), tmp_path)
    odd = [c.name for c in round_order(contenders, 1)]
    even = [c.name for c in round_order(contenders, 2)]
    assert odd == ["cygate-full", "cygate-full@base", "granian-same-bytes"]  # registry order
    assert even == ["cygate-full@base", "cygate-full", "granian-same-bytes"]


def test_this_tree_against_the_base_is_paired_within_rounds() -> None:
    # The machine slowed down by half in round 2; within each round this tree is 10 % faster.
    rounds = Rounds()
    for this_rps, base_rps in ((1100.0, 1000.0), (550.0, 500.0)):
        rounds.start()
        rounds.add(_result("cygate-full", this_rps))
        rounds.add(_result("cygate-full@base", base_rps))
    text = against_baseline(rounds, ["cygate-full"])
    assert "| cygate-full | 1.100x (1.100x to 1.100x, 2 rounds) | 0.909x" in text
    assert against_baseline(rounds, ["granian-same-bytes"]) == ""


def test_a_directory_that_is_not_a_checkout_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        _parse_args(["--baseline-tree", str(tmp_path)])
