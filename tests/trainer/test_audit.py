"""The audit's alignment, noise baseline and behaviour measures on a tiny digits zoo (`bench audit` end to end is in
tests/trainer/bench/test_audit.py, which takes this module's tiny zoo and policy)."""

import json

import pytest
import torch

from envs.tasks import task_from_config
from policy.tokenizer import Tokenizer
from trainer import audit
from trainer.config import load_config
from trainer.generator import init_states, reference_layout



def permuted(states, layout, gen):
    """A copy with every hidden group's units shuffled (one permutation per net)."""
    blocks = audit.unit_blocks(states, layout)
    n = next(iter(blocks.values())).shape[0]
    for g in audit.hidden_groups(layout):
        size = next(x.size for x in layout.groups if x.name == g)
        blocks = audit.permute_blocks(blocks, layout, g, torch.stack([torch.randperm(size, generator=gen)
                                                                      for _ in range(n)]))
    return blocks


def test_a_permuted_zoo_net_is_at_distance_zero_and_noise_at_zero_keeps_its_accuracy(tiny_zoo):
    cfg, task, layout, zoo = tiny_zoo
    zb = audit.unit_blocks(zoo, layout)
    copy = permuted({k: v[1:2] for k, v in zoo.items()}, layout, torch.Generator().manual_seed(0))
    d, raw = audit.aligned_distances(copy, zb, layout)
    assert d.argmin().item() == 1 and d[0, 1].item() == pytest.approx(0.0, abs=1e-5)
    assert raw[0, 1] > 1.0 and d[0, 0] > 1.0 and d[0, 2] > 1.0  # shuffled units are far apart until aligned
    # The same function: the copy, decoded back to a state dict, predicts exactly what the zoo net predicts.
    tok = Tokenizer(layout, {t.key: 1.0 for t in layout.tensors})
    preds = audit.predictions(audit.split_logits(cfg, task, tok.decode(copy)))
    zoo_preds = audit.predictions(audit.split_logits(cfg, task, zoo))
    assert torch.equal(preds[0], zoo_preds[1])

    noisy = audit.noise_baseline(zoo, torch.tensor([1, 1]), torch.tensor([0.0, 2.5]), seed=0)
    assert all(torch.equal(noisy[k][0], zoo[k][1]) for k in zoo)
    acc = (audit.predictions(audit.split_logits(cfg, task, noisy)) == task.test.y).double().mean(1)
    manifest = json.loads((cfg.zoo_dir / "manifest.json").read_text())
    assert acc[0].item() == manifest["runs"][1]["checkpoints"][-1]["test_accuracy"]  # evaluate()'s number, exactly
    assert audit.distance(audit.unit_blocks({k: v[1:] for k, v in noisy.items()}, layout),
                          {k: v[1:2] for k, v in zb.items()}).item() == pytest.approx(2.5, rel=1e-6)
    assert acc[1] < acc[0]  # 2.5 is about the distance between zoo nets: noise that large costs accuracy


@pytest.mark.parametrize("family, widths", [("mlp", [8, 6, 5]), ("cnn", [4, 6]), ("resnet", [4, 6])])
def test_alignment_undoes_permutations_of_coupled_groups(family, widths):
    """Any architecture through its unit layout: groups that share tensors (stacked layers, a residual stream) too."""
    cfg = load_config(overrides=[f"reference.family={family}", f"reference.widths={widths}"])
    task = task_from_config(cfg.task)
    _, layout = reference_layout(cfg, task)
    states = init_states(cfg, task, [0, 1])
    copies = permuted(states, layout, torch.Generator().manual_seed(1))
    blocks = audit.unit_blocks(states, layout)
    assert (audit.distance(blocks, copies) > 1.0).all()
    assert audit.distance(blocks, audit.align(blocks, copies, layout)).max().item() == pytest.approx(0.0, abs=1e-5)
    # Scoring and the noise baseline take the family's integer buffers (BN step counts) along untouched.
    same = audit.noise_baseline(states, torch.tensor([1]), torch.tensor([0.0]), seed=0)
    # (one net alone vs two in one vmapped call: the same sums, maybe by another kernel)
    torch.testing.assert_close(audit.split_logits(cfg, task, same)[0], audit.split_logits(cfg, task, states)[1])


def test_leave_one_out_never_pairs_a_net_with_itself(tiny_zoo):
    _, _, layout, zoo = tiny_zoo
    zb = audit.unit_blocks(zoo, layout)
    d, _ = audit.aligned_distances(zb, zb, layout, exclude_self=True)
    assert torch.isinf(d.diagonal()).all() and torch.equal(d, d.T)
    full, _ = audit.aligned_distances({k: v[:1] for k, v in zb.items()}, zb, layout)
    assert full[0, 0] == 0.0 and d[0, 1:].tolist() == pytest.approx(full[0, 1:].tolist(), rel=1e-6)


def test_error_iou_agreement_and_ensembles_on_hand_made_nets():
    wrong = torch.tensor([[1, 1, 0, 0], [0, 1, 1, 0], [0, 0, 0, 0]], dtype=torch.bool)
    iou = audit.error_iou(wrong, wrong)
    assert iou[0, 1].item() == pytest.approx(1 / 3) and iou[0, 2].item() == 0.0 and iou[2, 2].item() == 1.0
    preds = torch.tensor([[0, 1, 2, 3], [0, 1, 0, 0]])
    assert audit.agreement(preds, preds)[0, 1].item() == 0.5
    assert audit.off_diagonal_mean(torch.tensor([[1.0, 0.2, 0.4], [0.0, 1.0, 0.0], [0.5, 0.5, 1.0]])).tolist() == \
        pytest.approx([0.3, 0.0, 0.5])
    # Two nets, each sure of one class on two examples: alone each gets 1 of 2 right; averaged they get both
    # (net 0 is surer where it is right).
    y = torch.tensor([0, 1])
    logits = torch.tensor([[[5.0, 0.0], [5.0, 4.0]], [[0.0, 1.0], [0.0, 5.0]]])
    assert audit.ensemble_accuracy(logits, y, 1) == [0.5, 0.5]
    assert audit.ensemble_accuracy(logits, y, 2) == [1.0]


def test_feature_overlap_matches_units_across_nets_only_and_counts_directions():
    e = torch.eye(3)
    # net 0 reads e1 and e2, net 1 reads e1 and -e2: e1 has a copy in the other net; e2 only its opposite (-1), so
    # its best match is the orthogonal e1 (0)
    got = audit.feature_overlap(torch.stack([torch.stack([e[0], e[1]]), torch.stack([e[0], -e[1]])]))
    assert got["best_cosine"] == pytest.approx([1.0, 0.0, 1.0, 0.0]) and got["effective_rank"] == pytest.approx(2.0)
    # a unit is never matched with its own net's units, and scale does not matter
    got = audit.feature_overlap(torch.stack([torch.stack([e[0], 3 * e[0]]), torch.stack([e[1], e[2]])]))
    assert got["best_cosine"] == pytest.approx([0.0, 0.0, 0.0, 0.0])
    # every net the same dictionary, permuted: every unit has a copy, and the pooled units span 2 directions
    one = audit.feature_overlap(torch.stack([torch.stack([e[0], e[1]]), torch.stack([e[1], 2 * e[0]])]), chunk=1)
    assert one["best_cosine"] == pytest.approx([1.0] * 4) and one["effective_rank"] == pytest.approx(2.0)


def test_ensemble_gain_is_the_ensembles_accuracy_over_their_members():
    """Two nets each wrong on one of three examples, confidently right elsewhere: their averaged softmax is right on
    all three, a gain of 1 - 2/3; a third net, in no whole group of k = 2, is left out."""
    from trainer.audit import ensemble_gain

    y = torch.tensor([0, 1, 2])
    a = torch.tensor([[5.0, 0, 0], [0, 5, 0], [0, 2, 0]])  # wrong on the last example, mildly
    b = torch.tensor([[0.0, 2, 0], [0, 5, 0], [0, 0, 5]])  # wrong on the first, mildly
    wrong = torch.tensor([[0.0, 9, 0], [9, 0, 0], [9, 0, 0]])
    assert ensemble_gain(torch.stack([a, b, wrong]), y, 2) == pytest.approx(1 / 3)
    assert ensemble_gain(torch.stack([a, a]), y, 2) == pytest.approx(0.0)


def test_first_layer_responses_of_a_conv_layer_are_each_channels_centred_map():
    """For a CNN each first-layer channel is its whole pre-activation map on the inputs (every example and position),
    centred: the conv computed here one net at a time. What `grpo.repel` and the audit's function table compare."""
    from envs.models import CNN
    from policy.tokenizer import Layout

    gen = torch.Generator().manual_seed(0)
    model = CNN(widths=[4, 6], input_shape=(1, 8, 8), num_classes=10).eval()
    layout = Layout(model.unit_layout(), {k: v.shape for k, v in model.state_dict().items()})
    nets = {k: torch.randn(3, *v.shape, generator=gen) for k, v in model.state_dict().items()}
    x = torch.randn(5, 1, 8, 8, generator=gen)
    got = audit.first_layer_responses(model, layout, nets, x)
    assert got.shape == (3, 4, 5 * 8 * 8)
    for n in range(3):
        z = torch.nn.functional.conv2d(x, nets["convs.0.weight"][n], nets["convs.0.bias"][n], padding=1)  # (5, 4, 8, 8)
        z = z.transpose(0, 1).flatten(1)
        torch.testing.assert_close(got[n], z - z.mean(1, keepdim=True))
