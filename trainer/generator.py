"""What imitate, generate and grpo share: the reference model's layout, fresh inits, the policy with its tokenizer and
schedule (`WeightGenerator`), and scoring of generated weights."""

from __future__ import annotations

import copy
import dataclasses
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Optional, Sequence

import numpy as np
import torch

from envs.models import reference_from_config
from envs.objectives import Objective, score_objective
from envs.scoring import Scores, recompute_bn_stats
from envs.spec import ReferenceConfig, drop_removed_keys, from_dict
from envs.tasks import Task, task_from_config
from policy.model import DenoisingPolicy, PolicyConfig, Sampling
from policy.sampling import Step, cat_steps, walk
from policy.tokenizer import Layout, Tokenizer, transfer_scales
from trainer.checkpoints import CheckpointError, load_policy_files, policy_file, read_metadata, save_policy
from trainer.config import ConfigError, ExperimentConfig, apply_override, config_from_dict, config_to_dict
from trainer.device import resolve_device


# Floats in the policy's widest activation per chunk of the mean path (see `WeightGenerator.generate`): 8 MB.
GENERATION_ACTIVATION_BUDGET = 2**21


def reference_layout(cfg: ExperimentConfig, task: Task) -> tuple[torch.nn.Module, Layout]:
    return layout_of(cfg.reference, task)


def layout_of(reference: ReferenceConfig, task: Task) -> tuple[torch.nn.Module, Layout]:
    template = reference_from_config(reference, task)
    return template, Layout(template.unit_layout(), {k: v.shape for k, v in template.state_dict().items()})


def has_batchnorm(layout: Layout) -> bool:
    return any(t.kind == "bn_mean" for t in layout.tensors)


def bn_recompute_inputs(cfg: ExperimentConfig, task: Task) -> Optional[torch.Tensor]:
    """The train-split examples BatchNorm statistics are recomputed on: the first `bn_recompute_batches` x
    `zoo.batch_size` of a permutation seeded by the experiment, the same for every net (None: not recomputed)."""
    if not cfg.generate.bn_recompute_batches:
        return None
    n = min(len(task.train), cfg.generate.bn_recompute_batches * cfg.zoo.batch_size)
    idx = torch.randperm(len(task.train), generator=torch.Generator().manual_seed(cfg.seed))[:n]
    return task.train.x[idx]


def init_states(cfg: ExperimentConfig, task: Task, seeds: Iterable[int]) -> dict[str, torch.Tensor]:
    """PyTorch default inits of the reference model from each seed, batched: key -> (len(seeds), *shape)."""
    sds = [reference_from_config(cfg.reference, task, seed=int(s)).state_dict() for s in seeds]
    return {k: torch.stack([sd[k] for sd in sds]) for k in sds[0]}


FLOW_GRID = [i / 64 for i in range(65)]
"""The points a flow policy's schedule may stop at (`PolicyConfig.flow`): its time is the position on a line from the
init to the final weights, not the zoo's checkpoint progress."""


def walk_grid(policy_cfg: PolicyConfig, zoo_grid: Sequence[float]) -> list[float]:
    """The progress values a policy's schedule snaps to: the zoo's checkpoint grid, or a flow policy's `FLOW_GRID`."""
    return list(FLOW_GRID) if policy_cfg.flow else list(zoo_grid)


def snap_schedule(schedule: Sequence[float], grid: Sequence[float]) -> list[float]:
    """Each schedule point moved to the nearest progress value the zoo has checkpoints at. Two points that snap to
    one are an error (the walk would quietly lose a step)."""
    g = np.asarray(grid)
    snapped = [float(g[np.abs(g - s).argmin()]) for s in schedule]
    if len(set(snapped)) < len(snapped):
        raise ConfigError(f"config key generate.schedule: {list(schedule)} snaps to {snapped} on the zoo's checkpoint "
                          f"grid {[round(t, 4) for t in grid]}: points closer than the grid's spacing merge")
    return snapped


def repeat_groups(batch: Mapping[str, torch.Tensor], group_size: int) -> dict[str, torch.Tensor]:
    """key -> (B, ...) to key -> (B * G, ...), each row repeated G times in a row (group-major)."""
    return {k: v.repeat_interleave(group_size, dim=0) for k, v in batch.items()}


def unbatch(states: Mapping[str, torch.Tensor], i: int) -> dict[str, torch.Tensor]:
    return {k: v[i] for k, v in states.items()}


def split_scores(cfg: ExperimentConfig, task: Task, states: Mapping[str, torch.Tensor], split: str,
                 objective: Optional[Objective] = None) -> Scores:
    """Scores of every weight set in a batch on a split (batched vmap scoring, on the device the weights are on);
    non-finite sets score 0 and loss +inf. `objective`: the nets as it deploys them (None: plain), input noise from
    the experiment's seed (the same for every net: paired)."""
    device = next(iter(states.values())).device
    model = reference_from_config(cfg.reference, task).to(device)
    return score_objective(model, states, task.split(split).to(device), objective, cfg.seed, cfg.rollout.chunk_size)


def score_states(cfg: ExperimentConfig, task: Task, states: Mapping[str, torch.Tensor], split: str,
                 objective: Optional[Objective] = None) -> list[float]:
    """Accuracy of every weight set in a batch on a split (`split_scores`)."""
    return split_scores(cfg, task, states, split, objective).accuracy.tolist()


def redraw_entries(init: Mapping[str, torch.Tensor], share: float, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Batched inits (key -> (B, *shape)), each floating entry replaced, with probability `share`, by an entry of the
    same net's same tensor drawn uniformly at random. Where a tensor's entries are i.i.d. (PyTorch's default inits,
    Kaiming's), the result is again an init of the same scheme, whatever the scheme (a user's own init included);
    constant tensors (zero biases, BatchNorm's ones) stay as they are. Drawn on the CPU, so a seed gives the same
    draws on any device."""
    out = {}
    for k, v in init.items():
        if not v.is_floating_point() or share == 0:
            out[k] = v
            continue
        flat = v.flatten(1).cpu()
        pick = torch.randint(flat.shape[1], flat.shape, generator=generator)
        swap = torch.rand(flat.shape, generator=generator, dtype=torch.float64) < share
        out[k] = torch.where(swap, flat.gather(1, pick), flat).view_as(v).to(v.device)
    return out


def init_norm_rows(layout: Layout, states: Mapping[str, torch.Tensor],
                   init: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Every weight that feeds a BatchNorm, rescaled per output unit to the norm of that unit's row in the init, with
    its bias and the BatchNorm's running mean (x s) and variance (x s^2): the same function, exactly up to BatchNorm's
    eps, since BatchNorm divides the scale out. A walk leaves that scale free (no loss sees it), and the ResNet
    policy's drifts to 20-40x SGD's; here it comes back to the init's, as SGD keeps it (1.2-1.6x), so L2 distances and
    SGD from a generated net mean what they do for SGD's. All-zero rows stay. Batched: key -> (B, *shape)."""
    out = dict(states)
    for w, biases, mean, var in layout.batchnormed():
        norm = states[w].flatten(2).norm(dim=2)
        s = torch.where(norm > 0, init[w].to(norm).flatten(2).norm(dim=2) / norm.clamp_min(1e-30), torch.ones_like(norm))
        out[w] = states[w] * s.view(*s.shape, *[1] * (states[w].dim() - 2))
        for k in biases + [mean]:
            out[k] = states[k] * s
        out[var] = states[var] * s ** 2
    return out


def lowest_loss_draw(loss: torch.Tensor) -> torch.Tensor:
    """loss (B, N) -> per init, the index of its draw with the lowest loss (a NaN or +inf loss, a non-finite net's, is
    never chosen over a finite one; ties go to the first)."""
    return loss.nan_to_num(nan=float("inf")).argmin(1)


def lowest_loss(draws: Mapping[str, torch.Tensor], loss: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Each init's draw with the lowest loss (`lowest_loss_draw`): draws key -> (B * N, ...) group-major, loss (B, N).
    Returns the B chosen state dicts and the index of each among its init's draws."""
    best = lowest_loss_draw(loss)
    rows = torch.arange(loss.shape[0]) * loss.shape[1] + best
    return {k: v[rows.to(v.device)] for k, v in draws.items()}, best


def mean_path_accuracy(weight_generator: "WeightGenerator", task: Task, seeds: Sequence[int], split: str = "test",
                       objective: Optional[Objective] = None) -> tuple[list[float], dict[str, torch.Tensor]]:
    """The held-out measure: fresh inits from `seeds`, the policy's deterministic mean path, accuracy on `split`
    (of the nets as `objective` deploys them; None: plain). Returns (accuracy per seed, the generated state dicts)."""
    final, _ = weight_generator.generate(init_states(weight_generator.cfg, task, seeds), mean_only=True, trajectory=False)
    return score_states(weight_generator.cfg, task, final, split, objective), final


def sample_accuracy(weight_generator: "WeightGenerator", task: Task, seeds: Sequence[int], generator: torch.Generator,
                    split: str = "test", objective: Optional[Objective] = None) -> list[float]:
    """Accuracy on `split` of one sampled net per init seed (the policy's stochastic walk), as `objective` deploys it."""
    final, _ = weight_generator.generate(init_states(weight_generator.cfg, task, seeds), generator=generator, trajectory=False)
    return score_states(weight_generator.cfg, task, final, split, objective)


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v)


def _json(path: Path) -> Path:
    path = Path(path)
    return (path / "policy.json") if path.is_dir() else path.with_suffix(".json")


def check_spec(spec: dict, path: Path) -> tuple[PolicyConfig, Sampling]:
    """A policy.json checked as far as it can be without the reference model: its `policy` and `sampling` sections
    (types and keys, as a config is), a schedule and a progress grid of ascending values in [0, 1], a known default
    output. Returns the policy's config and how it samples; a hand-edited file fails here in one line naming the key."""
    try:
        stored = dict(spec["policy"]) if isinstance(spec["policy"], dict) else spec["policy"]
        sampling = spec.get("sampling")
        if sampling is None and isinstance(stored, dict):  # saved before `sampling` had its own section
            sampling = {k: stored.pop(k) for k in ("noise", "temperature") if k in stored}
            sampling["latent_std"] = stored.get("latent_std")
        policy_cfg = from_dict(PolicyConfig, stored, "policy.")
        sampling = from_dict(Sampling, sampling, "sampling.")
    except ConfigError as e:
        raise CheckpointError(f"{_json(path)}: {e}") from None
    for key in ("schedule", "grid"):
        v = spec[key]
        if not (isinstance(v, list) and len(v) >= 2 and all(_number(x) and 0 <= x <= 1 for x in v)
                and all(a < b for a, b in zip(v, v[1:]))):
            raise CheckpointError(f"{_json(path)}: {key!r} must be a list of at least 2 ascending progress values in "
                                  f"[0, 1], got {str(v)[:60]}")
    schedule, grid = spec["schedule"], spec["grid"]
    if grid[0] != 0 or grid[-1] != 1 or schedule[0] != 0 or schedule[-1] != 1 or not set(schedule) <= set(grid):
        raise CheckpointError(f"{_json(path)}: 'schedule' must run from 0 to 1 on points of 'grid' (the zoo's "
                              f"checkpoint progress, from 0 to 1), got schedule {schedule} on grid {grid}")
    if spec.get("default_output", "mean") not in ("mean", "samples"):
        raise CheckpointError(f"{_json(path)}: 'default_output' must be \"mean\" or \"samples\", got "
                              f"{spec['default_output']!r}")
    if not isinstance(spec["scales"], dict) or not isinstance(spec["layout"], dict):
        raise CheckpointError(f"{_json(path)}: 'scales' and 'layout' must be mappings")
    return policy_cfg, sampling


# The sections of a stored experiment that say what the policy was made for: a policy.json lacking one would load with
# the defaults in its place.
EXPERIMENT_SECTIONS = ("name", "task", "reference", "generate")


def stored_experiment(spec: dict, path: Path) -> ExperimentConfig:
    """The experiment a policy.json stores, checked as a config is (its device back to "auto": where the policy was
    trained is no concern here); a hand-edited one fails in one line naming the file."""
    data = drop_removed_keys(copy.deepcopy(spec["experiment"]))  # keys an older version saved
    missing = [k for k in EXPERIMENT_SECTIONS if k not in data]
    if missing:
        raise CheckpointError(f"{_json(path)}: 'experiment' has no {missing[0]!r} (expected "
                              f"{', '.join(EXPERIMENT_SECTIONS)}: what the policy was made for)")
    data["device"] = "auto"
    try:
        return config_from_dict(data)
    except ConfigError as e:
        raise CheckpointError(f"{_json(path)}: in 'experiment': {e}") from None


PARAMS_ADDED_LATER = ("latent_mean.", "unit_value", "unit_out", "rest_left.")
"""policy parameters a policy saved before them may lack: all zero-initialised, so it loads with its old function"""


@dataclass
class WeightGenerator:
    """A policy with everything needed to use it: its experiment, tokenizer, schedule and the zoo's progress grid.
    Inits may come from any device: they are moved to the policy's, and the generated weights stay there."""

    cfg: ExperimentConfig
    policy: DenoisingPolicy
    tokenizer: Tokenizer
    schedule: list[float]
    grid: list[float]
    bn_inputs: Optional[torch.Tensor] = field(default=None, repr=False)
    """examples BatchNorm statistics are recomputed on after generation (generate.bn_recompute_batches), or None"""
    default_output: str = "mean"
    """what `generate` writes unless told: "samples" or "mean" (the mean path), whichever imitation measured better
    on its held-out seeds (a regressor's samples are not nets: the mean path)"""

    @property
    def layout(self) -> Layout:
        return self.tokenizer.layout

    @property
    def device(self) -> torch.device:
        return self.policy.kind_value.device

    def encode(self, init: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return self.tokenizer.encode({k: v.to(self.device) for k, v in init.items()})

    def generate(self, init: Mapping[str, torch.Tensor], mean_only: bool = False,
                 generator: Optional[torch.Generator] = None,
                 antithetic: bool = False, grad: bool = False,
                 trajectory: bool = True) -> tuple[dict[str, torch.Tensor], list[Step]]:
        """Batched inits (key -> (B, *shape)) -> generated state dicts and the trajectory's steps (token blocks);
        `grad` keeps the graph from the policy's parameters to the generated weights. `trajectory=False` returns no
        steps (an empty list), which spares the chunked mean path copying every step's tokens back together."""
        tokens = self.encode(init)
        init = {k: v.to(self.device) for k, v in init.items()}  # frozen entries come through to the output
        b = next(iter(tokens.values())).shape[0]
        chunk = self.nets_per_chunk()
        if not mean_only or grad or b <= chunk:  # a draw's noise depends on the batch it is drawn for: walk it whole
            final, steps = walk(self.policy, tokens, self.schedule, mean_only, generator, antithetic, grad)
            return self.finish(self.tokenizer.decode(final, init), init, grad), steps if trajectory else []
        # The mean path treats rows independently: in chunks its activations stay in cache and off fresh mmaps
        # (measured on MNIST: 64 nets at once cost 1.35x the CPU time per net of chunks of 16 to 32).
        parts = [walk(self.policy, {k: v[i:i + chunk] for k, v in tokens.items()}, self.schedule, True)
                 for i in range(0, b, chunk)]
        final = {k: torch.cat([p[0][k] for p in parts]) for k in tokens}
        steps = [cat_steps(s) for s in zip(*(p[1] for p in parts))] if trajectory else []
        return self.finish(self.tokenizer.decode(final, init), init), steps

    def draw(self, init: Mapping[str, torch.Tensor], draws: int, generator: torch.Generator,
             sample_latent: bool = False) -> dict[str, torch.Tensor]:
        """`draws` nets per init (key -> (B * draws, ...), group-major): each walks from its init with a share
        `generate.redraw` of the entries re-drawn (`redraw_entries`), by the mean path, or with the policy's own
        sampling noise as well when `sample_latent`. The generator is as sensitive to its init as SGD is: the draws are
        as accurate as the mean path and differ the way SGD's runs from one init do."""
        start = redraw_entries(repeat_groups(init, draws), self.cfg.generate.redraw, generator)
        return self.generate(start, mean_only=not sample_latent, generator=generator, trajectory=False)[0]

    def nets_per_chunk(self) -> int:
        """Nets whose widest activation (the node MLP's hidden layer over the largest unit group) fits the budget."""
        widest = max(g.size for g in self.layout.groups) * 2 * self.policy.cfg.dim
        return max(1, GENERATION_ACTIVATION_BUDGET // widest)

    def finish(self, states: dict[str, torch.Tensor], init: Optional[Mapping[str, torch.Tensor]] = None,
               grad: bool = False) -> dict[str, torch.Tensor]:
        """Generated state dicts as they leave the generator: the weights BatchNorm normalises at their init's scale
        (`init_norm_rows`, given the `init`: the same function), and with generate.bn_recompute_batches their
        BatchNorm statistics recomputed on task data. Not under `grad`: the task loss differentiates the walk's own."""
        if grad:
            return states
        if init is not None:
            states = init_norm_rows(self.layout, states, init)
        if self.bn_inputs is None:
            return states
        template = reference_from_config(self.cfg.reference, task_from_config(self.cfg.task))
        return recompute_bn_stats(template, states, self.bn_inputs, self.cfg.zoo.batch_size)

    def rollout(self, init: Mapping[str, torch.Tensor], group_size: int, generator: Optional[torch.Generator] = None,
                antithetic: bool = False, explore: str = "all") -> tuple[dict[str, torch.Tensor], list[Step]]:
        """G trajectories from each of B inits -> (B * G) generated state dicts in group-major order, and all K steps.

        `explore` says which steps sample: "all"; "first" (the later steps follow the mean from each sample); "last" (the
        first K - 1 follow the mean path, once per init). A step whose input a group shares (the first sampled step)
        keeps it once per group: its `x` has B rows, its `y` B * G; a mean-path step before it has B rows for both."""
        k = len(self.schedule) - 1
        a, b = {"all": (0, k), "first": (0, 1), "last": (k - 1, k)}[explore]
        tokens, before = walk(self.policy, self.encode(init), self.schedule[:a + 1], mean_only=True)
        final, sampled = walk(self.policy, repeat_groups(tokens, group_size), self.schedule[a:b + 1], False, generator,
                              antithetic)
        sampled[0] = dataclasses.replace(sampled[0], x=tokens)
        final, after = walk(self.policy, final, self.schedule[b:], mean_only=True)
        frozen = repeat_groups({k: v.to(self.device) for k, v in init.items()}, group_size)
        return self.finish(self.tokenizer.decode(final, frozen)), before + sampled + after

    def spec(self, **extra) -> dict:
        return dict(experiment=config_to_dict(self.cfg), policy=dataclasses.asdict(self.policy.cfg),
                    sampling=dataclasses.asdict(self.policy.sampling),
                    layout=self.layout.raw, scales=self.tokenizer.scales, schedule=self.schedule, grid=self.grid,
                    default_output=self.default_output, **extra)

    def save(self, folder: str | Path, **extra) -> Path:
        return save_policy(folder, self.policy, self.spec(**extra))

    @classmethod
    def load(cls, path: str | Path, overrides: Optional[list[str]] = None,
             cfg: Optional[ExperimentConfig] = None) -> "WeightGenerator":
        """Load policy.safetensors + policy.json onto the experiment's device (the weights are read on the CPU, then
        moved: a policy saved on a GPU loads on a CPU-only machine). The experiment is `cfg` if given, else the stored
        one with `overrides` (`a.b=c`) applied, its device back to "auto" (where it was trained is no concern here);
        either way it must describe the reference model the policy was made for. It walks its own schedule; `overrides`
        may ask for another, and a `cfg`'s (a bench's, GRPO's) re-times it at the same step count only."""
        weights, spec = load_policy_files(path)
        policy_cfg, sampling = check_spec(spec, Path(path))
        stored = stored_experiment(spec, Path(path))
        explicit = cfg is None  # then a changed schedule can only be the caller's own --set
        if cfg is None:
            data = drop_removed_keys(copy.deepcopy(spec["experiment"]))  # saved by an older version
            data["device"] = "auto"
            for o in overrides or []:
                apply_override(data, o)
            cfg = config_from_dict(data)
        task = task_from_config(cfg.task)
        template, layout = reference_layout(cfg, task)
        scales = spec["scales"]
        if spec["layout"] != layout.raw:
            # No policy parameter depends on a hidden group's size, so any widths of the same structure will do; the
            # tokenizer's scales, fitted at the stored widths, carry over by generate.width_scales.
            try:
                _, fitted = layout_of(stored.reference, task)
            except (ConfigError, KeyError, AssertionError, ValueError, RuntimeError):
                fitted = None
            if fitted is None or fitted.raw != spec["layout"] or fitted.structure() != layout.structure():
                raise CheckpointError(f"{path}: policy was made for another reference model than "
                                      f"{cfg.reference.family}{cfg.reference.widths} on {cfg.task.name}")
            scales = transfer_scales(scales, fitted, layout, cfg.generate.width_scales)
        if cfg.generate.bn_recompute_batches and not has_batchnorm(layout):
            raise ConfigError(f"config key generate.bn_recompute_batches: {cfg.reference.family}"
                              f"{cfg.reference.widths} has no BatchNorm statistics to recompute")
        if not set(layout.shapes) <= set(scales) or not all(_number(v) and v > 0 for v in scales.values()):
            raise CheckpointError(f"{_json(path)}: 'scales' must give a number > 0 for each of the reference model's "
                                  f"tensors ({', '.join(layout.shapes)})")
        tokenizer = Tokenizer(layout, scales)
        policy = DenoisingPolicy(policy_cfg, layout, tokenizer.centres())
        policy.sampling = sampling
        expected = policy.state_dict()
        # A policy saved before the parameters in PARAMS_ADDED_LATER existed lacks them: keep the fresh (zero) ones,
        # which leave its function as it was. A file that counts its tensors (every save since) lacks none.
        counted = "tensors" in read_metadata(policy_file(path))
        missing = [k for k in expected if k not in weights and (counted or not k.startswith(PARAMS_ADDED_LATER))]
        unexpected = [k for k in weights if k not in expected]
        wrong = [k for k in weights if k in expected and weights[k].shape != expected[k].shape]
        if missing or unexpected or wrong:
            why = (f"missing tensor {missing[0]!r}" if missing else f"unexpected tensor {unexpected[0]!r}" if unexpected
                   else f"tensor {wrong[0]!r} has shape {tuple(weights[wrong[0]].shape)}, expected "
                        f"{tuple(expected[wrong[0]].shape)}")
            raise CheckpointError(f"{path}: policy weights do not fit its spec ({why})")
        policy.load_state_dict(weights, strict=False)
        policy.to(resolve_device(cfg.device)).eval()
        schedule = spec["schedule"]
        if cfg.generate.schedule != stored.generate.schedule:
            asked = snap_schedule(cfg.generate.schedule, spec["grid"])
            own, steps = len(spec["schedule"]) - 1, len(asked) - 1
            if steps == own or explicit:  # a re-timed walk, or one asked of this policy (a shorter walk is a choice)
                schedule = asked
                if steps != own:  # never silent
                    print(f"note: {path} was trained on a {own}-step walk; it walks generate.schedule's {steps} "
                          f"steps {[round(t, 4) for t in schedule]}", file=sys.stderr)
            else:  # a config's schedule is for the policies trained on it: a policy of another step count keeps its own
                print(f"note: {path} walks the {own}-step schedule it was trained on, not the config's {steps}-step "
                      f"generate.schedule", file=sys.stderr)
                cfg = dataclasses.replace(cfg, generate=dataclasses.replace(cfg.generate, schedule=list(schedule)))
        default = spec.get("default_output", "samples" if policy.cfg.generative else "mean")
        return cls(cfg, policy, tokenizer, schedule, spec["grid"], bn_recompute_inputs(cfg, task), default)
