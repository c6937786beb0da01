"""`python -m trainer.zoo`: train reference models from many seeds (Ray tasks) and save checkpoints along each run.

Layout: `<zoo>/run-0003/step-000128.safetensors` (+ `run.json`) and `<zoo>/manifest.json`. A run is written to a
hidden temp folder and renamed when complete, so re-running skips finished runs and never sees half-written ones.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Iterator

import numpy as np
import ray
import torch
import torch.nn.functional as F
from tqdm import tqdm

from envs.models import reference_from_config
from envs.scoring import evaluate
from envs.spec import ConfigError
from envs.tasks import task_from_config
from rollout.cluster import init_ray
from trainer.checkpoints import save_json, save_weights
from trainer.cli import parser, run_main
from trainer.config import ExperimentConfig
from trainer.device import worker_device, worker_gpus


def checkpoint_steps(total: int, n: int) -> list[int]:
    """`n` log-spaced steps in [0, total], always with 0 (the init) and `total` (fewer if steps collide)."""
    assert total >= 1 and n >= 2, (total, n)
    inner = np.geomspace(1, total, n - 1).round().astype(int)
    return sorted({0, total, *inner.tolist()})


def reference_name(cfg: ExperimentConfig) -> str:
    r = cfg.reference
    return f"{r.family}{r.widths}" + (f"x{r.blocks_per_stage}" if r.family == "resnet" else "")


def run_dir(zoo_dir: Path, run: int) -> Path:
    return zoo_dir / f"run-{run:04d}"


def total_steps(cfg: ExperimentConfig, task) -> int:
    """Optimizer steps of one run of the zoo's recipe: whole minibatches per epoch x epochs."""
    return len(task.train) // cfg.zoo.batch_size * cfg.zoo.epochs


def sgd_steps(cfg: ExperimentConfig, model: torch.nn.Module, task, data_seed: int) -> Iterator[int]:
    """The zoo's recipe (optimizer, learning-rate schedule, minibatch order drawn from `data_seed`) applied to `model`,
    one update per iteration: yields the steps done so far, so that a caller can checkpoint, evaluate or time the run
    between updates (an evaluation may switch the model to eval mode and back)."""
    zc = cfg.zoo
    gen = torch.Generator().manual_seed(data_seed)  # minibatch order
    if zc.optimizer == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=zc.lr, momentum=zc.momentum, weight_decay=zc.weight_decay)
    else:
        opt = torch.optim.Adam(model.parameters(), lr=zc.lr, weight_decay=zc.weight_decay)
    n = len(task.train)
    per_epoch = n // zc.batch_size
    total = total_steps(cfg, task)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + np.cos(np.pi * s / total)) if zc.cosine else 1.0)
    step = 0
    model.train()
    for _ in range(zc.epochs):
        perm = torch.randperm(n, generator=gen)
        for b in range(per_epoch):
            idx = perm[b * zc.batch_size:(b + 1) * zc.batch_size]
            loss = F.cross_entropy(model(task.train.x[idx]), task.train.y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            yield step


def train_run(cfg: ExperimentConfig, run: int, zoo_dir: Path, device: str = "cpu") -> dict:
    """Train run `run` from seed `zoo.seed + run` on `device`, checkpointing at log-spaced steps; returns its run
    record. The init is drawn on the CPU, so a seed gives the same init on every device."""
    torch.set_num_threads(1)  # one Ray task per core
    zc = cfg.zoo
    task = task_from_config(cfg.task).to(device)
    seed = zc.seed + run
    model = reference_from_config(cfg.reference, task, seed=seed).to(device)
    data_seed = seed if zc.data_seed is None else zc.data_seed
    total = total_steps(cfg, task)
    save_at = set(checkpoint_steps(total, zc.checkpoints))

    final, tmp = run_dir(zoo_dir, run), zoo_dir / f".run-{run:04d}.tmp"
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


def zoo_spec(cfg: ExperimentConfig) -> dict:
    """What a zoo's checkpoints depend on; a zoo folder built with another spec must not be extended."""
    zoo = {k: v for k, v in dataclasses.asdict(cfg.zoo).items() if k not in ("runs", "out")}
    return dict(experiment=cfg.name, task=dataclasses.asdict(cfg.task), reference=dataclasses.asdict(cfg.reference), zoo=zoo)


def _check_spec(cfg: ExperimentConfig, zoo_dir: Path) -> None:
    spec, path = zoo_spec(cfg), zoo_dir / "zoo.json"
    if path.is_file():
        old = json.loads(path.read_text())
        for section in spec:
            if old.get(section) != spec[section]:
                raise ConfigError(f"{path}: the zoo there was built with a different `{section}` config; "
                                  f"choose another zoo.out or delete that folder")
    else:
        save_json(path, spec)


def build_zoo(cfg: ExperimentConfig, progress: bool = True) -> Path:
    """Train the runs missing from the zoo (as Ray tasks), then write the manifest. Returns the zoo folder."""
    zoo_dir = cfg.zoo_dir
    zoo_dir.mkdir(parents=True, exist_ok=True)
    _check_spec(cfg, zoo_dir)
    task_from_config(cfg.task)  # fail fast (one line) on missing data, before any worker starts
    todo = [r for r in range(cfg.zoo.runs) if not (run_dir(zoo_dir, r) / "run.json").is_file()]
    if todo:
        init_ray(cfg.rollout.address, num_cpus=cfg.rollout.num_workers)
        gpus = worker_gpus(cfg)
        remote = ray.remote(num_cpus=1, num_gpus=gpus, max_retries=2)(train_run)
        pending = [remote.remote(cfg, r, zoo_dir.resolve(), worker_device(gpus)) for r in todo]
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
    runs = [json.loads((run_dir(zoo_dir, r) / "run.json").read_text()) for r in range(cfg.zoo.runs)]
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
    return json.loads(path.read_text())


def main(args, cfg: ExperimentConfig) -> None:
    zoo_dir = build_zoo(cfg)
    s = load_manifest(zoo_dir)["summary"]
    print(f"zoo {zoo_dir}: {s['runs']} runs, final test accuracy median {s['final_test_accuracy_median']:.4f} "
          f"(min {s['final_test_accuracy_min']:.4f}, max {s['final_test_accuracy_max']:.4f})")


if __name__ == "__main__":
    raise SystemExit(run_main(main, parser("Train the reference-model zoo (checkpoints along each run).")))
