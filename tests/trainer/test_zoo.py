import json

import pytest
import torch

from envs.models import build_reference
from envs.tasks import load_task
from trainer.checkpoints import load_weights
from trainer.config import load_config
from trainer.pairs import ZooPairs
from trainer.zoo import build_zoo, checkpoint_steps, train_run

TINY = ["zoo.runs=2", "reference.widths=[8]", "zoo.epochs=2", "zoo.checkpoints=4", "zoo.batch_size=16"]


def test_checkpoint_steps_are_log_spaced_with_ends():
    steps = checkpoint_steps(1000, 6)
    assert steps[0] == 0 and steps[-1] == 1000 and steps == sorted(set(steps))
    gaps = [b - a for a, b in zip(steps[1:], steps[2:])]
    assert gaps == sorted(gaps)  # denser early


@pytest.fixture
def tiny_zoo(in_tmp, ray_local):
    cfg = load_config(overrides=TINY)
    return cfg, build_zoo(cfg, progress=False)


def test_tiny_zoo_end_to_end(tiny_zoo):
    cfg, zoo = tiny_zoo
    manifest = json.loads((zoo / "manifest.json").read_text())
    assert [r["run"] for r in manifest["runs"]] == [0, 1]
    task = load_task("digits", reward_size=cfg.task.reward_size)
    ref = build_reference("mlp", [8], (1, 8, 8), 10).state_dict()
    for run in manifest["runs"]:
        ckpts = run["checkpoints"]
        assert [c["step"] for c in ckpts] == checkpoint_steps(run["total_steps"], 4)
        assert ckpts[0]["t"] == 0.0 and ckpts[-1]["t"] == 1.0
        w0, meta = load_weights(zoo / ckpts[0]["file"], expected=ref)
        init = build_reference("mlp", [8], (1, 8, 8), 10, seed=cfg.zoo.seed + run["run"]).state_dict()
        assert all(torch.equal(w0[k], init[k]) for k in init)  # step 0 is the seed's PyTorch default init
        assert meta["experiment"] == "digits_mlp" and meta["task"] == "digits" and meta["seed"] == str(1000 + run["run"])
        assert float(meta["t"]) == 0.0 and float(meta["test_accuracy"]) == ckpts[0]["test_accuracy"]
        assert ckpts[-1]["reward_accuracy"] > ckpts[0]["reward_accuracy"] + 0.3  # it trained
    assert 2 * (len(task.train) // 16) == manifest["runs"][0]["total_steps"]


def test_resume_skips_finished_runs_and_ignores_half_written_ones(tiny_zoo):
    cfg, zoo = tiny_zoo
    before = {p: p.stat().st_mtime_ns for p in zoo.glob("run-*/*.safetensors")}
    (zoo / ".run-0002.tmp").mkdir()  # what a killed zoo leaves behind
    (zoo / ".run-0002.tmp" / "step-000000.safetensors").write_bytes(b"half")
    cfg3 = load_config(overrides=TINY[1:] + ["zoo.runs=3"])
    build_zoo(cfg3, progress=False)
    assert {p: p.stat().st_mtime_ns for p in zoo.glob("run-0000/*.safetensors") if p in before} == \
        {p: t for p, t in before.items() if "run-0000" in str(p)}
    assert sorted(p.name for p in zoo.glob("run-*")) == ["run-0000", "run-0001", "run-0002"]
    assert not list(zoo.glob(".run-*"))
    assert len(json.loads((zoo / "manifest.json").read_text())["runs"]) == 3


def test_zoo_refuses_a_folder_built_with_another_config(tiny_zoo):
    from trainer.config import ConfigError

    with pytest.raises(ConfigError, match="built with a different `zoo` config"):
        build_zoo(load_config(overrides=TINY + ["zoo.lr=0.5"]), progress=False)


def test_pairs_are_ordered_and_from_one_run(tiny_zoo):
    _, zoo = tiny_zoo
    pairs = ZooPairs(zoo)
    n = len(pairs.grid)
    assert len(pairs) == 2 * n * (n - 1) // 2
    for k in range(len(pairs)):
        w1, w2, t1, t2 = pairs[k]
        assert t1 < t2
        ri, i, j = pairs.index[k]
        ckpts = json.loads((zoo / f"run-{pairs.runs[ri]:04d}" / "run.json").read_text())["checkpoints"]
        assert torch.equal(w2["layers.0.weight"], load_weights(zoo / ckpts[j]["file"])[0]["layers.0.weight"])
        assert t1 == pytest.approx(ckpts[i]["t"])


def test_reward_split_is_disjoint_from_zoo_training_data():
    # The zoo draws its batches from task.train only; the reward carve must not overlap it.
    task = load_task("digits", reward_size=300)
    assert not set(task.train_index.tolist()) & set(task.reward_index.tolist())


def test_data_seed_shares_one_minibatch_order_between_runs(in_tmp):
    def final(*overrides):
        cfg = load_config(overrides=TINY + ["zoo.epochs=1", *overrides])
        zoo = in_tmp / "-".join(overrides or ["default"])
        rec = train_run(cfg, 1, zoo)
        return rec["data_seed"], load_weights(zoo / rec["checkpoints"][-1]["file"])[0]

    seed_shared, shared = final("zoo.data_seed=0")  # run 1 trains from seed 1001 with the shared order 0
    seed_own, own = final()
    seed_same, same = final("zoo.data_seed=1001")
    assert (seed_shared, seed_own, seed_same) == (0, 1001, 1001)
    assert all(torch.equal(own[k], same[k]) for k in own)  # null == the run's own seed
    assert not torch.equal(shared["layers.0.weight"], own["layers.0.weight"])


def test_zoo_identity_leaves_out_where_the_data_lives(tiny_zoo):
    cfg, zoo = tiny_zoo
    spec = json.loads((zoo / "zoo.json").read_text())
    assert "root" not in spec["task"] and "download" not in spec["task"] and spec["task"]["reward_size"] == 300
    # zoo.json as older versions wrote it, with the data's location: still this zoo, and moved data finds it
    spec["task"].update(root="/empty", download=False)
    (zoo / "zoo.json").write_text(json.dumps(spec))
    before = {p: p.stat().st_mtime_ns for p in zoo.glob("run-*/*")}
    build_zoo(load_config(overrides=TINY + ["task.root=/elsewhere", "task.download=true"]), progress=False)
    assert {p: p.stat().st_mtime_ns for p in zoo.glob("run-*/*")} == before  # nothing retrained
    with pytest.raises(Exception, match="built with a different `task` config"):
        build_zoo(load_config(overrides=TINY + ["task.reward_size=200"]), progress=False)


def test_a_finished_run_is_not_trained_again(in_tmp):
    # Ray re-runs a zoo task whose node died after the run was renamed into place but before its result got back.
    cfg = load_config(overrides=TINY + ["zoo.epochs=1"])
    rec = train_run(cfg, 0, in_tmp)
    files = {p: p.stat().st_mtime_ns for p in (in_tmp / "run-0000").iterdir()}
    assert train_run(cfg, 0, in_tmp) == rec
    assert {p: p.stat().st_mtime_ns for p in (in_tmp / "run-0000").iterdir()} == files
    assert not list(in_tmp.glob(".run-*"))
