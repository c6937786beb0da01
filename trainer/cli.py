"""What every entry point shares: argument parsing and turning user-caused errors into one line and exit code 2."""

from __future__ import annotations

import argparse
import sys
from typing import Callable

from envs.spec import ConfigError
from envs.tasks import TaskDataError
from trainer.checkpoints import CheckpointError
from trainer.config import ExperimentConfig, add_config_args, load_config
from trainer.device import resolve_device

USER_ERRORS = (ConfigError, TaskDataError, CheckpointError, FileNotFoundError)


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    add_config_args(p)
    return p


def guarded(fn: Callable[[], object]) -> int:
    """Run `fn`; a user-caused error prints one line (`error: ...`) and gives exit code 2."""
    try:
        fn()
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def run_main(main: Callable[[argparse.Namespace, ExperimentConfig], object], p: argparse.ArgumentParser,
             argv: list[str] | None = None) -> int:
    """Parse args, load the config, check its device against this machine (before any work) and run `main(args, cfg)`
    under `guarded`."""
    args = p.parse_args(argv)

    def run() -> object:
        cfg = load_config(args.config, args.overrides)
        resolve_device(cfg.device)
        return main(args, cfg)

    return guarded(run)
