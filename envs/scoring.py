"""Scoring reference models on a task split."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from envs.tasks import Split


@torch.no_grad()
def evaluate(model: nn.Module, split: Split, batch_size: int = 2048) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) of one model on a split, in eval mode; the mode is restored after."""
    was_training = model.training
    model.eval()
    loss, correct = 0.0, 0
    for i in range(0, len(split), batch_size):
        logits = model(split.x[i:i + batch_size])
        y = split.y[i:i + batch_size]
        loss += F.cross_entropy(logits, y, reduction="sum").item()
        correct += (logits.argmax(1) == y).sum().item()
    model.train(was_training)
    return loss / len(split), correct / len(split)
