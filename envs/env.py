"""`SynthNet/WeightEval-v0`: a Gymnasium env whose state is a reference model's weights and whose action is the next
weights; the reward is the accuracy the weights reach on the task's reward split."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import gymnasium as gym
import numpy as np
import torch

from envs.models import reference_from_config
from envs.objectives import Objective, score_objective
from envs.scoring import flat_dim, flatten_state, unflatten_state
from envs.spec import (DEFAULT_SCHEDULE, EnvConfig, ReferenceConfig, TaskConfig, check_fields, check_schedule,
                        from_dict, read_yaml)
from envs.tasks import task_from_config

SHIPPED_CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def env_sections(config: Any) -> tuple[TaskConfig, ReferenceConfig, EnvConfig, list[float]]:
    """(task, reference, env sections, generate.schedule) from an experiment YAML path, a loaded config (duck-typed:
    `.task`, `.reference`, `.env`, and `.generate.schedule` if it has one), or None (the defaults)."""
    if config is None:
        sections = TaskConfig(), ReferenceConfig(), EnvConfig()
        schedule = DEFAULT_SCHEDULE
    elif isinstance(config, (str, Path)):
        path = Path(config)
        if not path.is_file() and (SHIPPED_CONFIGS / path.name).is_file():
            path = SHIPPED_CONFIGS / path.name
        data = read_yaml(path)  # other sections (zoo, policy, ...) belong to the trainer and are ignored here
        sections = (from_dict(TaskConfig, data.get("task", {}), "task."),
                    from_dict(ReferenceConfig, data.get("reference", {}), "reference."),
                    from_dict(EnvConfig, data.get("env", {}), "env."))
        generate = data.get("generate", {})
        schedule = generate.get("schedule", DEFAULT_SCHEDULE) if isinstance(generate, dict) else None
    else:
        sections = config.task, config.reference, config.env
        schedule = getattr(getattr(config, "generate", None), "schedule", DEFAULT_SCHEDULE)
    for prefix, section in zip(("task.", "reference.", "env."), sections):
        check_fields(section, prefix)
    return (*sections, check_schedule(schedule))


class WeightEvalEnv(gym.Env):
    """
    ## Description

    The weight-generation MDP of SynthNet. The state is one set of weights of a reference model (an MLP, CNN or
    ResNet from the experiment's `reference` section) for a task (the `task` section); each action replaces them with
    new weights. An episode is K steps that should take a freshly initialised network to a trained one: the K + 1
    points of `generate.schedule` (the generator's own) are its progress, so K = len(generate.schedule) - 1.

    ## Action Space

    `Box(-inf, inf, (D,), float32)`: the next weights as one flat vector, D = the number of floating-point values in
    the reference model's state dict, concatenated in state-dict order (`envs.scoring.flatten_state`). BatchNorm running
    statistics are part of it; integer buffers (`num_batches_tracked`) are not. An array of another shape or dtype
    raises ValueError naming the expected ones.

    ## Observation Space

    `Box(-inf, inf, (D,), float32)`: the current weights in the same layout. `info["t"]` is the progress after step
    k, `generate.schedule[k]`.

    ## Rewards

    The reward accuracy is the accuracy on the task's reward split (carved from its training set; the test split only
    reports, as `info["test_accuracy"]`) of the weights as `env.objective` deploys them (`envs.objectives`): as they
    are ("plain"), quantised to `env.bits` bits, pruned to `env.sparsity`, or on inputs with Gaussian noise of std
    `env.noise_std` (drawn from the episode's init seed). With an objective other than plain, `info["plain_accuracy"]`
    is the reward-split accuracy of the weights as they are. With `env.reward: final` the reward is 0 until the last step and then the
    reward accuracy of the final weights; with `env.reward: improvement` each step earns the gain in reward accuracy
    over the previous weights, so an episode's return is the same final accuracy minus the init's. A non-finite action
    is rejected: reward 0, `info["invalid"] = True`, and the weights stay as they were.

    With `reward_gradient=True`, each valid step's `info["reward_gradient"]` is the gradient of the differentiable
    reward, minus the mean cross-entropy on the reward split of the weights as the objective deploys them, with respect
    to the action: a `(D,)` float32 vector in the action's layout (the transform passed straight through; BatchNorm's
    running statistics included, as the net runs in eval mode). It is what GRPO's scoring workers return
    for `grpo.estimator: pathwise`, and `info["reward_neg_loss"]` is that reward's value.

    ## Starting State

    A fresh PyTorch default initialisation of the reference model, drawn from a seed taken from `self.np_random`
    (`info["init_seed"]`), so `reset(seed=s)` always yields the same init.

    ## Episode End

    Termination after K = len(generate.schedule) - 1 steps. There is no truncation.

    ## Arguments

    `gymnasium.make("SynthNet/WeightEval-v0", config="configs/digits_mlp.yaml")`: `config` is an experiment YAML
    (only its `task`, `reference` and `env` sections and `generate.schedule` are read), a loaded config with `.task`,
    `.reference`, `.env` (and `.generate`), or None for the defaults (the offline digits MLP, one step from the init);
    `reward_gradient` (default False) adds the reward's gradient to `info`. No render modes.
    """

    metadata = {"render_modes": []}

    def __init__(self, config: Any = None, render_mode: Optional[str] = None, reward_gradient: bool = False):
        if render_mode is not None:
            raise ValueError(f"render_mode {render_mode!r} is not supported (valid: None)")
        self.render_mode = None
        self.reward_gradient = bool(reward_gradient)
        self.task_cfg, self.reference_cfg, self.env_cfg, self.schedule = env_sections(config)
        self.task = task_from_config(self.task_cfg)
        self.model = reference_from_config(self.reference_cfg, self.task, seed=0)  # architecture + integer buffers
        self.template = {k: v.clone() for k, v in self.model.state_dict().items()}
        self.objective = Objective.of(self.env_cfg)
        self._noise_seed = 0
        self.dim = flat_dim(self.template)
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (self.dim,), np.float32)
        self.action_space = gym.spaces.Box(-np.inf, np.inf, (self.dim,), np.float32)
        self._weights: Optional[np.ndarray] = None
        self._k = 0
        self._last_accuracy = 0.0

    def reset(self, *, seed: Optional[int] = None, options: Optional[dict] = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        init_seed = int(self.np_random.integers(0, 2**31 - 1))
        self._noise_seed = init_seed
        init = reference_from_config(self.reference_cfg, self.task, seed=init_seed)
        self._weights = flatten_state(init.state_dict()).numpy()
        self._k = 0
        if self.env_cfg.reward == "improvement":
            self._last_accuracy = self._accuracy(self._weights, "reward")
        return self._weights.copy(), {"t": 0.0, "init_seed": init_seed}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict]:
        steps = len(self.schedule) - 1
        if self._weights is None or self._k >= steps:
            raise RuntimeError("the episode is over (or never started): call reset() first")
        self._check_action(action)
        self._k += 1
        info: dict[str, Any] = {"t": self.schedule[self._k], "invalid": not bool(np.isfinite(action).all())}
        if info["invalid"]:
            reward = 0.0
            info.update(reward_accuracy=0.0, test_accuracy=0.0)
        else:
            self._weights = action.copy()
            acc = self._accuracy(self._weights, "reward")
            if self.reward_gradient:
                info.update(self._reward_gradient(self._weights))
            info.update(reward_accuracy=acc, test_accuracy=self._accuracy(self._weights, "test"))
            if not self.objective.plain:
                info["plain_accuracy"] = self._accuracy(self._weights, "reward", plain=True)
            if self.env_cfg.reward == "final":
                reward = acc if self._k == steps else 0.0
            else:
                reward, self._last_accuracy = acc - self._last_accuracy, acc
        return self._weights.copy(), float(reward), self._k == steps, False, info

    def state_dict_of(self, weights: np.ndarray) -> dict[str, torch.Tensor]:
        """A flat weight vector (an observation or action) as a state dict of the reference model."""
        return unflatten_state(torch.from_numpy(np.asarray(weights, dtype=np.float32)), self.template)

    def _check_action(self, action: Any) -> None:
        if not isinstance(action, np.ndarray):
            raise ValueError(f"action must be a numpy array of shape ({self.dim},) and dtype float32, "
                             f"got {type(action).__name__}")
        if action.shape != (self.dim,):
            raise ValueError(f"action has shape {action.shape}, expected ({self.dim},) (dtype float32)")
        if action.dtype != np.float32:
            raise ValueError(f"action has dtype {action.dtype}, expected float32 (shape ({self.dim},))")

    def _reward_gradient(self, weights: np.ndarray) -> dict[str, Any]:
        scores = score_objective(self.model, torch.from_numpy(weights)[None], self.task.split("reward"),
                                 self.objective, self._noise_seed, grad=True)
        flat = flatten_state({k: v[0] for k, v in scores.grad.items()})  # every float entry, in state-dict order
        return {"reward_gradient": flat.numpy(), "reward_neg_loss": float(scores.neg_loss()[0])}

    def _accuracy(self, weights: np.ndarray, split: str, plain: bool = False) -> float:
        scores = score_objective(self.model, torch.from_numpy(weights)[None], self.task.split(split),
                                 None if plain else self.objective, self._noise_seed)
        return float(scores.accuracy[0])
