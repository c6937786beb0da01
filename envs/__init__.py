"""Tasks, reference models, batched scoring and the weight-evaluation env. Imports nothing else of the project."""

from envs.models import REFERENCE_FAMILIES, build_reference, reference_from_config
from envs.spec import ConfigError, ReferenceConfig, TaskConfig
from envs.tasks import TASKS, Split, Task, TaskDataError, load_task, task_from_config

__all__ = ["REFERENCE_FAMILIES", "TASKS", "ConfigError", "ReferenceConfig", "Split", "Task", "TaskConfig",
           "TaskDataError", "build_reference", "load_task", "reference_from_config", "task_from_config"]
