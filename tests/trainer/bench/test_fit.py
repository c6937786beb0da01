"""`bench fit`: the policy's one step from zoo runs' inits against no move, per tensor."""

import json

import pytest
import torch
from safetensors.torch import load_file

from trainer import imitate
from trainer.bench import fit
from trainer.bench.__main__ import build_parser, cli as bench_main
from trainer.bench.common import default_policy
from trainer.config import load_config
from trainer.generator import WeightGenerator


def test_bench_fit_compares_the_policy_step_with_no_move_per_tensor(in_tmp, ray_local, capsys):
    """The identity column is the token-unit MSE between each run's init and final checkpoint files, read here
    directly; the policy column that of the policy's own forward pass from the inits; bad runs or start: one line."""
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
    weight_generator = WeightGenerator.load(default_policy(cfg))
    manifest = json.loads((cfg.zoo_dir / "manifest.json").read_text())
    files = [[cfg.zoo_dir / r["checkpoints"][i]["file"] for r in manifest["runs"][1:]] for i in (0, -1)]
    init, final = ({k: torch.stack([load_file(f)[k] for f in fs]) for k in rows} for fs in files)
    x0, x1 = weight_generator.tokenizer.encode(init), weight_generator.tokenizer.encode(final)
    with torch.no_grad():
        mean, _ = weight_generator.policy(x0, torch.zeros(2), torch.ones(2))
    for k, r in rows.items():
        assert r["identity"] == pytest.approx(float((x0[k] - x1[k]).double().square().mean()), rel=1e-6)
        assert r["policy"] == pytest.approx(float((mean[k] - x1[k]).double().square().mean()), rel=1e-5)
        assert r["ratio"] == pytest.approx(r["policy"] / r["identity"])
    for bad, message in ((["--runs", "0..5"], "--runs 0..5: "),
                         (["--runs", "0..2", "--start", "99"], "--start 99: expected"),
                         (["--runs", "2..x"], "--runs '2..x': expected N, A..B or A,B,C")):
        assert bench_main(["fit"] + bad + sets) == 2
        assert message in capsys.readouterr().err
