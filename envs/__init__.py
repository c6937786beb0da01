"""Tasks, reference models, batched scoring and the weight-evaluation env. Imports nothing else of the project."""

import gymnasium

from envs.env import WeightEvalEnv
from envs.models import REFERENCE_FAMILIES, build_reference, reference_from_config
from envs.scoring import Scores, flatten_state, score_batch, unflatten_state
from envs.spec import ConfigError, ReferenceConfig, TaskConfig
from envs.tasks import TASKS, Split, Task, TaskDataError, load_task, task_from_config

ENV_ID = "SynthNet/WeightEval-v0"
if ENV_ID not in gymnasium.registry:
    gymnasium.register(id=ENV_ID, entry_point="envs.env:WeightEvalEnv")

__all__ = ["ENV_ID", "REFERENCE_FAMILIES", "TASKS", "ConfigError", "ReferenceConfig", "Scores", "Split", "Task",
           "TaskConfig", "TaskDataError", "WeightEvalEnv", "build_reference", "flatten_state", "load_task",
           "reference_from_config", "score_batch", "task_from_config", "unflatten_state"]
