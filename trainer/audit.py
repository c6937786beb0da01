"""The novelty and fidelity audit behind `python -m trainer.bench audit`: are generated nets new, or copies of zoo
checkpoints, and do they land where SGD from the same init lands?

Hidden units are aligned by weight matching (Ainsworth et al., Git Re-Basin) per unit group of the reference model's
layout, so one code path serves MLP, CNN and ResNet. Every function takes batched state dicts (key -> (N, *shape)).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Mapping, Optional

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from envs.models import reference_from_config
from envs.scoring import batched_logits, weight_keys
from envs.tasks import Task
from policy.sampling import walk
from policy.tokenizer import Layout, Tokenizer
from trainer import paths
from trainer.checkpoints import load_weights
from trainer.config import ExperimentConfig
from trainer.zoo import load_manifest, read_run, train_run, zoo_spec

Blocks = dict[str, torch.Tensor]  # key -> (N, *token_shape), unscaled
# Offset of the data-order seed of the second SGD run from each held-out init: same init, another minibatch order.
REPLICATE_DATA_SEED = 10**9


# --- alignment -------------------------------------------------------------------------------------------------------

def unit_blocks(states: Mapping[str, torch.Tensor], layout: Layout) -> Blocks:
    """Batched state dicts -> (out units, in units, rest) blocks in raw weight units (no tokenizer scaling)."""
    return Tokenizer(layout, {t.key: 1.0 for t in layout.tensors}).encode(states)


def _gather_units(v: torch.Tensor, dim: int, perm: torch.Tensor) -> torch.Tensor:
    """v (N, ...) with the units along `dim` reordered per row: out[n, .., i, ..] = v[n, .., perm[n, i], ..]."""
    shape = [1] * v.dim()
    shape[0], shape[dim] = perm.shape
    return v.gather(dim, perm.view(shape).expand(*v.shape[:dim], perm.shape[1], *v.shape[dim + 1:]))


def permute_blocks(blocks: Blocks, layout: Layout, group: str, perm: torch.Tensor) -> Blocks:
    """Like `policy.tokenizer.permute_units`, but with one permutation per row: perm (N, units of `group`)."""
    out = {}
    for t in layout.tensors:
        v = blocks[t.key]
        if t.out == group:
            v = _gather_units(v, 1, perm)
        if t.inp == group:
            v = _gather_units(v, 2, perm)
        out[t.key] = v
    return out


def _rows(v: torch.Tensor) -> torch.Tensor:
    """(N, units, ...) -> (N, units, everything a unit owns)."""
    return v.reshape(v.shape[0], v.shape[1], -1)


def hidden_groups(layout: Layout) -> list[str]:
    return [g.name for g in layout.groups if not g.fixed]


def align(ref: Blocks, other: Blocks, layout: Layout, rounds: int = 10) -> Blocks:
    """`other` with its hidden units permuted to match `ref` row by row (weight matching: per group, the assignment
    that maximises the summed inner products of the weights the units own and feed, others' permutations held fixed).

    Groups couple through the tensors between them (an MLP's layers, a ResNet's stream), so the groups are revisited
    until no assignment changes or `rounds` is reached. A group alone is solved exactly in one pass: maximising inner
    products is minimising the L2 distance, as a permutation keeps every row's norm.
    """
    n = next(iter(ref.values())).shape[0]
    aligned = {k: v.expand(n, *v.shape[1:]) for k, v in other.items()}
    for _ in range(rounds):
        changed = False
        for g in hidden_groups(layout):
            cost = 0
            for t in layout.tensors:
                if t.out == g:
                    cost = cost + _rows(ref[t.key]) @ _rows(aligned[t.key]).transpose(1, 2)
                if t.inp == g:
                    a, b = _rows(ref[t.key].transpose(1, 2)), _rows(aligned[t.key].transpose(1, 2))
                    cost = cost + a @ b.transpose(1, 2)
            cost = cost.double().numpy()
            sigma = torch.from_numpy(np.stack([linear_sum_assignment(c, maximize=True)[1] for c in cost]))
            if (sigma != torch.arange(sigma.shape[1])).any():
                changed = True
                aligned = permute_blocks(aligned, layout, g, sigma)
        if not changed:
            break
    return aligned


def distance(a: Blocks, b: Blocks) -> torch.Tensor:
    """L2 distance over all generated tensors, per row: (N,) float64."""
    return torch.stack([(a[k].double() - b[k].double()).flatten(1).pow(2).sum(1) for k in a]).sum(0).sqrt()


def aligned_distances(query: Blocks, zoo: Blocks, layout: Layout,
                      exclude_self: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Distances (Q, Z) of every query net to every zoo net: after aligning the query to the zoo net, and as they are.

    `exclude_self`: the query is the zoo itself; each pair is aligned once (the later net to the earlier one) and a
    net's distance to itself is inf, so a row's minimum is its leave-one-out nearest neighbour.
    """
    z, q = next(iter(zoo.values())).shape[0], next(iter(query.values())).shape[0]
    d = torch.full((q, z), float("inf"), dtype=torch.float64)
    raw = d.clone()
    for i in range(q):
        lo = i + 1 if exclude_self else 0
        if lo >= z:
            continue
        ref = {k: v[lo:] for k, v in zoo.items()}
        one = {k: v[i:i + 1] for k, v in query.items()}
        d[i, lo:] = distance(ref, align(ref, one, layout))
        raw[i, lo:] = distance(ref, {k: v.expand_as(ref[k]) for k, v in one.items()})
    if exclude_self:
        d, raw = torch.minimum(d, d.T), torch.minimum(raw, raw.T)
    return d, raw


def noise_baseline(zoo_states: Mapping[str, torch.Tensor], index: torch.Tensor, dist: torch.Tensor,
                   seed: int) -> dict[str, torch.Tensor]:
    """Zoo net `index[i]` plus isotropic Gaussian noise scaled to norm `dist[i]` over all its weights (the audit's
    "training checkpoint plus noise" null model); distance 0 returns the zoo net unchanged."""
    gen = torch.Generator().manual_seed(seed)
    out = {k: v[index] for k, v in zoo_states.items()}
    keys = [k for k, v in out.items() if v.is_floating_point()]  # integer buffers (BN step counts) are no weights
    eps = {k: torch.randn(out[k].shape, generator=gen, dtype=torch.float64) for k in keys}
    norm = torch.stack([e.flatten(1).pow(2).sum(1) for e in eps.values()]).sum(0).sqrt()
    scale = dist.double() / norm
    for k in keys:
        out[k] = (out[k].double() + eps[k] * scale.view(-1, *[1] * (out[k].dim() - 1))).float()
    return out


# --- behaviour -------------------------------------------------------------------------------------------------------

@torch.no_grad()
def split_logits(cfg: ExperimentConfig, task: Task, states: Mapping[str, torch.Tensor], split: str = "test",
                 batch: int = 2048) -> torch.Tensor:
    """Logits of every net on every example of `split`: (N, examples, classes); non-finite rows become NaN."""
    model = reference_from_config(cfg.reference, task).eval()
    data = task.split(split)
    n = next(iter(states.values())).shape[0]
    out = []
    for lo in range(0, n, cfg.rollout.chunk_size):
        params = {k: states[k][lo:lo + cfg.rollout.chunk_size].float() for k in weight_keys(model.state_dict())}
        out.append(torch.cat([batched_logits(model, params, data.x[i:i + batch])
                              for i in range(0, len(data), batch)], 1))
    logits = torch.cat(out)
    return torch.where(logits.isfinite().all(-1, keepdim=True), logits, torch.nan)


def predictions(logits: torch.Tensor) -> torch.Tensor:
    """(N, examples) class indices; an example whose logits are not finite gets -1 (wrong, as in `score_batch`)."""
    return torch.where(logits.isnan().any(-1), -1, logits.argmax(-1))


def error_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of the misclassified-example sets of every net in `a` with every net in `b`: masks (A, n), (B, n) -> (A, B).
    Two nets that make no errors have IoU 1."""
    a, b = a.double(), b.double()
    inter = a @ b.T
    union = a.sum(1, keepdim=True) + b.sum(1) - inter
    return torch.where(union > 0, inter / union.clamp(min=1), 1.0)


def agreement(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Share of examples on which two nets predict the same class: predictions (A, n), (B, n) -> (A, B)."""
    return (a[:, None] == b[None]).double().mean(-1)


def prediction_agreement(pred: torch.Tensor, per_init: int) -> tuple[float, float]:
    """Mean share of test examples on which two nets predict the same class: pairs sampled from the same init, and
    pairs from different inits. pred: (I * per_init, N) class indices, init-major."""
    p = pred.view(-1, per_init, pred.shape[-1])
    same = (p[:, :, None] == p[:, None, :]).float().mean(-1)  # (I, S, S)
    off = ~torch.eye(per_init, dtype=torch.bool)
    agree = (pred[:, None] == pred[None, :]).float().mean(-1)  # (I * S, I * S)
    init = torch.arange(len(pred)) // per_init
    return same[:, off].mean().item(), agree[init[:, None] != init[None, :]].mean().item()


def ensemble_accuracy(logits: torch.Tensor, y: torch.Tensor, k: int) -> list[float]:
    """Accuracy of the averaged softmax of each disjoint group of k nets, in order: (N, n, classes) -> N // k values."""
    probs = logits.softmax(-1)
    return [float((probs[i:i + k].mean(0).argmax(-1) == y).double().mean()) for i in range(0, len(probs) - k + 1, k)]


def ensemble_gain(logits: torch.Tensor, y: torch.Tensor, k: int) -> float:
    """How much an ensemble of k nets beats its members: the mean, over the disjoint groups of k nets in order, of the
    group's ensemble accuracy (`ensemble_accuracy`) minus its nets' mean accuracy. logits (N >= k, n, classes)."""
    m = len(logits) // k * k
    single = (predictions(logits[:m]) == y).double().mean(1).view(-1, k).mean(1)
    return float(np.mean(ensemble_accuracy(logits[:m], y, k)) - single.mean())


# --- the nets compared -----------------------------------------------------------------------------------------------

def zoo_finals(cfg: ExperimentConfig, template: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The final checkpoint of every zoo run, stacked: key -> (runs, *shape)."""
    manifest = load_manifest(cfg.zoo_dir)
    sds = [load_weights(cfg.zoo_dir / r["checkpoints"][-1]["file"], expected=template)[0] for r in manifest["runs"]]
    return {k: torch.stack([sd[k] for sd in sds]) for k in template}


def sgd_cache(cfg: ExperimentConfig) -> Path:
    """Where the audit keeps SGD runs from held-out inits, keyed by the zoo recipe (a changed recipe retrains)."""
    spec = zoo_spec(cfg)
    if spec["reference"]["init"] == "pytorch":  # the key came later: caches of default inits keep their folder
        del spec["reference"]["init"]
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:10]
    return paths.audit_dir(cfg.name) / f"sgd-{digest}"


def sgd_from_seeds(cfg: ExperimentConfig, seeds: list[int], template: Mapping[str, torch.Tensor],
                   replicate: bool = False) -> dict[str, torch.Tensor]:
    """Final weights of the zoo's own training recipe (`trainer.zoo.train_run`) from each held-out init seed; with
    `replicate`, a second run from the same init with another minibatch order. Finished runs are reused."""
    threads = torch.get_num_threads()
    sds = []
    for s in seeds:
        data_seed = s + REPLICATE_DATA_SEED if replicate else cfg.zoo.data_seed
        zoo = dataclasses.replace(cfg.zoo, seed=s, data_seed=data_seed)
        folder = sgd_cache(cfg) / (f"seed-{s:06d}" + ("-replicate" if replicate else ""))
        run = folder / "run-0000" / "run.json"
        if not run.is_file():
            train_run(dataclasses.replace(cfg, zoo=zoo), 0, folder)  # run 0 of a one-run zoo seeded `s`
        last = read_run(run, 0)["checkpoints"][-1]["file"]
        sds.append(load_weights(folder / last, expected=template)[0])
    torch.set_num_threads(threads)  # train_run pins one thread (it is a Ray task in the zoo)
    return {k: torch.stack([sd[k] for sd in sds]) for k in template}


def sgd_checkpoints(cfg: ExperimentConfig, seeds: list[int], template: Mapping[str, torch.Tensor],
                    progress: list[float]) -> list[dict[str, torch.Tensor]]:
    """The cached SGD runs from held-out seeds (`sgd_from_seeds`, trained there if missing) at the zoo-grid
    checkpoints nearest to each `progress` value: one stacked state dict (seeds, *shape) per progress value."""
    sgd_from_seeds(cfg, seeds, template)
    out = [[] for _ in progress]
    for s in seeds:
        folder = sgd_cache(cfg) / f"seed-{s:06d}"
        ckpts = read_run(folder / "run-0000" / "run.json", 0)["checkpoints"]
        for i, t in enumerate(progress):
            c = min(ckpts, key=lambda c: abs(c["t"] - t))
            out[i].append(load_weights(folder / c["file"], expected=template)[0])
    return [{k: torch.stack([sd[k] for sd in sds]) for k in template} for sds in out]


@torch.no_grad()
def posterior_walk(weight_generator, checkpoints: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """A generative policy's walk along its schedule from SGD runs' inits, each step decoding the latent its posterior
    infers from the run's own checkpoint at the step's target: what the decoder makes when it is told where SGD went.
    If these nets score like SGD's, the decoder can write SGD-like nets and any gap of the samples lies in the prior;
    if not, in the posterior or the decoder. `checkpoints`: stacked states at the schedule's progress values."""
    policy = weight_generator.policy
    x = weight_generator.encode(checkpoints[0])
    b = next(iter(x.values())).shape[0]
    for (t1, t2), target in zip(zip(weight_generator.schedule[:-1], weight_generator.schedule[1:]), checkpoints[1:]):
        t1s, t2s = (torch.full((b,), float(t), device=weight_generator.device) for t in (t1, t2))
        h, heads = policy.encode(x, t1s, t2s)
        q_mean, _ = policy.posterior(h, weight_generator.encode(target), t1s, t2s)
        x, _ = policy.decode(x, policy.lift(h, q_mean), heads)
    init = {k: v.to(weight_generator.device) for k, v in checkpoints[0].items()}
    return weight_generator.finish(weight_generator.tokenizer.decode(x, init), init)


@torch.no_grad()
def handoff_walk(weight_generator, checkpoints: list[dict[str, torch.Tensor]], j: int) -> dict[str, torch.Tensor]:
    """SGD's own nets at the schedule's j-th progress value, walked by the policy's mean path over the rest of its
    schedule: which steps make the generated nets' features, the first (from the init) or every one. `checkpoints`:
    stacked states at the schedule's progress values (`sgd_checkpoints`); the first is the inits."""
    n, chunk = len(next(iter(checkpoints[0].values()))), weight_generator.nets_per_chunk()
    parts = []
    for lo in range(0, n, chunk):  # in chunks, as `generate` walks the mean path: memory bounded
        start, init = ({k: v[lo:lo + chunk].to(weight_generator.device) for k, v in c.items()}
                       for c in (checkpoints[j], checkpoints[0]))
        final, _ = walk(weight_generator.policy, weight_generator.encode(start), weight_generator.schedule[j:], True)
        parts.append(weight_generator.finish(weight_generator.tokenizer.decode(final, start), init))
    return {k: torch.cat([p[k].cpu() for p in parts]) for k in parts[0]}


def unit_features(blocks: Blocks, layout: Layout, group: str) -> torch.Tensor:
    """(N, units, features): everything each unit of `group` reads, the rows of every tensor the group owns as output
    (an MLP unit: its incoming weights and its bias)."""
    return torch.cat([_rows(blocks[t.key]) for t in layout.tensors if t.out == group], dim=2)


FUNCTION_PROBE = 2000  # values per unit (test examples x positions) the audit compares units' responses on


def first_layer_responses(model: torch.nn.Module, layout: Layout, nets: Mapping[str, torch.Tensor],
                          x: torch.Tensor) -> torch.Tensor:
    """What each unit of the first layer detects: its pre-activations on inputs x, centred over them, one row per
    unit, (N, units, examples x positions), differentiable in `nets`. Run through `model`'s own first module (the
    module owning the layout's first tensor), so a Linear and a conv layer alike."""
    prefix = layout.tensors[0].key.rsplit(".", 1)[0]
    module = model.get_submodule(prefix)
    params = {k[len(prefix) + 1:]: v for k, v in nets.items() if k.rsplit(".", 1)[0] == prefix}
    z = batched_logits(module, params, x.flatten(1) if isinstance(module, torch.nn.Linear) else x)
    z = z.movedim(2, 1).flatten(2)
    return z - z.mean(2, keepdim=True)


def feature_overlap(features: torch.Tensor, chunk: int = 1024) -> dict:
    """How much N nets share their hidden features, from their units (N, units, F): each unit's largest cosine with
    any unit of another net (near 1 for every unit: the nets are drawn from one dictionary of features), and the
    effective rank of all N x units unit directions pooled (the participation ratio of their singular values)."""
    n, u, _ = features.shape
    units = torch.nn.functional.normalize(features.reshape(n * u, -1).double(), dim=1)
    net = torch.arange(n).repeat_interleave(u)
    best = []
    for lo in range(0, n * u, chunk):
        cos = units[lo:lo + chunk] @ units.T
        cos[net[lo:lo + chunk, None] == net[None, :]] = -1.0  # a net's own units are not another net's
        best.append(cos.max(1).values)
    s2 = torch.linalg.svdvals(units).pow(2)
    return dict(best_cosine=torch.cat(best).tolist(), effective_rank=float(s2.sum() ** 2 / s2.pow(2).sum()))


def summary(values) -> dict[str, float]:
    v = np.asarray(values, dtype=float)
    return dict(median=float(np.median(v)), mean=float(v.mean()), q10=float(np.quantile(v, 0.1)),
                q90=float(np.quantile(v, 0.9)), n=int(v.size))


def off_diagonal_mean(m: torch.Tensor) -> torch.Tensor:
    """Per row, the mean over the other columns of a square matrix: (N, N) -> (N,)."""
    n = m.shape[0]
    return (m.sum(1) - m.diagonal()) / max(1, n - 1)


def audit_nets(cfg: ExperimentConfig, task: Task, layout: Layout, zoo: Mapping[str, torch.Tensor],
               inits: Mapping[str, torch.Tensor], generated: Mapping[str, torch.Tensor],
               sgd: Mapping[str, torch.Tensor], replicate: Mapping[str, torch.Tensor],
               ks: tuple[int, ...] = (1, 4, 8, 16), second: Optional[Mapping[str, torch.Tensor]] = None) -> dict:
    """Every audit measurement of N generated nets against the zoo and against SGD from the same N inits
    (`replicate`: a second SGD run from each init, another data order). Returns per-net lists and their summaries."""
    zb = unit_blocks(zoo, layout)
    blocks = {"generated": unit_blocks(generated, layout), "sgd": unit_blocks(sgd, layout)}
    y = task.test.y
    logits = {name: split_logits(cfg, task, s) for name, s in
              (("zoo", zoo), ("generated", generated), ("sgd", sgd), ("replicate", replicate))}
    preds = {k: predictions(v) for k, v in logits.items()}
    wrong = {k: p != y for k, p in preds.items()}
    acc = {k: (~w).double().mean(1) for k, w in wrong.items()}

    zoo_d, zoo_raw = aligned_distances(zb, zb, layout, exclude_self=True)
    zoo_iou = error_iou(wrong["zoo"], wrong["zoo"]).fill_diagonal_(-1.0)
    novelty = {"zoo": dict(distance=zoo_d.min(1).values.tolist(), unaligned=zoo_raw.min(1).values.tolist(),
                           max_iou=zoo_iou.max(1).values.tolist())}
    nearest = {}
    for name, b in blocks.items():
        d, raw = aligned_distances(b, zb, layout)
        dist, idx = d.min(1)
        nearest[name] = (idx, dist)
        novelty[name] = dict(distance=dist.tolist(), unaligned=raw.min(1).values.tolist(), nearest=idx.tolist(),
                             max_iou=error_iou(wrong[name], wrong["zoo"]).max(1).values.tolist())

    idx, dist = nearest["generated"]
    noisy = noise_baseline(zoo, idx, dist, cfg.seed)
    noise = dict(generated=acc["generated"].tolist(), nearest_zoo=acc["zoo"][idx].tolist(),
                 noise=(predictions(split_logits(cfg, task, noisy)) == y).double().mean(1).tolist())

    init_b = unit_blocks(inits, layout)
    travel = distance(blocks["sgd"], init_b)
    gen_to_sgd, _ = aligned_distances(blocks["generated"], blocks["sgd"], layout)
    rep_b = unit_blocks(replicate, layout)
    fidelity = dict(
        agree_generated_same_init=agreement(preds["generated"], preds["sgd"]).diagonal().tolist(),
        agree_generated_other_init=off_diagonal_mean(agreement(preds["generated"], preds["sgd"])).tolist(),
        agree_sgd_same_init=agreement(preds["replicate"], preds["sgd"]).diagonal().tolist(),
        agree_sgd_other_init=off_diagonal_mean(agreement(preds["replicate"], preds["sgd"])).tolist(),
        sgd_travel=travel.tolist(),
        generated_to_sgd_same_init=(distance(blocks["generated"], blocks["sgd"]) / travel).tolist(),
        generated_to_sgd_other_init=(off_diagonal_mean(gen_to_sgd) / travel).tolist(),
        sgd_to_sgd_same_init=(distance(rep_b, blocks["sgd"]) / travel).tolist(),
        sgd_to_sgd_other_init=(off_diagonal_mean(aligned_distances(rep_b, blocks["sgd"], layout)[0]) / travel).tolist())

    if second is not None:  # a second draw from each init: how much two samples of one init agree
        fidelity["agree_generated_two_draws"] = agreement(predictions(split_logits(cfg, task, second)),
                                                          preds["generated"]).diagonal().tolist()
    n = len(acc["generated"])
    # all n nets in one ensemble too: near the limit of averaging the distribution's predictions
    ensembles = {str(k): dict(generated=ensemble_accuracy(logits["generated"], y, k),
                              sgd=ensemble_accuracy(logits["sgd"], y, k)) for k in sorted({*ks, n}) if k <= n}
    named = (("init", init_b), ("generated", blocks["generated"]), ("sgd", blocks["sgd"]),
             ("zoo", {k: v[:n] for k, v in zb.items()}))
    features = {g: {name: feature_overlap(unit_features(b, layout, g)) for name, b in named}
                for g in hidden_groups(layout)}
    # The first layer's units also by what they detect: weights can differ along directions the data never excites.
    model = reference_from_config(cfg.reference, task).eval()
    with torch.no_grad():
        shape = first_layer_responses(model, layout, {k: v[:1] for k, v in inits.items()}, task.test.x[:1]).shape
        probe = task.test.x[:max(1, FUNCTION_PROBE // shape[2])]
        named_states = (("init", inits), ("generated", generated), ("sgd", sgd), ("zoo", {k: v[:n] for k, v in zoo.items()}))
        function = {name: feature_overlap(first_layer_responses(model, layout, states, probe)) for name, states in named_states}
    return dict(nets=n, zoo_runs=len(acc["zoo"]), test_examples=len(y),
                accuracy={k: v.tolist() for k, v in acc.items()}, novelty=novelty, noise_baseline=noise,
                fidelity=fidelity, ensembles=ensembles, features=features,
                function=dict(group=layout.tensors[0].out, examples=len(probe), **function))
