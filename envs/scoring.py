"""Scoring reference models on a task split: one model (`evaluate`), or G weight sets at once (`score_batch`, vmap),
and the flat float32 vector layout of a state dict that the env's observations and actions use."""

from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass
from typing import Iterator, Mapping, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from envs.tasks import Split

StateDict = Mapping[str, torch.Tensor]
Weights = Union[StateDict, Sequence[StateDict], torch.Tensor]
"""G weight sets: a stacked state dict key -> (G, *shape), a list of G state dicts, or (G, D) flat vectors."""


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


# Floats per submodule output per forward call (16 MB). Larger tensors come from fresh mmaps that page-fault on every
# call: on the MNIST CNN, batches of 2048 examples spent half their time in the kernel and ran at half the throughput.
SCORING_ACTIVATION_BUDGET = 4 * 2**20


def model_device(model: nn.Module) -> torch.device:
    """Where the model's tensors live: scoring runs there, and inputs are moved there batch by batch (a no-op when
    they are already there)."""
    return next(iter(model.state_dict().values())).device


@torch.no_grad()
def _largest_activation(model: nn.Module, x: torch.Tensor) -> int:
    """Elements of the largest submodule output for one example (the model's input excluded: vmap shares it)."""
    sizes = [1]

    def record(_module, _inputs, out) -> None:
        sizes.append(out[0].numel() if isinstance(out, torch.Tensor) else 1)

    handles = [m.register_forward_hook(record) for m in model.modules() if not any(m.children())]
    try:
        model(x[:1].to(model_device(model)))
    finally:
        for h in handles:
            h.remove()
    return max(sizes)


def auto_batch_size(model: nn.Module, split: Split, sets_per_call: int = 1) -> int:
    """Examples per forward call that keep `sets_per_call` x examples x the largest activation in SCORING_ACTIVATION_BUDGET."""
    with _eval_mode(model):
        per_example = _largest_activation(model, split.x) * sets_per_call
    return int(min(len(split), max(1, SCORING_ACTIVATION_BUDGET // per_example)))


@torch.no_grad()
def evaluate(model: nn.Module, split: Split, batch_size: Optional[int] = None) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) of one model on a split, in eval mode; the mode is restored after.

    `batch_size` None: sized by `auto_batch_size`.
    """
    batch_size = batch_size or auto_batch_size(model, split)
    device = model_device(model)
    with _eval_mode(model):
        loss, correct = 0.0, 0
        for i in range(0, len(split), batch_size):
            logits = model(split.x[i:i + batch_size].to(device))
            y = split.y[i:i + batch_size].to(device)
            loss += F.cross_entropy(logits, y, reduction="sum").item()
            correct += (logits.argmax(1) == y).sum().item()
    return loss / len(split), correct / len(split)


# --- the flat layout --------------------------------------------------------------------------------------------------

def weight_keys(template: StateDict) -> list[str]:
    """The floating-point entries of a state dict, in state-dict order: what a flat weight vector holds.

    Integer buffers (BatchNorm's num_batches_tracked) are bookkeeping, not weights; they stay with the model.
    """
    return [k for k, v in template.items() if v.is_floating_point()]


def flat_dim(template: StateDict) -> int:
    return sum(template[k].numel() for k in weight_keys(template))


def flatten_state(state: StateDict) -> torch.Tensor:
    """State dict -> (D,) float32, the floating-point entries concatenated in state-dict order."""
    return torch.cat([state[k].detach().reshape(-1).float() for k in weight_keys(state)])


def unflatten_state(vec: torch.Tensor, template: StateDict) -> dict[str, torch.Tensor]:
    """(*lead, D) -> state dict with entries (*lead, *shape); integer buffers are copied from `template` unbatched.

    With a 1-D `vec` the result is a complete state dict for `load_state_dict`.
    """
    keys = weight_keys(template)
    d = sum(template[k].numel() for k in keys)
    if vec.shape[-1:] != (d,):
        raise ValueError(f"flat weights have shape {tuple(vec.shape)}, expected (..., {d}) for this reference model")
    lead, out, offset = vec.shape[:-1], {}, 0
    for k, v in template.items():
        if v.is_floating_point():
            out[k] = vec[..., offset:offset + v.numel()].reshape(*lead, *v.shape).float()
            offset += v.numel()
        else:
            out[k] = v.clone()
    return out


def _is_float(v) -> bool:
    """For torch tensors and numpy arrays alike (the pool hands workers numpy)."""
    return v.is_floating_point() if isinstance(v, torch.Tensor) else np.asarray(v).dtype.kind == "f"


def batch_size_of(weights: Weights) -> int:
    """G, the number of weight sets in any of the `Weights` forms."""
    if isinstance(weights, Mapping):  # integer buffers may be unbatched: only the weights say G
        return next(v for v in weights.values() if _is_float(v)).shape[0]
    return len(weights)


def slice_weights(weights: Weights, start: int, stop: Optional[int]) -> Weights:
    """Weight sets [start, stop) in the same form."""
    if isinstance(weights, Mapping):
        return {k: v[start:stop] if _is_float(v) else v for k, v in weights.items()}
    return weights[start:stop]


def stack_weights(weights: Weights, template: StateDict) -> dict[str, torch.Tensor]:
    """Any `Weights` form -> {weight key: (G, *shape) in the template's float dtype (float32 for a default model)},
    checked against `template` (ValueError naming the key)."""
    if len(weights) == 0 or batch_size_of(weights) == 0:
        raise ValueError("no weight sets to score")
    if isinstance(weights, torch.Tensor):
        if weights.dim() != 2:
            raise ValueError(f"flat weight sets have shape {tuple(weights.shape)}, expected (G, {flat_dim(template)})")
        stacked = unflatten_state(weights, template)
        return {k: stacked[k] for k in weight_keys(template)}
    if not isinstance(weights, Mapping):
        for i, state in enumerate(weights):
            _check_keys(state, template, f"weight set {i}", lead=())
        return {k: torch.stack([torch.as_tensor(s[k]) for s in weights]).to(template[k].dtype)
                for k in weight_keys(template)}
    g = batch_size_of(weights)
    _check_keys(weights, template, "stacked weights", lead=(g,))
    return {k: torch.as_tensor(weights[k]).to(template[k].dtype) for k in weight_keys(template)}


def _check_keys(state: Mapping, template: StateDict, what: str, lead: tuple[int, ...]) -> None:
    keys = weight_keys(template)
    unknown = sorted(set(state) - set(template))
    missing = [k for k in keys if k not in state]
    if unknown:
        raise ValueError(f"{what}: unexpected key {unknown[0]!r} for this reference model")
    if missing:
        raise ValueError(f"{what}: missing key {missing[0]!r}")
    for k in keys:
        want = (*lead, *template[k].shape)
        if tuple(state[k].shape) != want:
            raise ValueError(f"{what}: {k!r} has shape {tuple(state[k].shape)}, expected {want}")


# --- batched scoring --------------------------------------------------------------------------------------------------

MAX_LOSS = 100.0  # the worst reward-loss a weight set can score (non-finite sets: +inf otherwise)


@dataclass(frozen=True)
class Scores:
    """Per weight set: counts of correct examples, mean cross-entropy and whether the weights were all finite.

    A non-finite weight set is not run: it scores correct = 0 and loss = +inf (worst on both).
    """

    correct: torch.Tensor  # (G,) int64
    loss: torch.Tensor  # (G,) float64, mean over the split's examples
    finite: torch.Tensor  # (G,) bool
    n: int  # examples in the split
    grad: Optional[dict[str, torch.Tensor]] = None
    """on request (`score_batch(grad=True)`): the gradient of the differentiable reward, minus the mean cross-entropy
    over the split (each example's term weighted by `example_weights` when given), with respect to every weight tensor
    of each set, key -> (G, *shape); zeros for non-finite sets"""
    example_loss: Optional[torch.Tensor] = None
    """on request (`score_batch(per_example=True)`): (G, N) float32, each set's cross-entropy on every example (+inf
    for a non-finite set)"""

    @property
    def accuracy(self) -> torch.Tensor:  # (G,) float64
        return self.correct.double() / self.n

    def neg_loss(self, cap: float = MAX_LOSS) -> torch.Tensor:  # (G,) float64
        """Minus the mean cross-entropy, a smooth reward; the loss is capped so that non-finite sets (+inf) stay
        usable in group statistics."""
        return -self.loss.clamp(max=cap)

    @property
    def num_invalid(self) -> int:
        return int((~self.finite).sum())

    def __len__(self) -> int:
        return len(self.correct)

    @staticmethod
    def cat(parts: Sequence["Scores"]) -> "Scores":
        assert parts and len({p.n for p in parts}) == 1, "scores of different splits"
        grad = None if parts[0].grad is None else {k: torch.cat([p.grad[k] for p in parts]) for k in parts[0].grad}
        example_loss = None if parts[0].example_loss is None else torch.cat([p.example_loss for p in parts])
        return Scores(torch.cat([p.correct for p in parts]), torch.cat([p.loss for p in parts]),
                      torch.cat([p.finite for p in parts]), parts[0].n, grad, example_loss)


def batched_logits(model: nn.Module, params: Mapping[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Logits of G weight sets of `model`'s architecture on one batch: ({key: (G, *shape)}, (B, ...)) -> (G, B, classes).

    One vmapped functional call, differentiable in `params`; entries absent from `params` (integer buffers) come from
    `model`, which runs in its current mode.
    """
    def logits_of(p: dict, inputs: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(model, p, (inputs,))

    return torch.func.vmap(logits_of, in_dims=(0, None))(dict(params), x)


def _batched_passes(model: nn.Module, stacked: Mapping[str, torch.Tensor], split: Split, chunk_size: int,
                    batch_size: Optional[int], differentiate: Sequence[str] = ()
                    ) -> Iterator[tuple[torch.Tensor, slice, torch.Tensor, dict[str, torch.Tensor]]]:
    """(set indices (c,), example slice, logits (c, b, classes), the chunk's weights) over the finite weight sets, chunk
    by chunk and batch by batch, in eval mode: memory is bounded by `chunk_size` sets x `batch_size` examples per call.
    The chunk's weights named in `differentiate` are leaves that require grad (under `torch.enable_grad`)."""
    g = batch_size_of(stacked)
    batch_size = batch_size or auto_batch_size(model, split, min(chunk_size, g))
    assert chunk_size >= 1 and batch_size >= 1, (chunk_size, batch_size)
    device = model_device(model)
    with _eval_mode(model):
        for idx in _finite(stacked).nonzero().flatten().split(chunk_size):
            if not len(idx):  # every set non-finite: split() still yields one empty chunk
                continue
            params = {k: v[idx].detach().to(device).requires_grad_(k in differentiate) for k, v in stacked.items()}
            for i in range(0, len(split), batch_size):
                rows = slice(i, min(i + batch_size, len(split)))
                yield idx, rows, batched_logits(model, params, split.x[rows].to(device)), params


def _finite(stacked: Mapping[str, torch.Tensor]) -> torch.Tensor:
    g = batch_size_of(stacked)
    return torch.stack([v.reshape(g, -1).isfinite().all(1) for v in stacked.values()]).all(0).cpu()


def score_batch(model: nn.Module, weights: Weights, split: Split, chunk_size: int = 16,
                batch_size: Optional[int] = None, grad: bool = False, per_example: bool = False,
                example_weights: Optional[torch.Tensor] = None) -> Scores:
    """Score G weight sets of `model`'s architecture on `split` with one vmapped functional call per chunk and batch.

    `model` supplies the architecture and the integer buffers; it is run in eval mode, so BatchNorm normalises with each
    set's own running statistics, on its device (weights and examples are moved there; the scores come back on the
    CPU). Memory is bounded by `chunk_size` sets x `batch_size` examples per call (None: sized
    by `auto_batch_size`). An example whose logits are not all finite (overflowing but finite weights) counts as wrong.
    `grad`: also the reward's gradient with respect to each set's weights (`Scores.grad`), by the same vmapped passes,
    with each example's cross-entropy weighted by `example_weights` (G, N) when given (GRPO's ensemble mix computes
    them). The gradient is taken with respect to the model's parameters; BatchNorm's running statistics, buffers that
    autograd does not differentiate through, get zeros. `per_example`: also every set's cross-entropy on every example
    (`Scores.example_loss`).
    """
    stacked = stack_weights(weights, model.state_dict())
    g = batch_size_of(stacked)
    finite = _finite(stacked)
    correct = torch.zeros(g, dtype=torch.int64)
    loss_sum = torch.zeros(g, dtype=torch.float64)
    grads = {k: torch.zeros(stacked[k].shape, dtype=stacked[k].dtype) for k in weight_keys(model.state_dict())}
    keys = [k for k, _ in model.named_parameters()] if grad else []  # running statistics keep their zeros
    if example_weights is not None and tuple(example_weights.shape) != (g, len(split)):
        raise ValueError(f"example_weights have shape {tuple(example_weights.shape)}, expected ({g}, {len(split)})")
    example_loss = torch.full((g, len(split)), float("inf")) if per_example else None
    with torch.set_grad_enabled(grad):
        for idx, rows, logits, params in _batched_passes(model, stacked, split, chunk_size, batch_size, keys):
            y = split.y[rows].to(logits.device)
            ok = logits.isfinite().all(-1) & (logits.argmax(-1) == y)
            correct[idx] += ok.sum(1).cpu()
            wide = logits.to(torch.promote_types(logits.dtype, torch.float32))  # bf16 autocast: the loss in fp32
            ce = F.cross_entropy(wide.flatten(0, 1), y.repeat(len(idx)), reduction="none")
            ce = ce.view(len(idx), -1)
            loss_sum[idx] += ce.double().sum(1).detach().cpu()
            if per_example:
                example_loss[idx, rows] = ce.detach().float().cpu()
            if grad:  # d(-mean CE)/dW: each set's loss depends on its own weights alone, so one backward serves all
                if example_weights is not None:
                    ce = ce * example_weights[idx][:, rows].to(ce.device, ce.dtype)
                parts = torch.autograd.grad(-ce.sum() / len(split), [params[k] for k in keys])
                for k, d in zip(keys, parts):
                    grads[k][idx] += d.detach().cpu()
    loss = torch.where(finite, loss_sum / len(split), torch.full_like(loss_sum, float("inf")))
    return Scores(correct, loss, finite, len(split), grads if grad else None, example_loss)


@torch.no_grad()
def predict_batch(model: nn.Module, weights: Weights, split: Split, chunk_size: int = 16,
                  batch_size: Optional[int] = None) -> torch.Tensor:
    """The class each of G weight sets predicts for every example of `split`: (G, N) int64, -1 where the weights or
    the logits are not finite (as `score_batch` counts them wrong)."""
    stacked = stack_weights(weights, model.state_dict())
    pred = torch.full((batch_size_of(stacked), len(split)), -1, dtype=torch.int64)
    for idx, rows, logits, _ in _batched_passes(model, stacked, split, chunk_size, batch_size):
        pred[idx, rows] = torch.where(logits.isfinite().all(-1), logits.argmax(-1), -1).cpu()
    return pred


@torch.no_grad()
def recompute_bn_stats(model: nn.Module, states: StateDict, x: torch.Tensor, batch_size: int) -> dict[str, torch.Tensor]:
    """BatchNorm running statistics of G weight sets recomputed from inputs `x`, batch by batch (key -> (G, *shape)).

    Each set runs in train mode over the batches with a cumulative average (momentum None), so its statistics are
    those of its own activations on `x`, whatever the generated ones were; every other entry is returned unchanged.
    A set with non-finite weights gets non-finite statistics and still scores 0.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert bns, "model has no BatchNorm layer"
    saved = copy.deepcopy(model.state_dict())
    was_training, momenta = model.training, [m.momentum for m in bns]
    out = {k: v.clone() for k, v in states.items()}
    keys = [k for k in out if k.endswith(("running_mean", "running_var"))]
    try:
        for i in range(batch_size_of(states)):
            model.load_state_dict({k: v[i] for k, v in states.items()})
            for m in bns:
                m.reset_running_stats()
                m.momentum = None
            model.train()
            for lo in range(0, len(x), batch_size):
                model(x[lo:lo + batch_size])
            sd = model.state_dict()
            for k in keys:
                out[k][i] = sd[k]
    finally:
        for m, mom in zip(bns, momenta):
            m.momentum = mom
        model.load_state_dict(saved)
        model.train(was_training)
    return out
