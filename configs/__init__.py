"""Experiment configs: one YAML per experiment (loaded by `trainer.config`)."""
