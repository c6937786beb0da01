"""`python -m trainer.bench`: measurements printed as markdown tables.

`rollout`: evaluations per second of the scoring paths (a load_state_dict loop, batched vmap, the Ray pool).
`generate`: test accuracy on held-out init seeds of random inits, the zoo's SGD runs and each given policy, side by side.
`temperature`: the sampler's frontier: per std of the unit latent, a sample's accuracy, best-of-N and how often two
samples from one init agree, beside SGD's runs from one init.
`search`: what black-box search buys per evaluation: antithetic evolution strategies directly on the weights of a
policy's generated nets (GRPO's signal with no policy in between), rewarded on the fixed reward split vs fresh batches.
`warmstart`: SGD for B steps from the generated net against from the init, B = 1/32 .. 1 of the zoo's budget.
`audit`: are generated nets new, or copies of zoo checkpoints, and do they land where SGD from the same init lands?
`objectives`: quantised, sparse and noise-robust nets: SGD then quantise/prune (and fine-tune) vs the policies' nets.
`grpo`: GRPO's held-out gain over the imitation policy against the evaluations it spent, per exploration mode.
`gradient`: the cosine of GRPO's policy-gradient estimate with the exact gradient of the expected reward, per mode.
`precision`: bf16 autocast vs fp32 scoring: how GRPO's reward ranking within a group of sampled nets changes.
`sensitivity`: how SGD's trained weights move when the init moves a little, against another data order.
`fit`: per tensor, how well the policy's one step from zoo runs' inits reaches their end (imitated runs vs others).
`ceiling`: the generator against the same policy fitted to each init alone, and SGD: the amortisation gap and the reach
of the walk.
`report`: generate, audit and rollout on one experiment -> docs/RESULTS.md with the tables, figures and commands.
Every subcommand but `fit` and `report` takes `--plots DIR` to write PNG figures next to its table.

Each subcommand is one module of this package with `add_parser(sub)` and `run(args, cfgs)`, registered in
`BENCHMARKS` below; what they share is in `trainer.bench.common`.
"""

from __future__ import annotations

import argparse

from trainer.bench import (audit, ceiling, common, fit, generate, gradient, grpo, objectives, precision, report,
                           rollout, search, sensitivity, temperature, warmstart)
from trainer.cli import guarded, use_threads
from trainer.config import load_config
from trainer.device import resolve_device

# The subcommands, in the order `--help` lists them.
BENCHMARKS = [rollout, generate, temperature, search, warmstart, audit, objectives, grpo, gradient, precision, sensitivity,
              fit, ceiling, report]


def build_parser() -> argparse.ArgumentParser:
    return common.parser_of(BENCHMARKS, description=__doc__.splitlines()[0])


def cli(argv: list[str] | None = None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    paths = args.config or args.default_configs
    threads = getattr(args, "threads", None)  # None (no --threads, no default): the config's `threads`

    def run() -> None:
        cfgs = [load_config(path, args.overrides) for path in paths]
        for cfg in cfgs:
            resolve_device(cfg.device)  # a device this machine lacks fails here, before any work
        use_threads(threads or cfgs[0].threads)
        args.func(args, cfgs)

    return guarded(run)


if __name__ == "__main__":
    raise SystemExit(cli())
