"""`python -m trainer.bench`: every module of the package is a registered subcommand, and the docstring lists them."""

import re
from pathlib import Path

from trainer.bench import __main__ as bench

SHARED = {"__init__", "__main__", "common"}  # modules of trainer/bench/ that are no subcommand


def test_every_benchmark_module_is_registered_once_with_its_runner():
    files = {p.stem for p in Path(bench.__file__).parent.glob("*.py")} - SHARED
    assert sorted(m.__name__.rpartition(".")[2] for m in bench.BENCHMARKS) == sorted(files)
    sub = next(a for a in bench.build_parser()._actions if a.dest == "command")
    assert list(sub.choices) == [m.__name__.rpartition(".")[2] for m in bench.BENCHMARKS]  # --help lists them so
    for module in bench.BENCHMARKS:
        name = module.__name__.rpartition(".")[2]
        assert sub.choices[name].get_default("func") is module.run, name


def test_the_docstring_lists_every_subcommand_once_in_help_order():
    listed = re.findall(r"^`([a-z]+)`: ", bench.__doc__, re.MULTILINE)
    assert listed == [m.__name__.rpartition(".")[2] for m in bench.BENCHMARKS]
