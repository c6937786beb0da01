"""What every entry point shares: argument parsing, torch threads, SIGTERM, and turning user-caused errors into one
line and exit code 2."""

from __future__ import annotations

import argparse
import re
import signal
import sys
import threading
from typing import Callable, Optional

import torch

from envs.spec import ConfigError
from envs.tasks import TaskDataError
from rollout.cluster import cores, omp_threads, torch_threads
from trainer.checkpoints import CheckpointError
from trainer.config import ExperimentConfig, add_config_args, is_folder_name, load_config
from trainer.device import resolve_device

USER_ERRORS = (ConfigError, TaskDataError, CheckpointError, FileNotFoundError)


def folder_name(text: str) -> str:
    """argparse type of --name: one folder under artifacts/, never a path out of it."""
    if not is_folder_name(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a folder name (not blank, no '/', no leading or trailing "
                                         f"space, not '.' or '..')")
    return text


def add_run_args(p: argparse.ArgumentParser, suffix: str) -> None:
    """--name, --resume, --overwrite: a training run's folder under artifacts/runs/ (default <experiment>-<suffix>)."""
    p.add_argument("--name", type=folder_name, help=f"run name under artifacts/runs/ (default: <experiment>-{suffix})")
    p.add_argument("--resume", action="store_true", help="continue from artifacts/runs/<name>/state.safetensors")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an earlier run of this name (its TensorBoard events, policy and state)")


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    add_config_args(p)
    return p


def use_threads(requested: Optional[int], processes: int = 1, who: str = "this process") -> int:
    """Set this process's torch threads once, at the start of an entry point, and say so in one line. `processes`:
    the torch processes the command runs at once, `who` names them."""
    n = torch_threads(requested, processes)
    torch.set_num_threads(n)
    if requested:
        why = f"threads={requested}"
    elif omp_threads():
        why = f"OMP_NUM_THREADS={omp_threads()}"
    else:
        why = f"auto: {cores()} cores / {processes} ({who})"
    print(f"torch threads: {n} per process ({why}; --set threads=N to choose)", flush=True)
    return n


# torch's words for a tensor whose size does not fit in 64 bits (reference.widths=[2^62], policy.dim=2^62, ...)
SIZE_OVERFLOWS = ("Storage size calculation overflowed", "numel: integer multiplication overflow")


def out_of_memory(e: BaseException) -> Optional[str]:
    """What an allocation that failed asked for ("40000000000 bytes (40.0 GB) on the CPU"), or None when `e` is not
    an out-of-memory error (torch's CPU allocator, CUDA's, or Python's MemoryError)."""
    text = str(e)
    if any(t in text for t in SIZE_OVERFLOWS):  # a size past 2^63 bytes: torch refuses to count it, let alone allocate
        return "more than 2^63 bytes asked (a size no 64-bit machine addresses)"
    if isinstance(e, MemoryError) or isinstance(e, torch.OutOfMemoryError) or "can't allocate memory" in text:
        m = re.search(r"allocate (\d+) bytes", text)
        if m:
            return f"{int(m.group(1))} bytes ({int(m.group(1)) / 1e9:.1f} GB) asked of the CPU"
        m = re.search(r"allocate ([\d.]+ [KMGT]iB)", text)
        return f"{m.group(1)} asked of the GPU" if m else "an allocation failed"
    return None


def guarded(fn: Callable[[], object]) -> int:
    """Run `fn`; a user-caused error prints one line (`error: ...`) and gives exit code 2. SIGTERM unwinds `fn` like
    Ctrl-C (exit code 143) instead of killing the process on the spot: its default skips `finally` and atexit, so curves
    were not flushed and Ray's raylet and agents outlived the run."""
    terminated: list[int] = []

    def on_sigterm(signum: int, _frame) -> None:
        terminated.append(signum)
        raise SystemExit(128 + signum)

    main_thread = threading.current_thread() is threading.main_thread()  # signal handlers can only be set there
    previous = signal.signal(signal.SIGTERM, on_sigterm) if main_thread else None
    try:
        fn()
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (RuntimeError, MemoryError) as e:  # a size in the config the machine cannot hold: one line, not a traceback
        asked = out_of_memory(e)
        if asked is None:
            raise
        print(f"error: out of memory: {asked}; lower the sizes in the config (reference.widths, policy.dim, "
              f"imitate.batch_size, grpo.group_size, ...)", file=sys.stderr)
        return 2
    except SystemExit:
        if terminated:  # a Ray wait turns whatever a signal handler raises into SystemExit(1)
            raise SystemExit(128 + terminated[0]) from None
        raise
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)
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
