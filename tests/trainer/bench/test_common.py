"""What the bench subcommands share (trainer/bench/common.py), and what holds for every module of the package."""

import ast
from pathlib import Path

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
