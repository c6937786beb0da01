"""Beyond one MLP width: generation at widths no zoo run had, mixed-width zoos, and the CNN and ResNet chains (zoo ->
imitate -> generate -> bench generate) through the same entry points, on tiny budgets."""

import dataclasses
import json

import pytest
import torch

from envs.models import build_reference
from policy.tokenizer import Layout, transfer_scales
from trainer import generate, imitate
from trainer.bench.__main__ import cli as bench_main
from trainer.checkpoints import load_weights

TINY = ["zoo.runs=3", "reference.widths=[8]", "zoo.epochs=2", "zoo.checkpoints=4", "zoo.batch_size=16",
        "policy.dim=16", "policy.rounds=1", "policy.heads=2", "imitate.steps=4", "imitate.eval_every=4",
        "imitate.save_every=4", "imitate.log_every=1", "imitate.eval_seeds=2", "imitate.batch_size=4",
        "generate.schedule=[0.0,0.5,1.0]", "rollout.num_workers=1"]
TINY_RESNET = ["--config", "configs/digits_resnet.yaml", "--set", "reference.widths=[4,8]", "--set", "zoo.runs=2",
               "--set", "zoo.epochs=1"]
CONFIGS = __import__("pathlib").Path(__file__).resolve().parents[2] / "configs"


def imitate_cli(*extra):
    return imitate.cli(sum((["--set", s] for s in TINY), []) + [a.replace("configs/", f"{CONFIGS}/") for a in extra])


def layout_of(family, widths):
    m = build_reference(family, widths, (1, 8, 8), 10)
    return Layout(m.unit_layout(), {k: v.shape for k, v in m.state_dict().items()})


def test_fan_in_scales_follow_each_layers_fan_in_and_leave_normalisation_alone():
    a, b = layout_of("mlp", [8]), layout_of("mlp", [32])
    scales = {t.key: 0.25 for t in a.tensors}
    keep = transfer_scales(scales, a, b, "keep")
    fan = transfer_scales(scales, a, b, "fan_in")
    assert keep == scales
    # layers.0 reads the 64 fixed inputs either way; layers.1 (and its bias) reads 8 -> 32 hidden units
    assert fan["layers.0.weight"] == fan["layers.0.bias"] == 0.25
    assert fan["layers.1.weight"] == fan["layers.1.bias"] == pytest.approx(0.25 * 0.5)
    ra, rb = layout_of("resnet", [4, 8]), layout_of("resnet", [8, 8])
    fan = transfer_scales({t.key: 1.0 for t in ra.tensors}, ra, rb, "fan_in")
    assert all(fan[t.key] == 1.0 for t in rb.tensors if t.kind.startswith("bn_"))
    assert fan["blocks.0.conv1.weight"] == pytest.approx(0.5 ** 0.5)  # fan-in 4 x 9 -> 8 x 9
    with pytest.raises(AssertionError):
        transfer_scales(scales, a, layout_of("mlp", [8, 8]), "keep")  # another structure, not another width


@pytest.fixture
def trained(in_tmp, ray_local):
    assert imitate_cli() == 0
    return in_tmp / "artifacts/runs/digits_mlp-imitate"


def test_generate_at_a_width_the_policy_never_saw(trained, in_tmp):
    assert generate.cli(["--seeds", "0..1", "--mean", "--set", "reference.widths=[13]", "--out", "w13"]) == 0
    report = json.loads((in_tmp / "w13/report.json").read_text())
    ref = build_reference("mlp", [13], (1, 8, 8), 10).state_dict()
    for s in report["samples"]:
        weights, _ = load_weights(s["file"], expected=ref)  # raises unless every tensor has width 13
        assert all(torch.isfinite(v).all() for v in weights.values())


def test_a_policy_at_an_unseen_width_stays_permutation_equivariant(trained):
    from envs.tasks import task_from_config
    from trainer.generator import WeightGenerator, init_states

    weight_generator = WeightGenerator.load(trained / "policy.safetensors", ["reference.widths=[13]"])
    init = init_states(weight_generator.cfg, task_from_config(weight_generator.cfg.task), [0])
    perm = torch.randperm(13, generator=torch.Generator().manual_seed(0))
    permuted = {"layers.0.weight": init["layers.0.weight"][:, perm], "layers.0.bias": init["layers.0.bias"][:, perm],
                "layers.1.weight": init["layers.1.weight"][:, :, perm], "layers.1.bias": init["layers.1.bias"]}
    a, _ = weight_generator.generate(init, mean_only=True)
    b, _ = weight_generator.generate(permuted, mean_only=True)
    torch.testing.assert_close(b["layers.0.weight"], a["layers.0.weight"][:, perm], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(b["layers.1.weight"], a["layers.1.weight"][:, :, perm], atol=1e-5, rtol=1e-5)


def test_another_structure_is_a_one_line_error(trained, capsys):
    assert generate.cli(["--seeds", "0", "--set", "reference.widths=[8,8]"]) == 2
    err = capsys.readouterr().err
    assert "policy was made for another reference model than mlp[8, 8]" in err and err.count("\n") == 1


def test_bench_generate_trains_sgd_at_a_width_no_zoo_has(trained, capsys):
    args = ["generate", "--seeds", "2"] + sum((["--set", s] for s in TINY + ["reference.widths=[13]"]), [])
    assert bench_main(args) == 0
    out = capsys.readouterr().out
    assert "(mlp[13])" in out and "| SGD from these 2 held-out seeds" in out


def test_a_mixed_width_zoo_trains_one_policy_that_loads_at_other_widths(in_tmp, ray_local):
    assert imitate_cli("--set", "zoo.widths=[[8],[12]]", "--set", "zoo.runs=2") == 0
    zoo = in_tmp / "artifacts/checkpoints/digits_mlp"
    assert sorted(p.name for p in zoo.iterdir()) == ["w12", "w8"]
    assert json.loads((zoo / "w12/manifest.json").read_text())["reference"]["widths"] == [12]
    spec = json.loads((in_tmp / "artifacts/runs/digits_mlp-imitate/policy.json").read_text())
    assert spec["zoo_runs"] == 4
    assert generate.cli(["--seeds", "0", "--mean", "--set", "reference.widths=[20]", "--out", "w20"]) == 0
    ref = build_reference("mlp", [20], (1, 8, 8), 10).state_dict()
    load_weights(json.loads((in_tmp / "w20/report.json").read_text())["samples"][0]["file"], expected=ref)


def test_imitating_a_mixed_zoo_needs_reference_widths_among_its_widths(in_tmp, capsys):
    assert imitate_cli("--set", "zoo.widths=[[12],[16]]") == 2
    err = capsys.readouterr().err
    assert err.startswith("error: config key reference.widths: [8] is not one of zoo.widths") and err.count("\n") == 1
    assert not (in_tmp / "artifacts").exists()  # before any work


def test_resnet_chain_with_generated_and_recomputed_batchnorm_statistics(in_tmp, ray_local, capsys):
    assert imitate_cli(*TINY_RESNET) == 0
    pol = in_tmp / "artifacts/runs/digits_resnet-imitate/policy.safetensors"
    assert generate.cli(["--policy", str(pol), "--seeds", "0", "--mean", "--out", "gen",
                          "--set", "generate.bn_recompute_batches=0"]) == 0  # the generated statistics themselves
    assert generate.cli(["--policy", str(pol), "--seeds", "0", "--mean", "--out", "bn",
                          "--set", "generate.bn_recompute_batches=2"]) == 0
    ref = build_reference("resnet", [4, 8], (1, 8, 8), 10)
    files = [json.loads((in_tmp / d / "report.json").read_text())["samples"][0]["file"] for d in ("gen", "bn")]
    gen, bn = (load_weights(f, expected=ref.state_dict())[0] for f in files)
    assert all(torch.equal(gen[k], bn[k]) for k in gen if "running" not in k)  # only the statistics change
    assert not torch.equal(gen["bn.running_var"], bn["bn.running_var"])
    # Independently: the recomputed statistics are those of the generated net's activations on the same 2 batches.
    from trainer.generator import WeightGenerator

    weight_generator = WeightGenerator.load(pol, ["generate.bn_recompute_batches=2"])
    x = weight_generator.bn_inputs
    assert len(x) == 2 * weight_generator.cfg.zoo.batch_size
    ref.load_state_dict(gen)
    ref.stem.register_forward_hook(lambda m, i, o: setattr(m, "out", o))
    ref.eval()
    ref(x)
    torch.testing.assert_close(bn["bn.running_mean"], ref.stem.out.mean((0, 2, 3)), atol=1e-5, rtol=1e-4)
    assert bench_main(["generate", "--seeds", "1", "--policy", str(pol), "--config", str(CONFIGS / "digits_resnet.yaml"),
                       "--set", "reference.widths=[4,8]", "--set", "zoo.runs=2", "--set", "zoo.epochs=1",
                       "--set", "generate.schedule=[0.0,0.5,1.0]"]) == 0  # the policy's: 4 checkpoints hold no more
    assert "SGD (2 zoo runs" in capsys.readouterr().out


def test_cnn_chain_on_digits(in_tmp, ray_local):
    assert imitate_cli("--set", "reference.family=cnn", "--set", "reference.widths=[4]", "--set", "zoo.runs=2") == 0
    assert generate.cli(["--seeds", "0", "--mean", "--out", "cnn", "--set", "reference.widths=[6]"]) == 0
    ref = build_reference("cnn", [6], (1, 8, 8), 10).state_dict()
    load_weights(json.loads((in_tmp / "cnn/report.json").read_text())["samples"][0]["file"], expected=ref)


def test_recomputing_batchnorm_statistics_needs_batchnorm(trained, capsys):
    assert generate.cli(["--seeds", "0", "--set", "generate.bn_recompute_batches=2"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: config key generate.bn_recompute_batches: mlp[8] has no BatchNorm") and \
        err.count("\n") == 1


def test_grpo_runs_at_a_width_the_imitation_policy_never_saw(trained, in_tmp):
    from trainer import grpo
    from tests.settings import GRPO

    args = sum((["--set", s] for s in GRPO + ["grpo.iterations=1", "grpo.eval_every=1", "reference.widths=[12]"]), [])
    assert grpo.cli(args + ["--init-policy", str(trained / "policy.safetensors")]) == 0
    spec = json.loads((in_tmp / "artifacts/runs/digits_mlp-grpo/policy.json").read_text())
    assert spec["experiment"]["reference"]["widths"] == [12]  # saved as a width-12 policy, its scales carried over
    assert generate.cli(["--policy", str(in_tmp / "artifacts/runs/digits_mlp-grpo/policy.safetensors"), "--seeds", "0",
                          "--out", "g12"]) == 0


@pytest.mark.parametrize("nets", ["final", "every_step"])
def test_the_task_loss_of_a_batchnorm_net_is_its_train_mode_cross_entropy(nets):
    """imitate.task_inits on a ResNet: the generated nets run in train mode (batch statistics; torch's batch norm has
    no gradient for running statistics), the loss equals each net's cross-entropy computed independently (with
    "every_step", each step's net: the walk cut after each step), the policy gets a gradient, and the template keeps
    its buffers and eval mode."""
    import torch.nn.functional as F

    from envs.models import reference_from_config
    from envs.tasks import task_from_config
    from policy.model import DenoisingPolicy
    from policy.tokenizer import Tokenizer, fit_scales
    from trainer.config import load_config
    from trainer.imitate import TASK_SEED_BASE, task_loss
    from trainer.generator import WeightGenerator, init_states, reference_layout

    cfg = load_config(CONFIGS / "digits_resnet.yaml", ["reference.widths=[4,8]", "policy.dim=16", "policy.rounds=1",
                                                       "policy.heads=2", f"imitate.task_nets={nets}"])
    task = task_from_config(cfg.task)
    template, layout = reference_layout(cfg, task)
    template.eval()
    buffers = {k: v.clone() for k, v in template.state_dict().items()}
    init = init_states(cfg, task, range(4))
    tok = Tokenizer(layout, fit_scales({k: init[k] for k in layout.shapes}))
    torch.manual_seed(0)
    policy = DenoisingPolicy(cfg.policy, layout, tok.centres())
    weight_generator = WeightGenerator(cfg, policy, tok, [0.0, 0.5, 1.0], [0.0, 0.5, 1.0])
    loss = task_loss(weight_generator, template, task, "train", 2, 32, torch.Generator().manual_seed(7))
    loss.backward()
    assert policy.rest_left["9"].grad.abs().sum() > 0  # the conv kernels' head learns from it
    assert not template.training and [k for k, v in template.state_dict().items() if not torch.equal(v, buffers[k])] == []

    gen = torch.Generator().manual_seed(7)
    seeds = (TASK_SEED_BASE + torch.randint(10**9, (2,), generator=gen)).tolist()
    idx = torch.randint(len(task.train), (32,), generator=gen)
    expected = []
    for schedule in ([[0.0, 0.5]] if nets == "every_step" else []) + [[0.0, 0.5, 1.0]]:
        with torch.no_grad():
            final, _ = dataclasses.replace(weight_generator, schedule=schedule).generate(init_states(cfg, task, seeds),
                                                                                         mean_only=True)
        for i in range(2):
            net = reference_from_config(cfg.reference, task)
            net.load_state_dict({k: v[i] for k, v in final.items()})
            expected.append(F.cross_entropy(net.train()(task.train.x[idx]), task.train.y[idx]))
    assert len(expected) == (4 if nets == "every_step" else 2)
    torch.testing.assert_close(loss.detach(), torch.stack(expected).mean(), rtol=1e-5, atol=1e-6)
