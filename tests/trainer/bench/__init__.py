"""Tests of `python -m trainer.bench`: one module per subcommand, as in trainer/bench/."""
