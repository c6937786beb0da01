"""`python -m trainer.bench audit`: are generated nets new, or copies of zoo checkpoints, and do they land where SGD
from the same init lands? The measures are `trainer.audit`'s; this is the subcommand and its table."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

from envs.tasks import task_from_config
from trainer import audit
from trainer import paths
from trainer.bench.common import generated_policy, emit, figure, held_out_parser, held_out_seeds, paired_difference, \
    seed_number, spread
from trainer.checkpoints import save_json
from trainer.config import ConfigError, ExperimentConfig
from trainer.generator import WeightGenerator, init_states, reference_layout, score_states


def add_parser(sub) -> argparse.ArgumentParser:
    a = held_out_parser(sub, "audit", "novelty (vs the zoo) and fidelity (vs SGD from the same inits) of "
                                      "generated nets", seeds=32, func=run, threads=1)
    a.add_argument("--policy", help="policy.safetensors (default: what `generate` uses, the GRPO policy where one was saved)")
    out = a.add_mutually_exclusive_group()
    out.add_argument("--mean", action="store_true", help="audit the mean path from each init (the default)")
    out.add_argument("--sample", action="store_true", help="audit one draw per init, as `generate` draws (a share "
                                                           "generate.redraw of the init re-drawn), and a second "
                                                           "draw's agreement with it")
    a.add_argument("--latent", action="store_true", help="with --sample: the draws sample the policy's latent too "
                                                         "(as `generate --sample` does), whatever imitation measured "
                                                         "better")
    a.add_argument("--sample-seed", type=seed_number, default=0, help="seed of the draws (default 0)")
    a.add_argument("--json", help="per-net results (default: --out with .json, else artifacts/bench/<experiment>/"
                                  "audit.json)")
    return a


def audit_table(r: dict) -> str:
    """The audit's results (`trainer.audit.audit_nets` plus run info) as markdown."""
    nov, fid, noise = r["novelty"], r["fidelity"], r["noise_baseline"]
    zoo_median = float(np.median(nov["zoo"]["distance"]))
    seeds = r["seeds"]
    lines = [f"{r['experiment']}: audit of the nets ({r.get('output', 'the mean path')}) of {r['policy']} from "
             f"{len(seeds)} held-out init seeds "
             f"{seeds[0]}..{seeds[-1]}, against the final checkpoints of the zoo's {r['zoo_runs']} runs and SGD with "
             f"the zoo's recipe from the same inits; {r['test_examples']} test examples. Each cell: median "
             f"[10th, 90th percentile] over nets. Distances are L2 over all weights, after aligning hidden units to "
             f"each zoo net by weight matching.", "",
             "| nets | to the nearest zoo net | / zoo-to-zoo median | unaligned | max IoU of test errors with a "
             "zoo net | test accuracy |", "| --- | --- | --- | --- | --- | --- |"]
    for key, name, acc in (("generated", f"generated ({r.get('output', 'the mean path')})", "generated"),
                           ("sgd", "SGD from the same held-out inits", "sgd"),
                           ("zoo", "zoo nets, leave-one-out", "zoo")):
        d = nov[key]["distance"]
        lines.append(f"| {name} | {spread(d)} | {np.median(d) / zoo_median:.2f} | {spread(nov[key]['unaligned'])} | "
                     f"{spread(nov[key]['max_iou'])} | {spread(r['accuracy'][acc])} |")
    lines += ["", "| noise baseline | test accuracy | vs generated, per net |", "| --- | --- | --- |",
              f"| generated | {spread(noise['generated'])} | |",
              f"| its nearest zoo net + Gaussian noise at the generated net's distance | {spread(noise['noise'])} | "
              f"{paired_difference(noise['generated'], noise['noise'])} |",
              f"| its nearest zoo net | {spread(noise['nearest_zoo'])} | "
              f"{paired_difference(noise['generated'], noise['nearest_zoo'])} |"]
    lines += ["", "| fidelity to the init | prediction agreement, same init | other inits (mean) | L2 distance / "
              "SGD(i)'s travel from init(i), same init | other inits (aligned, mean) |",
              "| --- | --- | --- | --- | --- |",
              f"| generated(i) vs SGD(i) | {spread(fid['agree_generated_same_init'])} | "
              f"{spread(fid['agree_generated_other_init'])} | {spread(fid['generated_to_sgd_same_init'])} | "
              f"{spread(fid['generated_to_sgd_other_init'])} |",
              f"| SGD(i) with another data order vs SGD(i) | {spread(fid['agree_sgd_same_init'])} | "
              f"{spread(fid['agree_sgd_other_init'])} | {spread(fid['sgd_to_sgd_same_init'])} | "
              f"{spread(fid['sgd_to_sgd_other_init'])} |"]
    if "agree_generated_two_draws" in fid:
        lines.append(f"| a second draw from init(i) vs generated(i) | {spread(fid['agree_generated_two_draws'])} "
                     f"| | | |")
    if "posterior_walk" in r:
        lines += ["", "| where the samples' gap sits | test accuracy |", "| --- | --- |",
                  f"| SGD from the same inits | {spread(r['accuracy']['sgd'])} |",
                  f"| posterior walk: each step decodes the latent the posterior infers from SGD(i)'s own checkpoint "
                  f"| {spread(r['posterior_walk'])} |",
                  f"| generated ({r['output']}: latents from the prior) | {spread(r['accuracy']['generated'])} |",
                  "", "If the posterior walk scores like SGD, the decoder can write SGD's nets and the gap lies in "
                  "the prior; if not, in the posterior or the decoder."]
    lines += [
              "", f"SGD's travel from the init: {spread(fid['sgd_travel'])} (L2).", "",
              "| ensemble of k nets (averaged softmax) | generated (mean test accuracy) | SGD, same inits | "
              "ensembles |",
              "| --- | --- | --- | --- |"]
    for k, e in r["ensembles"].items():
        lines.append(f"| k = {k} | {np.mean(e['generated']):.4f} | {np.mean(e['sgd']):.4f} | {len(e['sgd'])} |")
    lines += ["", "The last row, all the nets in one ensemble, is near the limit of averaging the distribution's "
              "predictions: more nets of the same kind cannot add beyond it."]
    if "features" in r:
        lines += ["", "| hidden features | unit group | a unit's best cosine with another net's units | share above 0.9 "
                  "| effective rank of the pooled units |", "| --- | --- | --- | --- | --- |"]
        names = {"init": "the inits", "generated": "generated", "sgd": "SGD from the same inits",
                 "zoo": f"zoo nets (the first {min(r['nets'], r['zoo_runs'])})"}
        for group, per in r["features"].items():
            for key, name in names.items():
                best = per[key]["best_cosine"]
                lines.append(f"| {name} | {group} | {spread(best)} | {np.mean(np.asarray(best) > 0.9):.2f} | "
                             f"{per[key]['effective_rank']:.1f} |")
        if "function" in r:
            fn = r["function"]
            lines += ["", f"| what the first layer's units detect (pre-activations on {fn['examples']} test examples, "
                      "centred) | unit group | best cosine with another net's units | share above 0.9 | effective rank |",
                      "| --- | --- | --- | --- | --- |"]
            for key, name in names.items():
                best = fn[key]["best_cosine"]
                lines.append(f"| {name} | {fn['group']} | {spread(best)} | {np.mean(np.asarray(best) > 0.9):.2f} | "
                             f"{fn[key]['effective_rank']:.1f} |")
        lines += ["", "How to read it: where nearly every unit has a cosine near 1 and the pool's effective rank is "
                  "low, the nets are assembled from one dictionary of features, and their ensemble has little to "
                  "average. The second table compares units by what they do on data, which weights can hide: SGD "
                  "leaves its init's noise on inputs the data never excites."]
    if "handoff" in r:
        lines += ["", f"| walk (mean path) | test accuracy (mean) | ensembles of 8 (mean) | all {r['nets']} in one | "
                  "hidden features: best cosine | share above 0.9 | effective rank |",
                  "| --- | --- | --- | --- | --- | --- | --- |"]
        for h in r["handoff"]:
            hand = "the line from the init to SGD's final, at s" if r.get("flow") else "SGD to t"
            name = ("the policy's own walk from the init" if h["sgd_to"] == 0 else "SGD alone" if h["steps"] == 0
                    else f"{hand} = {h['sgd_to']:.4g}, then the policy's last {h['steps']} step(s)")
            ens = f"{np.mean(h['ensemble_8']):.4f}" if h["ensemble_8"] else "-"
            best = h["features"]["best_cosine"]
            lines.append(f"| {name} | {np.mean(h['accuracy']):.4f} | {ens} | {h['ensemble_all']:.4f} | "
                         f"{np.median(best):.3f} | {np.mean(np.asarray(best) > 0.9):.2f} | "
                         f"{h['features']['effective_rank']:.1f} |")
        lines += ["", "How to read it: SGD's own nets from the same inits, at each point of the policy's schedule, "
                  "walked on by the policy. If the features stay SGD's (diverse) only when the policy's first step "
                  "is skipped, the first step makes the dictionary; if every step brings it back, every step does. "
                  "A flow policy (policy.flow) is handed the point of the straight line from each init to SGD's final "
                  "from it, at the schedule's points: the states its imitation was fitted on. Where its own walk "
                  "falls far below these rows, its states drift off the lines."]
    return "\n".join(lines)


def handoff(cfg: ExperimentConfig, task, layout, weight_generator: WeightGenerator, ckpts: list[dict], j: int) -> dict:
    """SGD to the schedule's j-th point, then the policy's remaining steps (j = 0: the policy's own walk; j = K: SGD
    alone): accuracy, ensembles of 8 and of all, and the first hidden group's feature overlap."""
    nets = ckpts[j] if j == len(ckpts) - 1 else audit.handoff_walk(weight_generator, ckpts, j)
    logits = audit.split_logits(cfg, task, nets)
    y = task.test.y
    group = audit.hidden_groups(layout)[0]
    return dict(sgd_to=weight_generator.schedule[j], steps=len(ckpts) - 1 - j,
                accuracy=(audit.predictions(logits) == y).double().mean(1).tolist(),
                ensemble_8=audit.ensemble_accuracy(logits, y, 8) if len(logits) >= 8 else [],
                ensemble_all=audit.ensemble_accuracy(logits, y, len(logits))[0],
                features=audit.feature_overlap(audit.unit_features(audit.unit_blocks(nets, layout), layout, group)))


def run(args: argparse.Namespace, cfgs: list[ExperimentConfig]) -> dict:
    """Generated nets from held-out inits against the zoo (novelty) and against SGD from the same inits (fidelity)."""
    cfg = cfgs[0]
    if args.latent and not args.sample:
        raise ConfigError("--latent: it samples the latent of --sample's draws; add --sample")
    seeds = held_out_seeds(args, cfg)
    policy = args.policy or generated_policy(cfg)
    weight_generator = WeightGenerator.load(policy, cfg=cfg)
    task = task_from_config(cfg.task)
    template, layout = reference_layout(cfg, task)
    zoo = audit.zoo_finals(cfg, template.state_dict())
    t = time.perf_counter()
    inits = init_states(cfg, task, seeds)
    sampling = args.sample
    latent = args.latent or weight_generator.default_output == "samples"
    second = None
    if sampling:  # two draws per init, as `generate` draws them: the first audited, the pair's agreement measured
        pair = weight_generator.draw(inits, 2, torch.Generator().manual_seed(args.sample_seed), sample_latent=latent)
        generated, second = ({k: v[i::2] for k, v in pair.items()} for i in (0, 1))
    else:
        generated, _ = weight_generator.generate(inits, mean_only=True, trajectory=False)
    print(f"audit: training SGD from {len(seeds)} held-out inits, twice (cached in {audit.sgd_cache(cfg)}) ...",
          file=sys.stderr, flush=True)
    sgd = audit.sgd_from_seeds(cfg, seeds, template.state_dict())
    replicate = audit.sgd_from_seeds(cfg, seeds, template.state_dict(), replicate=True)
    print(f"audit: aligning and scoring against {next(iter(zoo.values())).shape[0]} zoo nets ...", file=sys.stderr,
          flush=True)
    results = dict(experiment=cfg.name, policy=str(policy), seeds=seeds,
                   output=(f"one draw per init, {cfg.generate.redraw:g} of it re-drawn"
                           + (", the latent sampled" if latent else "")) if sampling else "the mean path",
                   **audit.audit_nets(cfg, task, layout, zoo, inits, generated, sgd, replicate, second=second))
    if weight_generator.policy.cfg.flow:  # a flow's state at s is a point of the line from the init to the final
        ckpts = [{k: (1 - s) * v + s * sgd[k] if v.is_floating_point() else v for k, v in inits.items()}
                 for s in weight_generator.schedule]  # counters (BatchNorm's) stay the init's
    else:
        ckpts = audit.sgd_checkpoints(cfg, seeds, template.state_dict(), weight_generator.schedule)
    results["flow"] = weight_generator.policy.cfg.flow
    policy_cfg = weight_generator.policy.cfg
    if policy_cfg.generative and policy_cfg.posterior:  # the decoder told where SGD went: is the gap in the prior, or in the decoder?
        walked = audit.posterior_walk(weight_generator, ckpts)
        results["posterior_walk"] = score_states(cfg, task, walked, "test")
    results["handoff"] = [handoff(cfg, task, layout, weight_generator, ckpts, j) for j in range(len(ckpts))]
    results["seconds"] = time.perf_counter() - t
    json_path = Path(args.json or (Path(args.out) if args.out else paths.bench_dir(cfg.name) / "audit.md").with_suffix(".json"))
    save_json(json_path, results)
    table = audit_table(results)
    emit(table, args.out)
    print(f"audit: {results['seconds']:.0f} s; per-net numbers in {json_path}", file=sys.stderr)
    figures = []
    if args.plots:
        from trainer import plots  # matplotlib: slow to import, only when figures are asked for

        nov = results["novelty"]
        rows = {"generated -> nearest zoo net": "generated", "SGD, held-out inits -> nearest zoo net": "sgd",
                "zoo net -> nearest other zoo net": "zoo"}
        figures.append(plots.histograms({k: nov[v]["distance"] for k, v in rows.items()},
                                        f"{cfg.name}: novelty in weights (hidden units aligned)", "L2 distance",
                                        figure(args, cfg.name, "audit-distance")))
        figures.append(plots.histograms({k: nov[v]["max_iou"] for k, v in rows.items()},
                                        f"{cfg.name}: novelty in behaviour",
                                        "highest IoU of test errors with a zoo net",
                                        figure(args, cfg.name, "audit-iou")))
        ens = results["ensembles"]
        ks = [int(k) for k in ens]
        figures.append(plots.curves({"averaged softmax of k nets": {
            name: (ks, [float(np.mean(ens[str(k)][key])) for k in ks])
            for name, key in (("generated", "generated"), ("SGD, same inits", "sgd"))}},
            f"{cfg.name}: ensembles", "k nets", "test accuracy", figure(args, cfg.name, "audit-ensembles"), logx=True))
    return dict(table=table, figures=figures, results=results)
