"""The audit's alignment, noise baseline and behaviour measures on a tiny digits zoo, and `bench audit` end to end."""

import json

import pytest
import torch

from envs.tasks import task_from_config
from policy.tokenizer import Tokenizer
from trainer import audit
from trainer.bench import fit, precision, rollout, sensitivity
from trainer.bench.__main__ import build_parser, main as bench_main
from trainer.bench.common import default_policy, figure
from trainer.config import load_config
from trainer.pipeline import init_states, reference_layout
from trainer.zoo import train_run, write_manifest

TINY = ["zoo.runs=3", "reference.widths=[8]", "zoo.epochs=2", "zoo.checkpoints=4", "zoo.batch_size=16"]


@pytest.fixture(scope="module")
def tiny_zoo(tmp_path_factory):
    """Three digits runs trained in-process (no Ray): (cfg, task, layout, stacked final checkpoints)."""
    folder = tmp_path_factory.mktemp("zoo")
    cfg = load_config(overrides=TINY + [f"zoo.out={folder}"])
    for run in range(cfg.zoo.runs):
        train_run(cfg, run, folder)
    write_manifest(cfg, folder)
    task = task_from_config(cfg.task)
    template, layout = reference_layout(cfg, task)
    return cfg, task, layout, audit.zoo_finals(cfg, template.state_dict())


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
    preds = audit.predictions(audit.test_logits(cfg, task, tok.decode(copy)))
    zoo_preds = audit.predictions(audit.test_logits(cfg, task, zoo))
    assert torch.equal(preds[0], zoo_preds[1])

    noisy = audit.noise_baseline(zoo, torch.tensor([1, 1]), torch.tensor([0.0, 2.5]), seed=0)
    assert all(torch.equal(noisy[k][0], zoo[k][1]) for k in zoo)
    acc = (audit.predictions(audit.test_logits(cfg, task, noisy)) == task.test.y).double().mean(1)
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
    torch.testing.assert_close(audit.test_logits(cfg, task, same)[0], audit.test_logits(cfg, task, states)[1])


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


POLICY = ["policy.dim=16", "policy.rounds=1", "policy.heads=2", "imitate.steps=6", "imitate.eval_every=3",
          "imitate.save_every=3", "imitate.eval_seeds=2", "imitate.batch_size=4", "generate.schedule=[0.0,0.5,1.0]"]


@pytest.fixture
def tiny_policy(tiny_zoo, in_tmp):
    """A 6-step imitation policy on the tiny zoo (already built, so no Ray starts); returns the --set arguments."""
    from trainer import imitate

    sets = sum((["--set", s] for s in TINY + [f"zoo.out={tiny_zoo[0].zoo_dir}"] + POLICY), [])
    assert imitate.cli(sets) == 0
    return sets


def test_bench_audit_cli_writes_table_json_and_figures(tiny_zoo, tiny_policy, in_tmp, capsys):
    from trainer.pipeline import WeightGenerator, mean_path_accuracy

    cfg, task = tiny_zoo[:2]
    assert bench_main(["audit", "--seeds", "4", "--out", "audit.md", "--plots", "figs"] + tiny_policy) == 0
    table = (in_tmp / "audit.md").read_text()
    assert "| generated (policy mean path) |" in table and "| k = 4 |" in table and "| k = 16 |" not in table
    r = json.loads((in_tmp / "audit.json").read_text())
    assert r["seeds"] == [0, 1, 2, 3] and r["zoo_runs"] == 3 and list(r["ensembles"]) == ["1", "4"]
    wg = WeightGenerator.load(in_tmp / "artifacts/runs/digits_mlp-imitate/policy.safetensors", cfg=cfg)
    assert r["accuracy"]["generated"] == pytest.approx(mean_path_accuracy(wg, task, [0, 1, 2, 3])[0], abs=1e-12)
    assert r["ensembles"]["1"]["generated"] == pytest.approx(r["accuracy"]["generated"], abs=1e-12)
    manifest = json.loads((cfg.zoo_dir / "manifest.json").read_text())
    assert r["accuracy"]["zoo"] == [run["checkpoints"][-1]["test_accuracy"] for run in manifest["runs"]]
    # SGD from held-out seed 2 is the zoo recipe from that seed's init: its run record says so, and scores the same.
    (run,) = (in_tmp / "artifacts/audit/digits_mlp").glob("sgd-*/seed-000002/run-0000/run.json")
    record = json.loads(run.read_text())
    assert record["seed"] == 2 and r["accuracy"]["sgd"][2] == record["checkpoints"][-1]["test_accuracy"]
    assert 0.0 < min(r["fidelity"]["sgd_travel"]) and max(r["novelty"]["zoo"]["max_iou"]) <= 1.0
    pngs = sorted(p.name for p in (in_tmp / "figs").glob("*.png"))
    assert pngs == ["digits_mlp-audit-distance.png", "digits_mlp-audit-ensembles.png", "digits_mlp-audit-iou.png"]
    assert all((in_tmp / "figs" / p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)


@pytest.mark.parametrize("args, message", [
    (["--seed-start", "1001"], "held-out seeds 1001..1032 overlap the zoo's seeds 1000..1002"),
    (["--seeds", "0"], "--seeds 0: need at least one held-out seed"),
    (["--policy", "nowhere/policy.safetensors"], "nowhere/policy.safetensors: policy file not found"),
])
def test_bench_audit_user_errors_are_one_line_before_any_work(tiny_zoo, in_tmp, capsys, args, message):

    sets = sum((["--set", s] for s in TINY + [f"zoo.out={tiny_zoo[0].zoo_dir}"]), [])
    assert bench_main(["audit", *args, "--plots", "figs"] + sets) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {message}") and err.count("\n") == 1, err
    assert not list(in_tmp.iterdir())  # nothing trained, nothing written


def test_bench_report_writes_results_with_tables_figures_and_commands_that_reproduce_them(tiny_zoo, tiny_policy,
                                                                                          in_tmp, monkeypatch):
    import re
    import shlex

    from trainer import plots

    def rollout_stub(args, cfgs):  # the Ray pool's start-up would dominate this test; it has its own smoke test
        return dict(table="| rollout stub |", figures=[plots.bars({"x": {"loop": 1.0}}, "t", "evals/s",
                                                                  figure(args, cfgs[0].name, "rollout"))])

    monkeypatch.setattr(rollout, "run", rollout_stub)
    (in_tmp / "artifacts/bench/digits_mlp").mkdir(parents=True)
    plots.bars({"x": {"a": 1.0}}, "grpo", "pts", in_tmp / "grpo-budget.png")
    (in_tmp / "artifacts/bench/digits_mlp/grpo.json").write_text(json.dumps(dict(
        command="python -m trainer.bench grpo --budget 3", table="| grpo table |", figures=["grpo-budget.png"])))
    assert bench_main(["report", "--seeds", "4", "--out", "docs/RESULTS.md"] + tiny_policy) == 0
    text = (in_tmp / "docs/RESULTS.md").read_text()
    links = re.findall(r"!\[[^]]*\]\(([^)]+)\)", text)
    assert sorted(links) == ["figures/digits_mlp-audit-distance.png", "figures/digits_mlp-audit-ensembles.png",
                             "figures/digits_mlp-audit-iou.png", "figures/digits_mlp-generate.png",
                             "figures/digits_mlp-rollout.png", "figures/grpo-budget.png"]
    assert all((in_tmp / "docs" / link).is_file() for link in links)
    assert "| rollout stub |" in text and "| grpo table |" in text and "python -m trainer.bench grpo --budget 3" in text
    # The audit section's command, run again, writes exactly the table the report holds.
    (cmd,) = [c for c in re.findall(r"```bash\n(.*)\n```", text) if " audit " in c]
    argv = shlex.split(cmd)[3:]
    argv[argv.index("--out") + 1] = "again.md"
    assert bench_main(argv) == 0
    assert (in_tmp / "again.md").read_text().strip() in text


def test_bench_report_checks_every_step_before_the_first_runs(tiny_zoo, in_tmp, capsys):

    sets = sum((["--set", s] for s in TINY + [f"zoo.out={tiny_zoo[0].zoo_dir}"]), [])
    assert bench_main(["report"] + sets) == 2  # no policy trained yet: found before generate runs
    assert capsys.readouterr().err.startswith("error: artifacts/runs/digits_mlp-imitate/policy.safetensors: policy "
                                              "file not found")
    assert bench_main(["report", "--config", "configs/digits_mlp.yaml", "--config", "configs/mnist_mlp.yaml",
                       "--policy", "p.safetensors"]) == 2
    assert capsys.readouterr().err == ("error: --policy applies to one experiment; with several --config each uses its "
                                       "imitation policy\n")
    assert not list(in_tmp.iterdir())


def test_bench_precision_compares_bf16_with_fp32_scores_of_the_same_samples(in_tmp, ray_local, capsys):
    """Each group's fp32 accuracies equal an independent fp32 scoring of the same draws (same generator seed), and the
    bf16 ones an independent autocast scoring; the rank correlation is that of those two lists."""
    from scipy.stats import spearmanr

    from trainer import imitate
    from trainer.pipeline import WeightGenerator, score_states

    sets = ["--set", "zoo.runs=3", "--set", "reference.widths=[8]", "--set", "zoo.epochs=2", "--set",
            "policy.dim=16", "--set", "policy.rounds=1", "--set", "policy.heads=2", "--set", "imitate.steps=4",
            "--set", "imitate.eval_every=4", "--set", "imitate.save_every=4", "--set", "imitate.eval_seeds=2",
            "--set", "rollout.num_workers=1"]
    assert imitate.cli(sets) == 0
    overrides = [a for a in sets if a != "--set"]
    assert bench_main(["precision", "--seeds", "2", "-G", "4"] + sets) == 0
    out = capsys.readouterr().out
    assert "2 groups of 4 sampled nets" in out and "same best net" in out
    args = build_parser().parse_args(["precision", "--seeds", "2", "-G", "4"] + sets)
    cfg = load_config("configs/digits_mlp.yaml", overrides)
    result = precision.run(args, [cfg])
    wg = WeightGenerator.load(default_policy(cfg), cfg=cfg)
    task = task_from_config(cfg.task)
    gen = torch.Generator().manual_seed(cfg.seed)
    for seed, group in zip((0, 1), result["groups"]):
        states, _ = wg.rollout(init_states(cfg, task, [seed]), 4, gen)
        assert group["fp32_accuracy"] == score_states(cfg, task, states, "reward")
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert group["bf16_accuracy"] == score_states(cfg, task, states, "reward")
        if len(set(group["fp32_accuracy"])) > 1:
            assert group["rho_accuracy"] == pytest.approx(
                spearmanr(group["fp32_accuracy"], group["bf16_accuracy"]).statistic)
    with pytest.raises(SystemExit) as e:  # a ranking needs two nets: refused before any work
        bench_main(["precision", "-G", "1"] + sets)
    assert e.value.code == 2 and "--group-size must be >= 2" in capsys.readouterr().err


def test_bench_fit_compares_the_policy_step_with_no_move_per_tensor(in_tmp, ray_local, capsys):
    """The identity column is the token-unit MSE between each run's init and final checkpoint files, read here
    directly; the policy column that of the policy's own forward pass from the inits; bad runs or start: one line."""
    from safetensors.torch import load_file

    from trainer import imitate
    from trainer.pipeline import WeightGenerator

    sets = ["--set", "zoo.runs=3", "--set", "reference.widths=[8]", "--set", "zoo.epochs=2", "--set",
            "policy.dim=16", "--set", "policy.rounds=1", "--set", "policy.heads=2", "--set", "imitate.steps=4",
            "--set", "imitate.eval_every=4", "--set", "imitate.save_every=4", "--set", "imitate.eval_seeds=2",
            "--set", "imitate.train_runs=2", "--set", "rollout.num_workers=1"]
    assert imitate.cli(sets) == 0
    assert bench_main(["fit", "--runs", "0..2"] + sets) == 0
    out = capsys.readouterr().out
    assert "zoo runs 0..2 (2 of 3 among the runs it was imitated on)" in out
    cfg = load_config("configs/digits_mlp.yaml", [a for a in sets if a != "--set"])
    args = build_parser().parse_args(["fit", "--runs", "1,2"] + sets)
    rows = {r["key"]: r for r in fit.run(args, [cfg])["rows"]}
    wg = WeightGenerator.load(default_policy(cfg))
    manifest = json.loads((cfg.zoo_dir / "manifest.json").read_text())
    files = [[cfg.zoo_dir / r["checkpoints"][i]["file"] for r in manifest["runs"][1:]] for i in (0, -1)]
    init, final = ({k: torch.stack([load_file(f)[k] for f in fs]) for k in rows} for fs in files)
    x0, x1 = wg.tokenizer.encode(init), wg.tokenizer.encode(final)
    with torch.no_grad():
        mean, _ = wg.policy(x0, torch.zeros(2), torch.ones(2))
    for k, r in rows.items():
        assert r["identity"] == pytest.approx(float((x0[k] - x1[k]).double().square().mean()), rel=1e-6)
        assert r["policy"] == pytest.approx(float((mean[k] - x1[k]).double().square().mean()), rel=1e-5)
        assert r["ratio"] == pytest.approx(r["policy"] / r["identity"])
    for bad, message in ((["--runs", "0..5"], "--runs 0..5: "),
                         (["--runs", "0..2", "--start", "99"], "--start 99: expected"),
                         (["--runs", "2..x"], "--runs '2..x': expected N, A..B or A,B,C")):
        assert bench_main(["fit"] + bad + sets) == 2
        assert message in capsys.readouterr().err


def test_bench_sensitivity_is_zero_for_an_unmoved_init_and_refuses_negative_eps(in_tmp, capsys):
    """The zoo's recipe is deterministic: eps 0 retrains the same final exactly (0.000), while another data order
    moves it; the changes are relative to each run's own move; a negative eps is refused before any training."""

    sets = ["--set", "reference.widths=[8]", "--set", "zoo.epochs=1"]
    args = build_parser().parse_args(["sensitivity", "--seeds", "2", "--eps", "0", "0.5"] + sets)
    cfg = load_config("configs/digits_mlp.yaml", [a for a in sets if a != "--set"])
    result = sensitivity.run(args, [cfg])
    assert result["columns"] == ["another data order", "init + 0 x RMS", "init + 0.5 x RMS"]
    assert set(result["change"]) == {"layers.0.weight", "layers.1.weight"}
    for order, same, far in result["change"].values():
        assert same == 0.0 and order > 0.01 and far > 0.01
    assert "| layers.0.weight |" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        bench_main(["sensitivity", "--eps", "-0.1"] + sets)
    assert e.value.code == 2 and "--eps must be >= 0" in capsys.readouterr().err
    assert not list(in_tmp.iterdir())
