"""What several test modules share: the tiny settings every end-to-end test runs on, and small helpers. Fixtures
live in the conftest.py files beside the tests that use them."""

from types import SimpleNamespace

import torch

from envs.models import build_reference
from envs.spec import ReferenceConfig, TaskConfig
from envs.tasks import task_from_config
from policy.model import DenoisingPolicy
from policy.tokenizer import Layout, Tokenizer
from trainer.config import load_config
from trainer.generator import WeightGenerator, reference_layout

# --- reference models of every family ---------------------------------------------------------------------------------

FAMILIES = {"mlp": ([16, 8], (1, 8, 8)), "cnn": ([4, 8], (1, 8, 8)), "resnet": ([4, 8], (3, 8, 8)),
            "resnet-flatten": ([4, 8], (3, 8, 8))}
"""test models: family[-head] -> (widths, input shape)"""


def build(name, seed):
    family, _, head = name.partition("-")
    widths, shape = FAMILIES[name]
    return build_reference(family, widths, shape, 10, blocks_per_stage=2, seed=seed, head=head or "pool")


def batch_of(family, seeds):
    sds = [build(family, s).state_dict() for s in seeds]
    return {k: torch.stack([sd[k] for sd in sds]) for k in sds[0]}


def make(family):
    model = build(family, 0)
    layout = Layout(model.unit_layout(), {k: v.shape for k, v in model.state_dict().items()})
    return model, layout


# --- tiny experiments (digits) ----------------------------------------------------------------------------------------

TINY_ZOO = ["zoo.runs=3", "reference.widths=[8]", "zoo.epochs=2", "zoo.checkpoints=4", "zoo.batch_size=16"]
"""a three-run zoo of the widths-[8] digits MLP"""

TINY_POLICY = ["policy.dim=16", "policy.rounds=1", "policy.heads=2", "imitate.steps=6", "imitate.eval_every=3",
               "imitate.save_every=3", "imitate.eval_seeds=2", "imitate.batch_size=4",
               "generate.schedule=[0.0,0.5,1.0]"]
"""a 6-step imitation of a small policy on that zoo"""

TINY = TINY_ZOO + ["policy.dim=16", "policy.rounds=1", "policy.heads=2", "imitate.steps=6", "imitate.eval_every=3",
                   "imitate.save_every=3", "imitate.log_every=1", "imitate.eval_seeds=2", "imitate.batch_size=4",
                   "generate.schedule=[0.0,0.5,1.0]"]
"""zoo and imitation together, logging every step: the `trained` and `imitation` fixtures' chain"""

GENERATIVE = ["policy.generative=true", "policy.posterior_rounds=1", "policy.latent_dim=4", "policy.latent_std=1.0",
              "imitate.task_inits=2", "imitate.task_examples=32"]


def imitate_cli(*extra):
    """`trainer.imitate` on the TINY chain, plus `extra` arguments."""
    from trainer import imitate  # imported where used, as trainer.grpo is below

    return imitate.cli(sum((["--set", s] for s in TINY), []) + list(extra))


# --- GRPO on the TINY chain -------------------------------------------------------------------------------------------

DEFAULT = TINY + ["grpo.inits_per_iter=2", "grpo.group_size=4", "grpo.epochs=2", "grpo.minibatch_size=4",
                  "grpo.eval_every=2", "grpo.save_every=1", "grpo.clip_range=0.05",
                  "rollout.num_workers=2"]  # the shipped GRPO settings, on a tiny budget
GRPO = DEFAULT + ["grpo.noise=iid", "grpo.estimator=score", "grpo.trainable=latent", "grpo.lr=1e-3",
                  "grpo.reward=accuracy", "grpo.reward_batch=fixed", "grpo.cosine=false", "grpo.input_noise=0"]
UNITS = ["grpo.noise=units", "grpo.estimator=score", "grpo.trainable=latent", "grpo.lr=1e-3", "grpo.reward=neg_loss",
         "grpo.reward_batch=fresh", "grpo.cosine=true"]


def scored_rollouts(t):
    """One iteration's rollouts of a `GRPOTrainer`, scored by a pool of its own (closed after)."""
    from rollout.pool import RolloutPool

    t.pool = RolloutPool(t.cfg)
    try:
        rollouts = t.collect_rollouts()
        t.score(rollouts)
    finally:
        t.pool.close()
        t.pool = None
    return rollouts


def grpo_trainer(policy, run_dir, iterations, *extra, pool=None):
    """A GRPOTrainer on the GRPO settings for `iterations`, plus `extra` overrides, scoring on `pool` if given."""
    from trainer.grpo import GRPOTrainer  # it imports torchvision: seconds the tests without GRPO need not pay

    cfg = load_config(overrides=GRPO + [f"grpo.iterations={iterations}", *extra])
    return GRPOTrainer(cfg, policy, run_dir, progress=False, pool=pool)


# --- the scoring pool -------------------------------------------------------------------------------------------------

CFG = SimpleNamespace(task=TaskConfig(), reference=ReferenceConfig(widths=[8]),
                      rollout=SimpleNamespace(address=None, num_workers=2, timeout_s=60.0, chunk_size=3, max_retries=2))


def assert_same(scores, expected):
    assert scores.correct.tolist() == expected.correct.tolist()
    assert scores.finite.tolist() == expected.finite.tolist()
    assert torch.equal(scores.loss, expected.loss) and scores.n == expected.n


# --- a generator without training -------------------------------------------------------------------------------------

def untrained_generator(overrides=()) -> WeightGenerator:
    cfg = load_config("configs/digits_mlp.yaml", ["policy.dim=16", "policy.rounds=1", "policy.heads=2", *overrides])
    task = task_from_config(cfg.task)
    _, layout = reference_layout(cfg, task)
    torch.manual_seed(0)
    policy = DenoisingPolicy(cfg.policy, layout).eval()
    with torch.no_grad():  # off the zero-initialised heads, so the steps move the weights
        for p in policy.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return WeightGenerator(cfg, policy, Tokenizer(layout, {k: 1.0 for k in layout.shapes}), [0.0, 0.5, 1.0],
                           [0.0, 0.5, 1.0])
