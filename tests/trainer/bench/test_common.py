"""What the bench subcommands share (trainer/bench/common.py), and what holds for every module of the package."""

import ast
from pathlib import Path

import pytest

from trainer.bench.__main__ import cli
from trainer.bench.common import paired_difference

PACKAGE = Path(__file__).resolve().parents[3] / "trainer" / "bench"


def test_paired_difference_is_mean_se_and_share_better():
    # differences 0.02, 0.00, 0.04 -> mean 2 pts, sd 2 pts, se 2 / sqrt(3) = 1.15; better on 2 of 3 seeds
    assert paired_difference([0.5, 0.6, 0.7], [0.52, 0.6, 0.74]) == "+2.00 +- 1.15 pts, better on 67%"


def test_bench_checks_raise_instead_of_asserting():
    """`python -O` strips asserts: a check the bench relies on (its scoring paths agreeing) must be a raise."""
    files = sorted(PACKAGE.glob("*.py"))
    assert PACKAGE.joinpath("rollout.py") in files
    for path in files:
        asserts = [n.lineno for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.Assert)]
        assert not asserts, f"{path.name}: assert on line(s) {asserts}"


@pytest.mark.parametrize("argv, message", [
    (["generate", "--sample-seed", "18446744073709551616"],
     "argument --sample-seed: expected a seed in [0, 2^63), got 18446744073709551616"),  # it raised an OverflowError
    (["warmstart", "--sample-seed", "-1"], "argument --sample-seed: expected a seed in [0, 2^63), got -1"),
    (["search", "--lr", "0"], "argument --lr: expected a finite value > 0, got 0"),  # a search that never moved
    (["search", "--lr", "nan"], "argument --lr: expected a finite value > 0, got nan"),
])
def test_seeds_and_steps_out_of_range_are_refused_where_the_flag_is_read(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        cli(argv)
    assert e.value.code == 2 and message in capsys.readouterr().err
