"""`python -m trainer.bench grpo`: GRPO's held-out gain over the imitation policy against the evaluations it spent,
per exploration mode (`GRPO_MODES`), over independent runs; its results feed `bench report`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

from envs.tasks import task_from_config
from rollout.pool import RolloutPool
from trainer import paths
from trainer.bench.common import count, default_policy, emit, figure, held_out_parser, held_out_seeds
from trainer.config import ConfigError, ExperimentConfig, load_config
from trainer.generator import WeightGenerator, mean_path_accuracy

# The exploration modes `bench grpo` compares, each as overrides of the experiment's config with the settings it was
# tuned with (docs/HISTORY.md). Every mode but "config*" pins its group, epochs, where it explores and how far back its
# gradient goes (`TUNED`), so that a config whose own GRPO recipe differs (MNIST: one antithetic pair per init, exploring
# the last step, the gradient through the whole walk) leaves the modes as they were tuned.
TUNED = ["grpo.group_size=16", "grpo.epochs=2", "grpo.explore=all", "grpo.backprop=last",  # each mode's tuning
         "grpo.input_noise=0"]
UNITS = ["grpo.noise=units", "grpo.latent_std=0.3", "grpo.cosine=true", "grpo.beta_kl=0.01", "grpo.reward=neg_loss",
         "grpo.reward_batch=fresh"]
GRPO_MODES = {
    "iid": TUNED + ["grpo.noise=iid", "grpo.estimator=score", "grpo.trainable=latent", "grpo.lr=3e-4",
                    "grpo.cosine=false", "grpo.beta_kl=0.1", "grpo.reward=accuracy", "grpo.reward_batch=fixed"],
    "units": TUNED + UNITS + ["grpo.estimator=score", "grpo.trainable=latent", "grpo.lr=1e-3"],
    # the workers' reward gradients through the last step's latent, with the units settings
    "pathwise": TUNED + UNITS + ["grpo.estimator=pathwise", "grpo.trainable=latent", "grpo.lr=1e-3"],
    # the score function at the last step alone, without and with the reward's linearisation as a control variate
    "units-last": TUNED + UNITS + ["grpo.explore=last", "grpo.estimator=score", "grpo.trainable=latent", "grpo.lr=1e-3"],
    "score_cv": TUNED + UNITS + ["grpo.explore=last", "grpo.estimator=score_cv", "grpo.trainable=latent",
                                 "grpo.lr=1e-3"],
    # the same reward gradients into the whole policy (trunk and weight head), at the rate that suits it, through the
    # last step of the walk
    "pathwise-policy": TUNED + UNITS + ["grpo.estimator=pathwise", "grpo.trainable=policy", "grpo.lr=3e-5"],
    # the same, the reward gradient through every step of the walk (the exact gradient)
    "pathwise-walk": TUNED + UNITS + ["grpo.estimator=pathwise", "grpo.trainable=policy", "grpo.lr=3e-5",
                                      "grpo.backprop=walk"],
    # the experiment's own GRPO settings, with each estimator (a generative policy explores at its prior's std)
    "config": [],
    "config-pathwise": ["grpo.estimator=pathwise"],
}
DEFAULT_MODES = ("iid", "units", "pathwise", "pathwise-policy")


def add_parser(sub) -> argparse.ArgumentParser:
    gr = held_out_parser(sub, "grpo", "GRPO's held-out gain over imitation against evaluations spent, per "
                                      "exploration mode", seeds=96, func=run, threads=1)
    gr.add_argument("--policy", help="the imitation policy GRPO starts from (default: the experiment's)")
    gr.add_argument("--modes", nargs="+", default=list(DEFAULT_MODES),
                    help=f"modes among {', '.join(GRPO_MODES)} (default: {' '.join(DEFAULT_MODES)})")
    gr.add_argument("--runs", type=count, default=3, help="independent GRPO runs per mode (default 3)")
    gr.add_argument("--iterations", type=count, default=40, help="GRPO iterations per run (default 40)")
    gr.add_argument("--evaluations", type=count, help="instead of --iterations: each mode's runs get the iterations "
                                                       "that spend this many evaluations (inits x group per iteration), "
                                                       "so that modes with different groups meet at equal budgets")
    gr.add_argument("--points", type=count, default=4, help="budgets along each run measured on the held-out seeds")
    return gr


def mode_iterations(args: argparse.Namespace, mode_cfg: ExperimentConfig) -> int:
    """A mode's iterations per run: --iterations, or the iterations that spend --evaluations with its group."""
    if args.evaluations is None:
        return args.iterations
    return max(1, round(args.evaluations / (mode_cfg.grpo.inits_per_iter * mode_cfg.grpo.group_size)))


def run(args: argparse.Namespace, cfgs: list[ExperimentConfig]) -> dict:
    """Held-out gain over the imitation policy against the evaluations GRPO spent, per exploration mode, over
    `--runs` independent runs (their own sampling seed and init seeds): mean +- s.e. over runs of each run's mean
    per-seed gain, at `--points` budgets along each run."""
    from trainer.grpo import GRPOTrainer  # it imports torchvision: seconds that other subcommands should not pay

    cfg = cfgs[0]
    seeds = held_out_seeds(args, cfg)
    policy = args.policy or default_policy(cfg)
    unknown = [m for m in args.modes if m not in GRPO_MODES]
    if unknown:
        raise ConfigError(f"--modes: unknown mode {unknown[0]!r} (valid: {', '.join(GRPO_MODES)})")
    config = (args.config or args.default_configs)[0]
    # every mode's settings checked before the first run: a mode the config cannot take fails now, not an hour in
    iterations = {mode: mode_iterations(args, load_config(config, args.overrides + GRPO_MODES[mode]))
                  for mode in args.modes}
    task = task_from_config(cfg.task)
    base = np.asarray(mean_path_accuracy(WeightGenerator.load(policy, cfg=cfg), task, seeds)[0])
    curves: dict[str, dict[int, list[float]]] = {}
    walls: dict[str, dict[int, list[float]]] = {}
    agreement: dict[str, list[tuple[float, float]]] = {}  # per mode, at the end of each run: (same init, across)
    imitation_agreement = None
    with RolloutPool(cfg) as pool:
        for mode in args.modes:
            curves[mode], walls[mode] = {0: [0.0] * args.runs}, {0: [0.0] * args.runs}
            checkpoints = sorted({max(1, round(iterations[mode] * (i + 1) / args.points)) for i in range(args.points)})
            for r in range(args.runs):
                run_cfg = load_config(config, args.overrides + GRPO_MODES[mode] + [
                    f"seed={r}", f"grpo.seed_start={100000 * (r + 1)}", f"grpo.iterations={iterations[mode]}",
                    f"grpo.eval_every={iterations[mode]}", f"grpo.save_every={iterations[mode]}"])
                run_dir = paths.bench_dir(cfg.name) / f"grpo-{mode}-{r}"
                trainer = GRPOTrainer(run_cfg, policy, run_dir, progress=False, pool=pool)
                for it in tqdm(checkpoints, desc=f"grpo {mode} run {r}"):
                    trainer.train(until=it)  # one run, measured along the way: its schedule is untouched
                    gain = (np.asarray(mean_path_accuracy(trainer.weight_generator, task, seeds)[0]) - base).mean() * 100
                    curves[mode].setdefault(trainer.evaluations, []).append(float(gain))
                    walls[mode].setdefault(trainer.evaluations, []).append(trainer.elapsed)
                end = trainer.evaluate(trainer.weight_generator)
                agreement.setdefault(mode, []).append((end["same"], end["across"]))
                if imitation_agreement is None:
                    imitation_agreement = trainer.evaluate(trainer.imitation)
    lines = [f"{cfg.name}: GRPO from {policy}; held-out gain of the mean path over the imitation policy (test accuracy, "
             f"mean over seeds {seeds[0]}..{seeds[-1]}, imitation median {np.median(base):.4f}); mean +- s.e. over "
             f"{args.runs} runs", "", "| mode | evaluations | GRPO wall (s, mean) | gain (pts) | per run |",
             "| --- | --- | --- | --- | --- |"]
    summary = {}
    for mode, curve in curves.items():
        xs, ys, es = [], [], []
        for evals, gains in sorted(curve.items()):
            g = np.asarray(gains)
            se = g.std(ddof=1) / np.sqrt(len(g)) if len(g) > 1 else float("nan")
            xs.append(evals), ys.append(g.mean()), es.append(se)
            lines.append(f"| {mode} | {evals} | {np.mean(walls[mode][evals]):.0f} | {g.mean():+.2f} +- {se:.2f} | "
                         f"{', '.join(f'{v:+.2f}' for v in g)} |")
        summary[mode] = (xs, ys, es)
    lines += ["", "Diversity: the share of test predictions on which nets sampled from one init (and from different "
              "inits) agree, at the end of each run (`diversity/*` in TensorBoard): imitation policy "
              f"{imitation_agreement['same']:.4f} ({imitation_agreement['across']:.4f})"]
    lines += [f"- {mode}: " + ", ".join(f"{a:.4f} ({b:.4f})" for a, b in agreement[mode]) for mode in agreement]
    table = "\n".join(lines)
    emit(table, args.out)
    figures = []
    if args.plots:
        from trainer import plots  # matplotlib: slow to import, only when figures are asked for

        figures.append(plots.curves({cfg.name: summary}, f"{cfg.name}: GRPO's held-out gain over imitation "
                                    f"({len(seeds)} seeds; mean +- s.e. over {args.runs} runs)",
                                    "evaluations spent (generated nets scored)", "gain (test accuracy points)",
                                    figure(args, cfg.name, "grpo")))
    # Run as `python -m trainer.bench`, argv[0] is this package's __main__.py: record the command as it was typed.
    command = "python -m trainer.bench " + " ".join(sys.argv[1:]) if Path(sys.argv[0]).match("bench/__main__.py") \
        else (f"python -m trainer.bench grpo --config {config} --runs {args.runs} " +
              (f"--evaluations {args.evaluations}" if args.evaluations else f"--iterations {args.iterations}"))
    results = paths.bench_dir(cfg.name) / "grpo.json"
    results.parent.mkdir(parents=True, exist_ok=True)
    results.write_text(json.dumps({"command": command, "table": table, "figures": [str(f) for f in figures],
                                   "curves": {m: dict(zip(["evaluations", "gain", "se"], v))
                                              for m, v in summary.items()}}, indent=1, default=float))
    return dict(table=table, figures=figures)
