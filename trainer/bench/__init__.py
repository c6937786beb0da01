"""The benchmarks behind `python -m trainer.bench` (see `trainer/bench/__main__.py` for the subcommands).

One module per subcommand, each with `add_parser(sub)` (its subcommand and flags, `func` set to its runner) and
`run(args, cfgs)`; `common` holds what they share. This file imports nothing: `trainer.report` imports
`trainer.bench.common`, and a package that loaded its subcommands here would load the report runner back.
"""
