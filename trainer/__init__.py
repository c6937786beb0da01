"""Entry points, configs, checkpoint I/O and logging: the only package that imports policy, envs and rollout."""
