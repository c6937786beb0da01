"""The error types of `envs`, in a module that imports nothing else of the project, so that any module can raise them
(`envs.spec` checks configs against `envs.tasks`' registry, and `envs.tasks` raises ConfigError). Both are also
importable from where they were defined before: `envs.spec.ConfigError`, `envs.tasks.TaskDataError`."""


class ConfigError(ValueError):
    """A user-caused config problem; the message is one line naming the key at fault."""


class TaskDataError(RuntimeError):
    """Task data missing or unreadable; the message is one line saying where the files are expected."""
