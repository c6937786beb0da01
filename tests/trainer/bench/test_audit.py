"""`bench audit` end to end on the tiny zoo and policy of tests/trainer/test_audit.py (the audit's measures are tested
there)."""

import json

import pytest
import torch

from tests.settings import TINY_ZOO as TINY
from trainer.bench.__main__ import cli as bench_main
from trainer.generator import WeightGenerator, mean_path_accuracy


def test_bench_audit_cli_writes_table_json_and_figures(tiny_zoo, tiny_policy, in_tmp, capsys):
    cfg, task = tiny_zoo[:2]
    assert bench_main(["audit", "--seeds", "4", "--out", "audit.md", "--plots", "figs"] + tiny_policy) == 0
    table = (in_tmp / "audit.md").read_text()
    assert "| generated (the mean path) |" in table and "| k = 4 |" in table and "| k = 16 |" not in table
    r = json.loads((in_tmp / "audit.json").read_text())
    assert r["seeds"] == [0, 1, 2, 3] and r["zoo_runs"] == 3 and list(r["ensembles"]) == ["1", "4"]  # k = 4 is all 4 nets
    weight_generator = WeightGenerator.load(in_tmp / "artifacts/runs/digits_mlp-imitate/policy.safetensors")  # its own experiment
    assert r["accuracy"]["generated"] == pytest.approx(mean_path_accuracy(weight_generator, task, [0, 1, 2, 3])[0], abs=1e-12)
    assert r["ensembles"]["1"]["generated"] == pytest.approx(r["accuracy"]["generated"], abs=1e-12)
    manifest = json.loads((cfg.zoo_dir / "manifest.json").read_text())
    assert r["accuracy"]["zoo"] == [run["checkpoints"][-1]["test_accuracy"] for run in manifest["runs"]]
    # SGD from held-out seed 2 is the zoo recipe from that seed's init: its run record says so, and scores the same.
    (run,) = (in_tmp / "artifacts/audit/digits_mlp").glob("sgd-*/seed-000002/run-0000/run.json")
    record = json.loads(run.read_text())
    assert record["seed"] == 2 and r["accuracy"]["sgd"][2] == record["checkpoints"][-1]["test_accuracy"]
    assert 0.0 < min(r["fidelity"]["sgd_travel"]) and max(r["novelty"]["zoo"]["max_iou"]) <= 1.0
    (group, per), = r["features"].items()  # the MLP's one hidden group, for the inits, generated, SGD and the zoo
    assert sorted(per) == ["generated", "init", "sgd", "zoo"] and f"| generated | {group} |" in table
    for name, v in per.items():  # 8 units a net; 4 nets, but the zoo has only 3
        assert len(v["best_cosine"]) == (3 if name == "zoo" else 4) * 8 and 1.0 <= v["effective_rank"] <= 4 * 8
    fn = r["function"]  # the same units by what they detect: centred pre-activations on the first test examples
    assert fn["group"] == group and fn["examples"] == min(2000, len(task.test.y))
    assert f"| generated | {group} |" in table.split("what the first layer's units detect")[1]
    from trainer.audit import feature_overlap
    from trainer.generator import init_states
    with torch.no_grad():
        nets = weight_generator.generate(init_states(weight_generator.cfg, task, [0, 1, 2, 3]), mean_only=True)[0]
    x = task.test.x[:fn["examples"]].flatten(1)
    z = torch.einsum("nuf,ef->nue", nets["layers.0.weight"], x) + nets["layers.0.bias"][..., None]
    want = feature_overlap(z - z.mean(2, keepdim=True))
    assert fn["generated"]["best_cosine"] == pytest.approx(want["best_cosine"], abs=1e-5)
    assert fn["generated"]["effective_rank"] == pytest.approx(want["effective_rank"], rel=1e-5)
    # SGD's own nets handed to the walk at each schedule point: from t = 0 it is the policy's own mean path, and with
    # no step left it is SGD alone.
    hand = r["handoff"]
    assert [h["steps"] for h in hand] == list(range(len(weight_generator.schedule) - 1, -1, -1))
    assert hand[0]["accuracy"] == pytest.approx(r["accuracy"]["generated"], abs=1e-12)
    assert hand[-1]["accuracy"] == pytest.approx(r["accuracy"]["sgd"], abs=1e-12)
    assert hand[0]["features"]["best_cosine"] == pytest.approx(r["features"][group]["generated"]["best_cosine"])
    assert "then the policy's last 1 step(s)" in table
    pngs = sorted(p.name for p in (in_tmp / "figs").glob("*.png"))
    assert pngs == ["digits_mlp-audit-distance.png", "digits_mlp-audit-ensembles.png", "digits_mlp-audit-iou.png"]
    assert all((in_tmp / "figs" / p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)


def test_bench_audit_hands_a_flow_the_points_of_the_lines_to_sgds_finals(tiny_zoo, in_tmp):
    """A flow policy's handoff rows start from (1 - s) init + s SGD's final at the schedule's points: the row with one
    step left is the policy's predicted end from that point, recomputed here."""
    from tests.settings import TINY_POLICY
    from trainer import imitate
    from trainer.audit import sgd_from_seeds
    from trainer.generator import init_states, score_states

    cfg, task = tiny_zoo[:2]
    sets = sum((["--set", s] for s in TINY + ["policy.flow=true", f"zoo.out={cfg.zoo_dir}"] + TINY_POLICY), [])
    assert imitate.cli(sets + ["--set", "generate.schedule=[0.0,0.25,0.5,1.0]"]) == 0
    assert bench_main(["audit", "--seeds", "4", "--out", "audit.md"] + sets
                      + ["--set", "generate.schedule=[0.0,0.25,0.5,1.0]"]) == 0
    r = json.loads((in_tmp / "audit.json").read_text())
    hand = r["handoff"]
    assert r["flow"] and [h["sgd_to"] for h in hand] == [0.0, 0.25, 0.5, 1.0]
    weight_generator = WeightGenerator.load(in_tmp / "artifacts/runs/digits_mlp-imitate/policy.safetensors")
    inits = init_states(cfg, task, [0, 1, 2, 3])
    sgd = sgd_from_seeds(cfg, [0, 1, 2, 3], {k: v[0] for k, v in inits.items()})
    x = weight_generator.encode({k: 0.5 * inits[k] + 0.5 * sgd[k] for k in inits})
    with torch.no_grad():
        end, _ = weight_generator.policy(x, torch.full((4,), 0.5), torch.ones(4))
    nets = weight_generator.tokenizer.decode(end, inits)
    assert hand[2]["accuracy"] == pytest.approx(score_states(cfg, task, nets, "test"), abs=1e-12)
    assert "the line from the init to SGD's final, at s = 0.5, then the policy's last 1 step(s)" in (
        in_tmp / "audit.md").read_text()


@pytest.mark.parametrize("latent", [False, True], ids=["mean-path-draws", "latent-draws"])
def test_bench_audit_sample_audits_the_first_of_two_draws_and_their_agreement(tiny_zoo, tiny_policy, in_tmp, latent):
    """--sample: the audited nets are the first of two draws per init (`WeightGenerator.draw`; with --latent, drawing
    the policy's sampling noise too), and the two draws' agreement is recomputed here from their predictions."""
    import torch

    from trainer.audit import predictions, split_logits
    from trainer.generator import init_states, score_states

    cfg, task = tiny_zoo[:2]
    assert bench_main(["audit", "--seeds", "3", "--sample", "--sample-seed", "7", "--out", "audit.md"]
                      + ["--latent"] * latent + tiny_policy) == 0
    r = json.loads((in_tmp / "audit.json").read_text())
    assert r["output"] == "one draw per init, 0.05 of it re-drawn" + ", the latent sampled" * latent
    weight_generator = WeightGenerator.load(in_tmp / "artifacts/runs/digits_mlp-imitate/policy.safetensors")
    pair = weight_generator.draw(init_states(weight_generator.cfg, task, [0, 1, 2]), 2, torch.Generator().manual_seed(7),
                                 sample_latent=latent)
    first, second = ({k: v[i::2] for k, v in pair.items()} for i in (0, 1))
    assert r["accuracy"]["generated"] == pytest.approx(score_states(weight_generator.cfg, task, first, "test"), abs=1e-12)
    a, b = (predictions(split_logits(weight_generator.cfg, task, s)) for s in (first, second))
    assert r["fidelity"]["agree_generated_two_draws"] == pytest.approx((a == b).double().mean(1).tolist(), abs=1e-12)


@pytest.mark.parametrize("args, message", [
    (["--seed-start", "1001"], "held-out seeds 1001..1032 overlap the zoo's seeds 1000..1002"),
    (["--seeds", "0"], "--seeds 0: need at least one held-out seed"),
    (["--policy", "nowhere/policy.safetensors"], "nowhere/policy.safetensors: policy file not found"),
    (["--latent"], "--latent: it samples the latent of --sample's draws; add --sample"),
])
def test_bench_audit_user_errors_are_one_line_before_any_work(tiny_zoo, in_tmp, capsys, args, message):
    sets = sum((["--set", s] for s in TINY + [f"zoo.out={tiny_zoo[0].zoo_dir}"]), [])
    assert bench_main(["audit", *args, "--plots", "figs"] + sets) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {message}") and err.count("\n") == 1, err
    assert not list(in_tmp.iterdir())  # nothing trained, nothing written
