"""`python -m trainer.zoo`: train reference models from many seeds (Ray tasks) and save checkpoints along each run.

Layout: `<zoo>/run-0003/step-000128.safetensors` (+ `run.json`) and `<zoo>/manifest.json`. A run is written to a
hidden temp folder and renamed when complete, so re-running skips finished runs and never sees half-written ones.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
import ray
import torch
import torch.nn.functional as F
from tqdm import tqdm

from envs.models import reference_from_config
from envs.scoring import evaluate
from envs.spec import ConfigError
from envs.tasks import task_from_config
from rollout.cluster import check_placeable, init_ray, torch_threads
from trainer.checkpoints import CheckpointError, check_writable_folder, read_json, save_json, save_weights
from trainer.cli import parser, run_main, use_threads
from trainer.config import ExperimentConfig
from trainer.device import worker_device, worker_gpus


def checkpoint_steps(total: int, n: int) -> list[int]:
    """`n` log-spaced steps in [0, total], always with 0 (the init) and `total` (fewer if steps collide). `n`: the
    config's zoo.checkpoints, so more than a run has steps is its one-line error (numpy could not lay out 2^62)."""
    assert total >= 1 and n >= 2, (total, n)
    if n > total + 1:
        raise ConfigError(f"config key zoo.checkpoints: {n} checkpoints of a run of {total} SGD steps; expected at most "
                          f"{total + 1} (steps 0..{total})")
    inner = np.geomspace(1, total, n - 1).round().astype(int)
    return sorted({0, total, *inner.tolist()})


def reference_name(cfg: ExperimentConfig) -> str:
    r = cfg.reference
    if r.family != "resnet":
        return f"{r.family}{r.widths}"
    return f"{r.family}{r.widths}x{r.blocks_per_stage}" + ("-flatten" if r.head == "flatten" else "")


def run_dir(zoo_dir: Path, run: int) -> Path:
    return zoo_dir / f"run-{run:04d}"


def steps_per_epoch(cfg: ExperimentConfig, task) -> int:
    """Whole minibatches in one pass over the train split; a batch larger than the split (which would train nothing,
    or loop forever waiting for a step) is a one-line error naming zoo.batch_size."""
    n = len(task.train) // cfg.zoo.batch_size
    if n < 1:
        raise ConfigError(f"config key zoo.batch_size: {cfg.zoo.batch_size} leaves no SGD step: the train split holds "
                          f"{len(task.train)} examples ({task.name} less task.reward_size={cfg.task.reward_size}); "
                          f"use a batch of at most {len(task.train)}")
    return n


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v)


def check_run_record(record, where: str | Path, run: Optional[int] = None) -> dict:
    """A run record (run.json, or an entry of manifest.json) as `train_run` writes it: a hand-edited or truncated one
    is a one-line CheckpointError naming the file, before a manifest is written from it or a checkpoint is read."""
    def bad(what: str):
        raise CheckpointError(f"{where}: not a zoo run record ({what})")

    if not isinstance(record, dict):
        bad("expected a mapping")
    if not isinstance(record.get("run"), int) or isinstance(record["run"], bool) or \
            (run is not None and record["run"] != run):
        bad(f"'run' must be {run if run is not None else 'the run index'}, got {record.get('run')!r}")
    ckpts = record.get("checkpoints")
    if not isinstance(ckpts, list) or len(ckpts) < 2:
        bad("'checkpoints' must be a list of at least 2 checkpoints")
    for i, c in enumerate(ckpts):
        if not isinstance(c, dict):
            bad(f"checkpoints[{i}] must be a mapping")
        f = c.get("file")
        if not isinstance(f, str) or Path(f).is_absolute() or ".." in Path(f).parts:
            bad(f"checkpoints[{i}].file must be a path inside the zoo folder, got {f!r}")
        for k in ("t", "test_accuracy"):
            if not _number(c.get(k)):
                bad(f"checkpoints[{i}].{k} must be a number, got {c.get(k)!r}")
    t = [c["t"] for c in ckpts]
    if t[0] != 0 or t[-1] != 1 or any(a >= b for a, b in zip(t, t[1:])):
        bad(f"checkpoint progress values 't' must ascend from 0 to 1, got {t}")
    return record


def read_run(path: Path, run: int) -> dict:
    """A finished run's run.json, checked (`check_run_record`)."""
    return check_run_record(read_json(path), path, run)


def total_steps(cfg: ExperimentConfig, task) -> int:
    """Optimizer steps of one run of the zoo's recipe: whole minibatches per epoch x epochs."""
    return steps_per_epoch(cfg, task) * cfg.zoo.epochs


def sgd_steps(cfg: ExperimentConfig, model: torch.nn.Module, task, data_seed: int,
              budget: Optional[int] = None) -> Iterator[int]:
    """The zoo's recipe (optimizer, learning-rate schedule, minibatch order drawn from `data_seed`) applied to `model`,
    one update per iteration: yields the steps done so far, so that a caller can checkpoint, evaluate or time the run
    between updates (an evaluation may switch the model to eval mode and back). `budget`: the recipe compressed to
    that many steps (its schedule decays over them; default: the zoo's own `total_steps`)."""
    zoo_cfg = cfg.zoo
    gen = torch.Generator().manual_seed(data_seed)  # minibatch order
    if zoo_cfg.optimizer == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=zoo_cfg.lr, momentum=zoo_cfg.momentum, weight_decay=zoo_cfg.weight_decay)
    else:
        opt = torch.optim.Adam(model.parameters(), lr=zoo_cfg.lr, weight_decay=zoo_cfg.weight_decay)
    n = len(task.train)
    per_epoch = steps_per_epoch(cfg, task)
    total = budget or total_steps(cfg, task)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + np.cos(np.pi * s / total)) if zoo_cfg.cosine else 1.0)
    step = 0
    model.train()
    while step < total:
        perm = torch.randperm(n, generator=gen)
        for b in range(min(per_epoch, total - step)):
            idx = perm[b * zoo_cfg.batch_size:(b + 1) * zoo_cfg.batch_size]
            loss = F.cross_entropy(model(task.train.x[idx]), task.train.y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            yield step


def train_run(cfg: ExperimentConfig, run: int, zoo_dir: Path, threads: Optional[int] = None,
              device: str = "cpu") -> dict:
    """Train run `run` from seed `zoo.seed + run` on `device`, checkpointing at log-spaced steps; returns its run
    record. The init is drawn on the CPU, so a seed gives the same init on every device. `threads`: torch threads of
    the Ray task (None: the cores shared among `rollout.num_workers` concurrent runs). A run already complete is not
    trained again: Ray re-runs a task whose node died after the run was renamed into place but before its result got
    back, and renaming onto the finished run would fail the zoo."""
    final, tmp = run_dir(zoo_dir, run), zoo_dir / f".run-{run:04d}.tmp"
    if (final / "run.json").is_file():
        return read_run(final / "run.json", run)
    torch.set_num_threads(threads or zoo_threads(cfg))
    zoo_cfg = cfg.zoo
    task = task_from_config(cfg.task).to(device)
    seed = zoo_cfg.seed + run
    model = reference_from_config(cfg.reference, task, seed=seed).to(device)
    data_seed = seed if zoo_cfg.data_seed is None else zoo_cfg.data_seed
    total = total_steps(cfg, task)
    save_at = set(checkpoint_steps(total, zoo_cfg.checkpoints))

    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    records = []

    def save(step: int) -> None:
        loss, reward_acc = evaluate(model, task.reward)
        _, test_acc = evaluate(model, task.test)
        meta = dict(experiment=cfg.name, task=cfg.task.name, reference=reference_name(cfg), run=run, seed=seed,
                    data_seed=data_seed, step=step, t=step / total, loss=loss, reward_accuracy=reward_acc,
                    test_accuracy=test_acc)
        name = f"step-{step:06d}.safetensors"
        save_weights(tmp / name, model.state_dict(), meta)
        records.append(dict(file=f"{final.name}/{name}", step=step, t=step / total, loss=loss,
                            reward_accuracy=reward_acc, test_accuracy=test_acc))

    save(0)
    for step in sgd_steps(cfg, model, task, data_seed):
        if step in save_at:
            save(step)
    record = dict(run=run, seed=seed, data_seed=data_seed, total_steps=total, checkpoints=records)
    save_json(tmp / "run.json", record)
    tmp.rename(final)
    return record


# Fields that do not change a zoo's checkpoints: how many runs it holds, where it and the task's data live, whether
# the data may be downloaded, and `widths` (a mixed zoo is made of single-width zoos, see zoo_variants). They stay out
# of its identity, so moving the data does not orphan a zoo.
NOT_IDENTITY = {"zoo": ("runs", "out", "widths"), "task": ("root", "download")}


# Fields added after zoos were built, at the value every zoo built before them had: a zoo.json without them matches.
SPEC_KEYS_ADDED_LATER = {"reference": {"head": "pool", "init": "pytorch"}}


def _identity(spec: dict) -> dict:
    return {section: {k: v for k, v in {**SPEC_KEYS_ADDED_LATER.get(section, {}), **value}.items()
                      if k not in NOT_IDENTITY.get(section, ())}
            if isinstance(value, dict) else value for section, value in spec.items()}


def zoo_threads(cfg: ExperimentConfig) -> int:
    """Torch threads of each zoo run: `rollout.num_workers` runs train at once while the driver only waits."""
    return torch_threads(cfg.threads, cfg.rollout.num_workers)


def width_name(widths: list[int]) -> str:
    return "w" + "-".join(str(w) for w in widths)


def zoo_variants(cfg: ExperimentConfig) -> list[ExperimentConfig]:
    """The single-width zoos a config's zoo consists of: itself, or with `zoo.widths` one per width list, each an
    ordinary zoo in its own subfolder (so every tool that reads one zoo reads any of them)."""
    if not cfg.zoo.widths:
        return [cfg]
    return [dataclasses.replace(cfg, reference=dataclasses.replace(cfg.reference, widths=list(w)),
                                zoo=dataclasses.replace(cfg.zoo, widths=[], out=str(cfg.zoo_dir / width_name(w))))
            for w in cfg.zoo.widths]


def zoo_at_width(cfg: ExperimentConfig) -> ExperimentConfig | None:
    """The zoo (variant) trained at cfg.reference.widths, or None: the config asks for a width its zoo lacks (as a
    policy's stored experiment does with reference.widths overridden: the zoo folder then holds other widths)."""
    v = next((v for v in zoo_variants(cfg) if v.reference.widths == cfg.reference.widths), None)
    built = v.zoo_dir / "zoo.json" if v is not None else None
    if built is not None and built.is_file() and _identity(read_json(built)).get("reference") != \
            dataclasses.asdict(cfg.reference):
        return None
    return v


def zoo_spec(cfg: ExperimentConfig) -> dict:
    """What a zoo's checkpoints depend on; a zoo folder built with another spec must not be extended."""
    return _identity(dict(experiment=cfg.name, task=dataclasses.asdict(cfg.task),
                          reference=dataclasses.asdict(cfg.reference), zoo=dataclasses.asdict(cfg.zoo)))


def _check_spec(cfg: ExperimentConfig, zoo_dir: Path) -> None:
    """Refuse a zoo folder built with another spec (zoo.json files of older versions held the data's location:
    compared without it)."""
    spec, path = zoo_spec(cfg), zoo_dir / "zoo.json"
    if path.is_file():
        old = read_json(path)
        if not isinstance(old, dict):
            raise CheckpointError(f"{path}: not a zoo spec (expected a mapping)")
        old = _identity(old)
        for section in spec:
            if old.get(section) != spec[section]:
                raise ConfigError(f"{path}: the zoo there was built with a different `{section}` config; "
                                  f"choose another zoo.out or delete that folder")


def build_zoo(cfg: ExperimentConfig, progress: bool = True) -> Path:
    """Train the runs missing from the zoo (as Ray tasks), then write the manifest. Returns the zoo folder.

    Everything that can fail on the user's input (another zoo's folder, a corrupt run.json, missing task data) is
    checked before anything is written: a failed start leaves no zoo.json that would refuse the corrected rerun.
    Each width of a mixed zoo (`zoo.widths`) is an ordinary zoo of its own, built in turn."""
    if cfg.zoo.widths:
        for v in zoo_variants(cfg):
            build_zoo(v, progress)
        return cfg.zoo_dir
    zoo_dir = cfg.zoo_dir
    check_writable_folder(zoo_dir, "zoo folder (zoo.out)")
    _check_spec(cfg, zoo_dir)
    # A finished run is one with a run.json (written last, inside the temp folder renamed into place); read each now,
    # so a corrupt one fails here rather than after hours of training the others.
    todo = [r for r in range(cfg.zoo.runs) if not (run_dir(zoo_dir, r) / "run.json").is_file()]
    for r in sorted(set(range(cfg.zoo.runs)) - set(todo)):
        read_run(run_dir(zoo_dir, r) / "run.json", r)
    task = task_from_config(cfg.task)  # fail fast (one line) on missing data, before any worker starts
    reference_from_config(cfg.reference, task)  # a model this machine cannot hold fails here, before zoo.json
    checkpoint_steps(total_steps(cfg, task), cfg.zoo.checkpoints)  # zero SGD steps, or too many checkpoints, fail here
    if not (zoo_dir / "zoo.json").is_file():
        save_json(zoo_dir / "zoo.json", zoo_spec(cfg))
    if todo:
        init_ray(cfg.rollout.address, num_cpus=cfg.rollout.num_workers)
        gpus = worker_gpus(cfg)
        check_placeable("zoo runs", 1, gpus)
        # A run lost with its node (or worker process) is re-run elsewhere, up to twice; train_run starts it afresh.
        remote = ray.remote(num_cpus=1, num_gpus=gpus, max_retries=2)(train_run)
        threads = zoo_threads(cfg)  # decided here, where the cores were counted, and handed to every task
        pending = [remote.remote(cfg, r, zoo_dir.resolve(), threads, worker_device(gpus)) for r in todo]
        with tqdm(total=cfg.zoo.runs, initial=cfg.zoo.runs - len(todo), desc=f"zoo {cfg.name}", unit="run",
                  disable=not progress) as bar:
            while pending:
                ready, pending = ray.wait(pending, num_returns=1, timeout=cfg.rollout.timeout_s)
                if not ready:
                    raise TimeoutError(f"no zoo run finished within rollout.timeout_s={cfg.rollout.timeout_s}s")
                rec = ray.get(ready[0], timeout=cfg.rollout.timeout_s)
                bar.update(1)
                bar.set_postfix(test_acc=f"{rec['checkpoints'][-1]['test_accuracy']:.3f}")
    write_manifest(cfg, zoo_dir)
    return zoo_dir


def write_manifest(cfg: ExperimentConfig, zoo_dir: Path) -> dict:
    runs = [read_run(run_dir(zoo_dir, r) / "run.json", r) for r in range(cfg.zoo.runs)]
    final = [r["checkpoints"][-1]["test_accuracy"] for r in runs]
    manifest = dict(zoo_spec(cfg), runs=runs, summary=dict(
        runs=len(runs), final_test_accuracy_median=float(np.median(final)),
        final_test_accuracy_min=float(np.min(final)), final_test_accuracy_max=float(np.max(final))))
    save_json(zoo_dir / "manifest.json", manifest)
    return manifest


def load_manifest(zoo_dir: Path) -> dict:
    path = Path(zoo_dir) / "manifest.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no zoo manifest (build the zoo with `python -m trainer.zoo`)")
    manifest = read_json(path)
    if not isinstance(manifest, dict) or not isinstance(manifest.get("runs"), list) or not manifest["runs"]:
        raise CheckpointError(f"{path}: not a zoo manifest (expected a mapping with a non-empty list 'runs')")
    for i, record in enumerate(manifest["runs"]):
        check_run_record(record, f"{path}: runs[{i}]")
    grid = [c["t"] for c in manifest["runs"][0]["checkpoints"]]
    odd = next((r["run"] for r in manifest["runs"] if [c["t"] for c in r["checkpoints"]] != grid), None)
    if odd is not None:
        raise CheckpointError(f"{path}: run {odd} was checkpointed at other progress values than run "
                              f"{manifest['runs'][0]['run']} (one zoo, one checkpoint grid)")
    return manifest


def main(args, cfg: ExperimentConfig) -> None:
    use_threads(cfg.threads, cfg.rollout.num_workers, "concurrent zoo runs; the driver waits")
    build_zoo(cfg)
    for v in zoo_variants(cfg):
        s = load_manifest(v.zoo_dir)["summary"]
        print(f"zoo {v.zoo_dir} ({reference_name(v)}): {s['runs']} runs, final test accuracy median "
              f"{s['final_test_accuracy_median']:.4f} (min {s['final_test_accuracy_min']:.4f}, max "
              f"{s['final_test_accuracy_max']:.4f})")


def cli(argv: list[str] | None = None) -> int:
    return run_main(main, parser("Train the reference-model zoo (checkpoints along each run)."), argv)


if __name__ == "__main__":
    raise SystemExit(cli())
