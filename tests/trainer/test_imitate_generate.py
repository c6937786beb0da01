"""Tiny-budget runs of the real entry points: imitate -> generate, resume, and bad --init files."""

import dataclasses
import json

import pytest
import torch

from envs.models import build_reference
from trainer import generate, imitate
from trainer.checkpoints import load_weights, save_weights

from tests.settings import GENERATIVE, imitate_cli



def test_imitate_then_generate_end_to_end(trained, in_tmp, capsys):
    spec = json.loads((trained / "policy.json").read_text())
    assert spec["trained_steps"] == 6 and spec["zoo_runs"] == 3 and len(spec["schedule"]) == 3
    assert spec["schedule"][0] == 0.0 and spec["schedule"][-1] == 1.0 and set(spec["schedule"]) <= set(spec["grid"])
    assert list(trained.glob("events.out.tfevents.*"))
    assert generate.cli(["--seeds", "0..2", "--mean", "--name", "smoke"]) == 0
    report = json.loads((in_tmp / "artifacts/generated/smoke/report.json").read_text())
    assert [s["seed"] for s in report["samples"]] == [0, 1, 2]
    ref = build_reference("mlp", [8], (1, 8, 8), 10)
    for s in report["samples"]:
        weights, meta = load_weights(s["file"], expected=ref.state_dict())
        assert float(meta["test_accuracy"]) == s["test_accuracy"] and 0.0 <= s["test_accuracy"] <= 1.0
    # the report's accuracy is the file's accuracy, recomputed independently
    from envs.scoring import evaluate
    from envs.tasks import load_task
    ref.load_state_dict(load_weights(report["samples"][0]["file"])[0])
    test = load_task("digits", reward_size=300).test
    assert evaluate(ref, test)[1] == report["samples"][0]["test_accuracy"]
    # the three nets as one ensemble: their softmax averaged, one model at a time
    probs = 0
    for s in report["samples"]:
        ref.load_state_dict(load_weights(s["file"])[0])
        with torch.no_grad():
            probs = probs + ref.eval()(test.x).softmax(-1) / 3
    ensemble = (probs.argmax(-1) == test.y).double().mean().item()
    assert report["summary"]["test_accuracy_ensemble"] == pytest.approx(ensemble, abs=1e-12)
    out = capsys.readouterr().out
    assert "3 nets in 2 steps" in out and f"the nets as one ensemble, softmax averaged: {ensemble:.4f}" in out


def test_generate_uses_the_grpo_policy_once_one_was_saved(trained, in_tmp):
    """The default policy is the best the tool has: the imitation policy until `trainer.grpo` saves one."""
    assert generate.cli(["--seeds", "0", "--name", "a"]) == 0
    report = json.loads((in_tmp / "artifacts/generated/a/report.json").read_text())
    assert report["summary"]["policy"] == "artifacts/runs/digits_mlp-imitate/policy.safetensors"
    # The default output: the best of generate.best_of draws, its choice recorded, never the mean path.
    (net,) = report["samples"]
    assert report["summary"]["output"].startswith("the best of 16 draws (0.05 of the init's entries re-drawn")
    assert not report["summary"]["mean_path"] and report["summary"]["redraw"] == 0.05
    assert net["best_of"] == 16 and net["chosen_draw"] == min(range(16), key=lambda i: net["candidate_reward_loss"][i])
    from trainer.generator import WeightGenerator

    weight_generator = WeightGenerator.load(trained / "policy.safetensors")
    with torch.no_grad():
        weight_generator.policy.out_left.weight.mul_(1.5)  # another policy than the imitation one
    weight_generator.save(in_tmp / "artifacts/runs/digits_mlp-grpo")
    assert generate.cli(["--seeds", "0", "--name", "b"]) == 0
    report_b = json.loads((in_tmp / "artifacts/generated/b/report.json").read_text())
    assert report_b["summary"]["policy"] == "artifacts/runs/digits_mlp-grpo/policy.safetensors"
    a = load_weights(report["samples"][0]["file"])[0]
    b = load_weights(report_b["samples"][0]["file"])[0]
    assert not all(torch.equal(a[k], b[k]) for k in a)  # the other policy's net


@pytest.mark.parametrize("split, nets", [("train", "final"), ("reward", "final"), ("train", "every_step")])
def test_task_loss_is_the_cross_entropy_of_the_generated_nets(trained, split, nets):
    from envs.tasks import load_task
    from trainer.generator import WeightGenerator, init_states, reference_layout

    weight_generator = WeightGenerator.load(trained / "policy.safetensors",
                                            ["imitate.task_inits=3", f"imitate.task_nets={nets}"])
    task = load_task("digits", reward_size=300)
    template = reference_layout(weight_generator.cfg, task)[0].eval()
    gen = torch.Generator().manual_seed(5)
    loss = imitate.task_loss(weight_generator, template, task, split, 3, 40, gen.clone_state())
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in weight_generator.policy.parameters())
    # Independently: the same seeds and examples, each generated net loaded into the model and run on its own.
    seeds = (imitate.TASK_SEED_BASE + torch.randint(10**9, (3,), generator=gen)).tolist()
    data = task.train if split == "train" else task.reward
    idx = torch.randint(len(data.y), (40,), generator=gen)
    # "every_step": the nets of the walk cut after each of its steps, each a walk of its own.
    schedule = weight_generator.schedule
    ends = range(2, len(schedule) + 1) if nets == "every_step" else [len(schedule)]
    ces = []
    for end in ends:
        walker = dataclasses.replace(weight_generator, schedule=schedule[:end])
        with torch.no_grad():
            final, _ = walker.generate(init_states(weight_generator.cfg, task, seeds), mean_only=True)
        for i in range(3):
            template.load_state_dict({k: v[i] for k, v in final.items()})
            ces.append(torch.nn.functional.cross_entropy(template(data.x[idx]), data.y[idx]))
    assert len(ces) == 3 * (len(schedule) - 1 if nets == "every_step" else 1) and len(schedule) >= 3
    assert loss.item() == pytest.approx(torch.stack(ces).mean().item(), rel=1e-5)


def all_scalars(run_dir):
    """tag -> [(step, value)] for every scalar tag of a run's event files."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from trainer.runlog import read_scalars

    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: read_scalars(run_dir, tag) for tag in acc.Tags()["scalars"]}




@pytest.mark.parametrize("extra", [[], ["--set", "imitate.walked_frac=1.0"], ["--set", "imitate.task_inits=2"],
                                   sum((["--set", s] for s in GENERATIVE), []),
                                   sum((["--set", s] for s in GENERATIVE + ["imitate.generative_loss=energy"]), []),
                                   ["--set", "policy.flow=true"]],
                         ids=["zoo-inputs", "walked-inputs", "task-loss", "generative", "energy", "flow"])
def test_resume_is_bit_identical(trained, in_tmp, monkeypatch, extra):
    straight = load_weights(trained / "policy.safetensors")[0]
    straight_dir = trained
    if extra:  # walked inputs or the task loss change training, and survive a resume
        assert imitate_cli("--name", "straight", *extra) == 0
        straight_dir = in_tmp / "artifacts/runs/straight"
        default, straight = straight, load_weights(straight_dir / "policy.safetensors")[0]
        assert any(not torch.equal(default[k], straight[k]) for k in default)
    # A run killed right after its step-3 checkpoint, then resumed, ends with exactly the same policy.
    real_save = imitate.save_training_state

    def save_then_die(*args, **kwargs):
        real_save(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(imitate, "save_training_state", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        imitate_cli("--name", "stopped", *extra)
    monkeypatch.setattr(imitate, "save_training_state", real_save)
    assert imitate_cli("--name", "stopped", "--resume", *extra) == 0
    resumed = load_weights(in_tmp / "artifacts/runs/stopped/policy.safetensors")[0]
    assert set(resumed) == set(straight)
    if "imitate.generative_loss=energy" in extra:  # the energy score needs no posterior, so none is built
        assert not any(k.startswith("posterior") for k in straight)
    elif "policy.generative=true" in extra:
        assert any(k.startswith("posterior_trunk.") for k in straight)
    for k in straight:
        assert torch.equal(resumed[k], straight[k]), k
    # The curves too: every tag, every step (the checkpoint's own step 3 included), the same values.
    want, got = all_scalars(straight_dir), all_scalars(in_tmp / "artifacts/runs/stopped")
    assert len(want) >= 8 and [s for s, _ in want["losses/imitation"]] == [1, 2, 3, 4, 5, 6]
    assert [s for s, _ in want["eval/accuracy_mean"]] == [3, 6]
    assert got.keys() == want.keys()
    for tag in want:
        assert got[tag] == want[tag], tag


def test_overwrite_replaces_an_earlier_run_and_its_curves(trained, in_tmp):
    assert imitate_cli() == 2  # the same name again: refused (test_hardening checks the message)
    assert imitate_cli("--overwrite", "--set", "imitate.steps=4") == 0
    assert len(list(trained.glob("events.out.tfevents.*"))) == 1  # the old run's curves are gone, not mixed in
    assert [s for s, _ in all_scalars(trained)["losses/imitation"]] == [1, 2, 3, 4]
    assert json.loads((trained / "policy.json").read_text())["trained_steps"] == 4


@pytest.mark.parametrize("case, message", [
    ("wrong_shape", "tensor 'layers.0.weight' has shape (9, 64), expected (8, 64)"),
    ("nan", "tensor 'layers.0.weight' has non-finite values"),
    ("not_safetensors", "not a readable safetensors file"),
    ("missing", "file not found"),
])
def test_bad_init_files_give_one_line_errors(trained, in_tmp, capsys, case, message):
    path = in_tmp / f"{case}.safetensors"
    if case == "wrong_shape":
        save_weights(path, build_reference("mlp", [9], (1, 8, 8), 10).state_dict())
    elif case == "nan":
        sd = build_reference("mlp", [8], (1, 8, 8), 10).state_dict()
        sd["layers.0.weight"][1, 2] = float("nan")
        save_weights(path, sd)
    elif case == "not_safetensors":
        path.write_bytes(b"\x00" * 5)
    before = set(in_tmp.rglob("*"))
    assert generate.cli(["--init", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {path}: {message}") and err.count("\n") == 1
    assert set(in_tmp.rglob("*")) == before  # no partial output


def test_user_init_file_is_used(trained, in_tmp):
    init = build_reference("mlp", [8], (1, 8, 8), 10, seed=77).state_dict()
    path = save_weights(in_tmp / "mine.safetensors", init)
    assert generate.cli(["--init", str(path), "--mean", "--out", "out"]) == 0
    report = json.loads((in_tmp / "out/report.json").read_text())
    assert report["samples"][0]["init"] == str(path) and (in_tmp / "out/mine-generated.safetensors").is_file()


def test_a_policy_saved_before_the_unit_latent_and_unit_codes_loads_with_them_at_zero(trained, in_tmp):
    from envs.tasks import task_from_config
    from trainer.checkpoints import CheckpointError, read_metadata
    from trainer.generator import PARAMS_ADDED_LATER, WeightGenerator, init_states

    weights, _ = load_weights(trained / "policy.safetensors")
    old = in_tmp / "old"
    old.mkdir()
    added = {k for k in weights if k.startswith(PARAMS_ADDED_LATER)}
    assert added >= {"unit_value", "unit_out", "latent_mean.net.2.bias"}
    old_metadata = {k: v for k, v in read_metadata(trained / "policy.safetensors").items() if k != "tensors"}
    save_weights(old / "policy.safetensors", {k: v for k, v in weights.items() if not k.startswith(PARAMS_ADDED_LATER)},
                 old_metadata)
    (old / "policy.json").write_text((trained / "policy.json").read_text())
    weight_generator = WeightGenerator.load(old / "policy.safetensors")
    assert all(not p.any() for p in weight_generator.policy.latent_mean.net[-1].parameters())
    assert not weight_generator.policy.unit_value.any() and not weight_generator.policy.unit_out.any()
    with torch.no_grad():
        weight_generator.policy.latent_mean.net[-1].bias.fill_(1.0)  # a latent mean the trunk alone would not give
    init = init_states(weight_generator.cfg, task_from_config(weight_generator.cfg.task), [5])
    moved = weight_generator.generate(init, mean_only=True)[0]
    reloaded = WeightGenerator.load(old / "policy.safetensors").generate(init, mean_only=True)[0]
    assert any(not torch.equal(moved[k], reloaded[k]) for k in moved)
    weights["latent_mean.net.2.bias"] = weights["latent_mean.net.2.bias"][:1]  # a wrong shape is still an error
    save_weights(old / "policy.safetensors", weights, old_metadata)
    with pytest.raises(CheckpointError, match="do not fit its spec"):
        WeightGenerator.load(old / "policy.safetensors")
    # A policy saved now counts its tensors: one missing is an error, not a zero in its place.
    del weights["unit_value"]
    save_weights(old / "policy.safetensors", weights, read_metadata(trained / "policy.safetensors"))
    with pytest.raises(CheckpointError, match="do not fit its spec \\(missing tensor 'unit_value'\\)"):
        WeightGenerator.load(old / "policy.safetensors")


def test_a_walk_of_another_step_count_than_the_policy_was_trained_on_is_said(trained, capsys):
    """A policy asked (by --set) to walk a schedule of another length walks it (a shorter walk is a choice), with one
    note on stderr; the same length, snapped, or the policy's own schedule says nothing. A config's schedule of another
    length leaves the policy on its own, with a note."""
    from trainer.generator import WeightGenerator

    own = WeightGenerator.load(trained / "policy.safetensors")
    assert len(own.schedule) == 3 and capsys.readouterr().err == ""
    short = WeightGenerator.load(trained / "policy.safetensors", ["generate.schedule=[0.0,1.0]"])
    err = capsys.readouterr().err.strip().splitlines()
    assert short.schedule == [0.0, 1.0] and len(err) == 1
    assert err[0].startswith("note: ") and "trained on a 2-step walk; it walks generate.schedule's 1 steps" in err[0]
    WeightGenerator.load(trained / "policy.safetensors", ["generate.schedule=[0.0,0.45,1.0]"])
    assert "note:" not in capsys.readouterr().err
    # A config (a bench's, GRPO's) of another step count does not change the policy's walk: it keeps its own, and says so.
    cfg = WeightGenerator.load(trained / "policy.safetensors", ["generate.schedule=[0.0,1.0]"]).cfg
    capsys.readouterr()
    kept = WeightGenerator.load(trained / "policy.safetensors", cfg=cfg)
    err = capsys.readouterr().err.strip().splitlines()
    assert kept.schedule == own.schedule == kept.cfg.generate.schedule and len(err) == 1  # what it saves says so too
    assert cfg.generate.schedule == [0.0, 1.0]  # the caller's config is left as it was
    assert err[0].startswith("note: ") and "walks the 2-step schedule it was trained on, not the config's 1-step" in err[0]
    asked = WeightGenerator.load(trained / "policy.safetensors", ["generate.schedule=[0.0,0.005,1.0]"])
    retimed = WeightGenerator.load(trained / "policy.safetensors", cfg=asked.cfg)  # the same step count: re-timed
    assert retimed.schedule == asked.schedule != own.schedule and "note:" not in capsys.readouterr().err


def test_a_flow_learns_from_points_on_lines_and_walks_euler_steps(trained, in_tmp):
    """A flow policy's imitation inputs lie on the straight lines from the zoo runs' inits to their finals, the target
    being the line's end; `generate` walks its schedule on the flow's own grid, each step moving its share of the way
    to the predicted end."""
    from trainer.config import load_config
    from trainer.generator import FLOW_GRID, WeightGenerator, init_states
    from envs.tasks import task_from_config

    from tests.settings import TINY

    cfg = load_config(overrides=TINY)
    task = task_from_config(cfg.task)
    _, widths, _ = imitate.zoo_data(cfg, task)
    wd = widths[0]
    points, finals, s = imitate.line_points(wd, 64, torch.Generator().manual_seed(0))
    assert 0 <= s.min() and s.max() < 1 and s.std() > 0.2
    for k, v in wd.data.items():  # each point is (1 - s) W_0 + s W_1 of one run, whose W_1 is the target
        run = [next(r for r in range(wd.runs) if torch.equal(v[r, -1], f)) for f in finals[k]]
        view = s.view(-1, *[1] * (v.dim() - 2))
        torch.testing.assert_close(points[k], (1 - view) * v[run, 0] + view * v[run, -1])

    schedule = "generate.schedule=[0.0,0.3,0.6,1.0]"
    assert imitate_cli("--name", "flow", "--set", "policy.flow=true", "--set", schedule) == 0
    weight_generator = WeightGenerator.load(in_tmp / "artifacts/runs/flow/policy.safetensors")
    assert weight_generator.grid == FLOW_GRID and weight_generator.schedule == [0.0, 0.296875, 0.59375, 1.0]
    policy, inits = weight_generator.policy, init_states(cfg, task, [5, 6])
    generated, _ = weight_generator.generate(inits, mean_only=True)
    x = weight_generator.encode(inits)
    with torch.no_grad():
        for t1, t2 in zip(weight_generator.schedule[:-1], weight_generator.schedule[1:]):
            end, _ = policy(x, torch.full((2,), t1), torch.ones(2))
            x = {k: x[k] + (t2 - t1) / (1 - t1) * (end[k] - x[k]) for k in x}
    expected = weight_generator.tokenizer.decode(x, inits)
    for k in generated:
        torch.testing.assert_close(generated[k], expected[k])
