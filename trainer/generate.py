"""`python -m trainer.generate`: write generated weights (safetensors) from fresh seeds or a user's init file, and
report their accuracy on the reward and test splits."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from envs.tasks import task_from_config
from trainer import paths
from trainer.audit import split_logits
from trainer.checkpoints import (CheckpointError, check_writable_folder, load_weights, read_json, save_json,
                                 save_weights)
from trainer.cli import folder_name, guarded, use_threads
from trainer.config import DEFAULT_CONFIG, ConfigError, load_config
from rollout.pool import RolloutPool
from trainer.device import worker_gpus
from trainer.generator import WeightGenerator, init_states, lowest_loss, reference_layout, score_states, unbatch
from trainer.zoo import reference_name


MAX_SEEDS = 10**6  # one generated net, or one SGD run, per seed: a range beyond this is a typo
BEST_OF_NETS = 4096  # candidate nets held at once by the best-of choice (inits go in blocks of BEST_OF_NETS // N)


def parse_seeds(text: str, flag: str = "--seeds", what: str = "seed") -> list[int]:
    """'3' -> [3]; '0..7' -> [0, ..., 7] (inclusive); '1,5,9' -> [1, 5, 9]. Errors name `flag` and `what` it lists."""
    span = ".." in text
    try:
        values = [int(s) for s in text.split("..")] if span else [int(s) for s in text.split(",")]
    except ValueError:
        values = []
    if not values or (span and len(values) != 2):
        raise ConfigError(f"{flag} {text!r}: expected N, A..B or A,B,C")
    bad = [s for s in values if not 0 <= s < 2**63]
    if bad:  # seeds seed torch's 64-bit generators; a negative one would also name a file "seed--00003"
        raise ConfigError(f"{flag} {text!r}: {what} {bad[0]} is not in [0, 2^63)")
    if span and values[1] - values[0] >= MAX_SEEDS:  # checked before the range is built
        raise ConfigError(f"{flag} {text!r}: {values[1] - values[0] + 1} {what}s, more than {MAX_SEEDS}")
    seeds = list(range(values[0], values[1] + 1)) if span else values
    if not seeds:
        raise ConfigError(f"{flag} {text!r}: no {what}s")
    repeated = sorted({s for s in seeds if seeds.count(s) > 1})
    if repeated:  # one file per seed: a repeat would overwrite its twin and still be counted in the report
        raise ConfigError(f"{flag} {text!r}: {what} {repeated[0]} given more than once")
    return seeds


def _name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def load_init(path: Path, template: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A user's init file, checked against the reference model. Integer weights are an error (an int32 init would run
    and score ~0.08 without a word); other float dtypes are cast to the model's, and the cast is said."""
    sd, _ = load_weights(path, expected=template)
    cast = []
    for k, want in template.items():
        have = sd[k].dtype
        if not want.is_floating_point() or have == want.dtype:
            continue
        if not have.is_floating_point:
            raise CheckpointError(f"{path}: tensor {k!r} has dtype {_name(have)}, expected a floating-point dtype "
                                  f"(the model's is {_name(want.dtype)})")
        sd[k] = sd[k].to(want.dtype)
        if not torch.isfinite(sd[k]).all():
            raise CheckpointError(f"{path}: tensor {k!r} overflows {_name(want.dtype)}")
        cast.append(f"{k} {_name(have)} -> {_name(want.dtype)}")
    if cast:
        print(f"note: {path}: cast {', '.join(cast)}", file=sys.stderr)
    return sd


def earlier_nets(out: Path) -> list[Path]:
    """The nets an earlier generate wrote to `out`, as its report.json lists them: this run replaces them. Weight
    files that no report lists are not generate's to remove: refused before any work."""
    report, listed = out / "report.json", []
    if report.is_file():
        try:
            listed = [Path(s["file"]).name for s in read_json(report)["samples"]]
        except (KeyError, TypeError):
            raise CheckpointError(f"{report}: not a report of `python -m trainer.generate`; choose another --out") \
                from None
    strays = sorted(p.name for p in out.glob("*.safetensors") if p.name not in listed) if out.is_dir() else []
    if strays:
        raise CheckpointError(f"--out {out}: holds {strays[0]}" + (f" and {len(strays) - 1} more" if len(strays) > 1
                              else "") + " that no report.json of generate lists; choose another --out")
    return [out / name for name in listed]


def output_mode(args: argparse.Namespace, weight_generator: WeightGenerator) -> tuple[str, int, bool]:
    """("mean" | "draws" | "best", nets drawn per init, whether the draws sample the policy's latent): the flags, else
    the best of `generate.best_of` draws."""
    latent = args.sample or weight_generator.default_output == "samples"
    if args.mean:
        return "mean", 1, False
    if args.samples is not None:
        return "draws", args.samples, latent
    n = args.best_of if args.best_of is not None else 1 if args.sample else weight_generator.cfg.generate.best_of
    return ("best" if n > 1 else "draws"), n, latent


def describe(mode: str, draws: int, latent: bool, redraw: float) -> str:
    if mode == "mean":
        return "the mean path from each init"
    what = (f"draw{'s' if draws > 1 else ''} ({redraw:g} of the init's entries re-drawn, then the "
            f"{'sampled walk' if latent else 'mean path'})")
    if mode == "best":
        return f"the best of {draws} {what} per init, by loss on the reward split"
    return f"{draws} {what} per init" if draws > 1 else f"one {what} per init"


def check_counts(args: argparse.Namespace) -> None:
    if not 0 <= args.sample_seed < 2**63:
        raise ConfigError(f"--sample-seed {args.sample_seed}: expected a value in [0, 2^63)")
    for flag, n in (("--samples", args.samples), ("--best-of", args.best_of)):
        if n is None:
            continue
        if n < 1:
            raise ConfigError(f"{flag} {n}: expected at least 1")
        if n > MAX_SEEDS:  # nets per init: 2^63 of them overflowed torch's size count
            raise ConfigError(f"{flag} {n}: expected at most {MAX_SEEDS}")
    if args.samples is not None and args.best_of is not None:
        raise ConfigError("--samples and --best-of: choose one (N nets per init, or the best of N per init)")
    if args.mean and (args.samples is not None or args.best_of is not None):
        raise ConfigError("--mean: the mean path is one net per init; drop --samples / --best-of, or --mean")


def best_draws(weight_generator: WeightGenerator, init: dict[str, torch.Tensor], draws: int, gen: torch.Generator,
               latent: bool) -> tuple[dict[str, torch.Tensor], list[dict]]:
    """Each init's draw with the lowest reward-split loss among `draws`, scored by the Ray pool, and how it was chosen.
    Inits go in blocks, so that at most BEST_OF_NETS candidates are held at once (only the chosen ones are kept)."""
    n = next(iter(init.values())).shape[0]
    block = max(1, BEST_OF_NETS // draws)
    kept, chosen = [], []
    pool = RolloutPool(weight_generator.cfg, gpus_per_worker=worker_gpus(weight_generator.cfg))
    try:
        for lo in range(0, n, block):
            part = {k: v[lo:lo + block] for k, v in init.items()}
            candidates = weight_generator.draw(part, draws, gen, sample_latent=latent)
            scores = pool.score(candidates)
            rows = next(iter(part.values())).shape[0]
            loss, acc = scores.loss.view(rows, draws), scores.accuracy.view(rows, draws)
            best_nets, best = lowest_loss(candidates, loss)
            kept.append(best_nets)
            chosen += [dict(best_of=draws, chosen_draw=int(b), candidate_reward_loss=l.tolist(),
                            candidate_reward_accuracy=a.tolist()) for b, l, a in zip(best, loss, acc)]
    finally:
        pool.close()
    return {k: torch.cat([p[k] for p in kept]) for k in kept[0]}, chosen


def run(args: argparse.Namespace) -> dict:
    check_counts(args)
    seeds = None if args.init else parse_seeds(args.seeds)  # argument errors first, before anything loads
    cfg = load_config(args.config or DEFAULT_CONFIG, [])
    policy_path = Path(args.policy or paths.best_policy(cfg.name))
    weight_generator = WeightGenerator.load(policy_path, args.overrides)
    if args.config and weight_generator.cfg.name != cfg.name:  # the policy's stored experiment is what runs: say it, don't ignore
        raise ConfigError(f"--policy {policy_path} belongs to experiment {weight_generator.cfg.name}, --config {args.config} is "
                          f"experiment {cfg.name}: pass a {cfg.name} policy, or drop --config")
    cfg = weight_generator.cfg
    use_threads(cfg.threads)
    out = Path(args.out) if args.out else paths.generated_dir(args.name or cfg.name)
    check_writable_folder(out, "--out")
    earlier = earlier_nets(out)
    task = task_from_config(cfg.task)
    template, _ = reference_layout(cfg, task)
    if args.init:
        init_path = Path(args.init)
        sd = load_init(init_path, template.state_dict())
        init = {k: v[None] for k, v in sd.items()}
        ids, sources = [init_path.stem + "-generated"], [{"init": str(init_path)}]
    else:
        zoo = range(cfg.zoo.seed, cfg.zoo.seed + cfg.zoo.runs)
        seen = [s for s in seeds if s in zoo]
        if seen:
            print(f"warning: seeds {seen[:5]} are zoo training seeds; their accuracy is not a held-out measure",
                  file=sys.stderr)
        init = init_states(cfg, task, seeds)
        ids, sources = [f"seed-{s:06d}" for s in seeds], [{"seed": s} for s in seeds]

    mode, draws, latent = output_mode(args, weight_generator)
    asked = args.mean or args.sample or args.samples is not None or args.best_of is not None
    output = describe(mode, draws, latent, cfg.generate.redraw)
    print(f"output: {output} ({'as asked' if asked else 'the default: generate.best_of'})", file=sys.stderr)
    gen = torch.Generator().manual_seed(args.sample_seed)
    chosen = None
    if mode == "mean":
        final, _ = weight_generator.generate(init, mean_only=True, trajectory=False)
    elif mode == "best":
        final, chosen = best_draws(weight_generator, init, draws, gen, latent)
    else:
        final = weight_generator.draw(init, draws, gen, sample_latent=latent)
    if mode == "draws" and draws > 1:  # every draw is a net of its own
        ids = [f"{i}-draw{d:02d}" for i in ids for d in range(draws)]
        sources = [dict(src, draw=d) for src in sources for d in range(draws)]
    reward_acc = score_states(cfg, task, final, "reward")
    test_acc = score_states(cfg, task, final, "test")
    finite = torch.stack([v.flatten(1).isfinite().all(1) for v in final.values() if v.is_floating_point()]).all(0)
    non_finite = int((~finite).sum())
    if non_finite:
        print(f"warning: {non_finite} of {len(finite)} generated nets have non-finite weights and score 0 (is the init "
              f"far from the PyTorch default inits the policy was trained on?)", file=sys.stderr)
    if earlier:  # one folder, one report: the earlier run's nets go, so report.json lists every net in the folder
        print(f"note: {out}: replacing the {len(earlier)} nets of an earlier generate", file=sys.stderr)
        for f in earlier:
            f.unlink(missing_ok=True)
    samples = []
    for i, (ident, src) in enumerate(zip(ids, sources)):
        file = out / f"{ident}.safetensors"
        how = dict(src, **(chosen[i] if chosen else {}))
        meta = dict(experiment=cfg.name, task=cfg.task.name, reference=reference_name(cfg), policy=str(policy_path),
                    schedule=weight_generator.schedule, mean_path=mode == "mean", reward_accuracy=reward_acc[i],
                    test_accuracy=test_acc[i], **{k: v for k, v in how.items() if not k.startswith("candidate_")})
        save_weights(file, unbatch(final, i), meta)
        samples.append(dict(file=str(file), **how, reward_accuracy=reward_acc[i], test_accuracy=test_acc[i]))
    ensemble = None  # every finite net written, class probabilities averaged: what the nets give as one ensemble
    if int(finite.sum()) >= 2:  # summed chunk by chunk: memory stays one chunk's logits however many nets
        kept = {k: v[finite.to(v.device)].cpu() for k, v in final.items() if v.is_floating_point()}
        chunk, n = cfg.rollout.chunk_size, int(finite.sum())
        probs = sum(split_logits(cfg, task, {k: v[i:i + chunk] for k, v in kept.items()}).softmax(-1).sum(0)
                    for i in range(0, n, chunk))
        ensemble = float((probs.argmax(-1) == task.split("test").y).double().mean())
    summary = dict(count=len(samples), non_finite=non_finite, steps=len(weight_generator.schedule) - 1, schedule=weight_generator.schedule,
                   mean_path=mode == "mean", output=output, redraw=0.0 if mode == "mean" else cfg.generate.redraw,
                   latent_sampled=latent, sample_seed=args.sample_seed,
                   policy=str(policy_path), test_accuracy_median=float(np.median(test_acc)),
                   test_accuracy_mean=float(np.mean(test_acc)), reward_accuracy_median=float(np.median(reward_acc)),
                   test_accuracy_ensemble=ensemble)
    report = {"samples": samples, "summary": summary}
    save_json(out / "report.json", report)

    print(f"{'sample':<28} {'reward acc':>10} {'test acc':>9}")
    for s, ident in zip(samples, ids):
        print(f"{ident:<28} {s['reward_accuracy']:>10.4f} {s['test_accuracy']:>9.4f}")
    print(f"{len(samples)} nets in {summary['steps']} steps -> {out}  (test accuracy median "
          f"{summary['test_accuracy_median']:.4f}" + ("" if ensemble is None else
                                                      f"; the nets as one ensemble, softmax averaged: {ensemble:.4f}") + ")")
    return report


def cli(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Generate trained weights from fresh inits with a trained policy.")
    p.add_argument("--config", help=f"experiment (default {DEFAULT_CONFIG}): names the default policy path; the "
                                    f"policy must belong to it")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override the policy's stored experiment config, e.g. generate.schedule=[0,0.5,1]")
    p.add_argument("--policy", help="policy.safetensors (default: the GRPO policy, artifacts/runs/<experiment>-grpo/, "
                                    "where one was saved, else the imitation policy, "
                                    "artifacts/runs/<experiment>-imitate/)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--seeds", default="0..7", help="fresh PyTorch default inits from these seeds: N, A..B or A,B,C")
    src.add_argument("--init", help="a user's own init of the reference model (safetensors)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--mean", action="store_true", help="the deterministic mean path from each init itself "
                                                          "(default: the best of generate.best_of draws per init)")
    mode.add_argument("--sample", action="store_true", help="draws sample the policy's latent too (how GRPO "
                                                            "explores); alone: one such draw per init")
    p.add_argument("--samples", type=int, default=None, metavar="N", help="N draws per init, each saved")
    p.add_argument("--best-of", type=int, default=None, metavar="N",
                   help="N draws per init scored on the reward split by the Ray pool; the lowest loss is saved "
                        "(default: generate.best_of, 16)")
    p.add_argument("--sample-seed", type=int, default=0, help="seed of the draws' noise")
    p.add_argument("--name", type=folder_name,
                   help="output folder name under artifacts/generated/ (default: the experiment)")
    p.add_argument("--out", help="output folder (overrides --name)")
    args = p.parse_args(argv)
    return guarded(lambda: run(args))


if __name__ == "__main__":
    raise SystemExit(cli())
