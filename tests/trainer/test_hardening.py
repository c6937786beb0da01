"""Bad inputs a user can give the real entry points (issue 14), table-driven.

Each case runs an entry point in-process with its argv and must: exit 2, print exactly one line `error: ...` naming
the key, file or shape at fault, print no traceback, and leave every file and folder as it found them. Validation
runs before any work, so none of these starts Ray or trains anything.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from envs.models import build_reference
from trainer import generate, grpo, imitate, zoo
from trainer.bench.__main__ import cli as bench_main
from trainer.checkpoints import save_weights
from trainer.config import load_config
from trainer.generator import WeightGenerator, init_states, reference_layout
from trainer.zoo import zoo_spec

from tests.settings import TINY

ENTRY = {"zoo": zoo.cli, "imitate": imitate.cli, "grpo": grpo.cli, "generate": generate.cli, "bench": bench_main}


def sets(*overrides):
    return sum((["--set", o] for o in overrides), [])


@pytest.fixture(scope="module")
def policy(tmp_path_factory):
    """An untrained digits policy saved as imitate saves one: enough for every generate case, with no zoo or Ray."""
    from policy.model import DenoisingPolicy
    from policy.tokenizer import Tokenizer, fit_scales
    from envs.tasks import task_from_config

    cfg = load_config(overrides=TINY)
    task = task_from_config(cfg.task)
    _, layout = reference_layout(cfg, task)
    torch.manual_seed(0)
    tok = Tokenizer(layout, fit_scales(init_states(cfg, task, range(4))))
    grid = [0.0, 0.25, 0.5, 1.0]
    weight_generator = WeightGenerator(cfg, DenoisingPolicy(cfg.policy, layout), tok, [0.0, 0.5, 1.0], grid)
    return weight_generator.save(tmp_path_factory.mktemp("policy"))


def written(path: Path, data: bytes = b"x") -> bool:
    """A file at `path` (parents made); True, so a case's argv can follow it with `and`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return True


def snapshot(*roots):
    """Every path under the roots with its size and content hash: what a failed command must leave untouched."""
    out = {}
    for root in roots:
        for p in sorted(Path(root).rglob("*")):
            out[str(p)] = (p.is_dir(), p.stat().st_size if p.is_file() else 0,
                           hash(p.read_bytes()) if p.is_file() else 0)
    return out


def policy_copy(policy, tmp, edit_spec):
    """A copy of the policy whose policy.json is `edit_spec(text)`."""
    folder = tmp / "bad-policy"
    folder.mkdir()
    (folder / "policy.safetensors").write_bytes(policy.read_bytes())
    (folder / "policy.json").write_text(edit_spec(policy.with_suffix(".json").read_text()))
    return folder / "policy.safetensors"


def policy_without(policy, tmp, key):
    """A copy of the policy whose weight file lacks tensor `key` (its metadata kept, as a hand edit would)."""
    from trainer.checkpoints import load_weights

    folder = tmp / "bad-policy"
    folder.mkdir()
    weights, meta = load_weights(policy)
    save_weights(folder / "policy.safetensors", {k: v for k, v in weights.items() if k != key}, meta)
    (folder / "policy.json").write_text(policy.with_suffix(".json").read_text())
    return folder / "policy.safetensors"


def edited(change):
    """policy.json text -> the same spec with `change(spec)` applied in place."""
    def edit(text):
        spec = json.loads(text)
        change(spec)
        return json.dumps(spec)
    return edit


def without_layout(text):
    spec = json.loads(text)
    del spec["layout"]
    return json.dumps(spec)


def init_file(tmp, dtype=torch.float32, scale=1.0, name="init"):
    sd = build_reference("mlp", [8], (1, 8, 8), 10, seed=5).state_dict()
    return save_weights(tmp / f"{name}.safetensors", {k: (v.double() * scale).to(dtype) for k, v in sd.items()})


def zoo_folder(tmp, zoo_json=None, run_json=None):
    """A digits zoo folder holding a zoo.json (valid for TINY unless given) and, optionally, run-0000/run.json."""
    folder = tmp / "artifacts/checkpoints/digits_mlp"
    folder.mkdir(parents=True)
    (folder / "zoo.json").write_text(zoo_json if zoo_json is not None else
                                     json.dumps(zoo_spec(load_config(overrides=TINY))))
    if run_json is not None:
        (folder / "run-0000").mkdir()
        (folder / "run-0000/run.json").write_text(run_json)


def earlier_run(tmp, name):
    folder = tmp / "artifacts/runs" / name
    folder.mkdir(parents=True)
    (folder / "events.out.tfevents.1.host").write_bytes(b"old curves")
    (folder / "policy.safetensors").write_bytes(b"old policy")


def saved_run(tmp, name, overrides, info):
    """A run folder as a run that saved a state leaves it: policy.json storing the experiment of `overrides`, and a
    state whose header holds `info` (its step or iteration)."""
    from trainer.config import config_to_dict

    folder = tmp / "artifacts/runs" / name
    folder.mkdir(parents=True)
    (folder / "policy.json").write_text(json.dumps({"experiment": config_to_dict(load_config(overrides=overrides))}))
    save_weights(folder / "state.safetensors", {"model.x": torch.zeros(1)}, {"info": json.dumps(info)})


DEFAULT_GRPO = load_config().grpo  # the default config's GRPO budget: what a finished run ran, which seeds it takes
LAST_GRPO_SEED = DEFAULT_GRPO.seed_start + DEFAULT_GRPO.iterations * DEFAULT_GRPO.inits_per_iter - 1

# (id, entry point, argv given (tmp, policy) -> list (it sets up the files the case needs), what the message says)
CASES = [
    # config values: every one a one-line ConfigError naming the key and the valid range
    ("zoo.runs=0", "zoo", lambda t, p: sets("zoo.runs=0"), "config key zoo.runs: expected >= 1, got 0"),
    ("zoo.runs=-3", "zoo", lambda t, p: sets("zoo.runs=-3"), "config key zoo.runs: expected >= 1, got -3"),
    ("save_every=0", "imitate", lambda t, p: sets("imitate.save_every=0"),
     "config key imitate.save_every: expected >= 1, got 0"),
    ("batch_size=0", "imitate", lambda t, p: sets("imitate.batch_size=0"),
     "config key imitate.batch_size: expected >= 1, got 0"),
    ("eval_seeds=0", "imitate", lambda t, p: sets("imitate.eval_seeds=0"),
     "config key imitate.eval_seeds: expected >= 1, got 0"),
    ("imitate.lr=-1", "imitate", lambda t, p: sets("imitate.lr=-1"), "config key imitate.lr: expected > 0, got -1.0"),
    ("policy.dim=0", "imitate", lambda t, p: sets("policy.dim=0"), "config key policy.dim: expected >= 1, got 0"),
    ("inits_per_iter=0", "grpo", lambda t, p: sets("grpo.inits_per_iter=0"),
     "config key grpo.inits_per_iter: expected >= 1, got 0"),
    ("num_workers=0", "grpo", lambda t, p: sets("rollout.num_workers=0"),
     "config key rollout.num_workers: expected >= 1, got 0"),
    ("timeout_s=0.001", "grpo", lambda t, p: sets("rollout.timeout_s=0.001"),
     "config key rollout.timeout_s: expected >= 10.0"),
    ("reward_size=-5", "zoo", lambda t, p: sets("task.reward_size=-5"),
     "config key task.reward_size: expected >= 1, got -5"),
    ("reward_size=1e5", "zoo", lambda t, p: sets("task.reward_size=100000"),
     "config key task.reward_size: expected a value in [1, 1347] (digits has 1348 training examples)"),
    ("lr=nan", "bench", lambda t, p: ["generate"] + sets("zoo.lr=.nan"), "config key zoo.lr: expected > 0, got nan"),
    ("threads=-1", "zoo", lambda t, p: sets("threads=-1"), "config key threads: expected null or >= 0, got -1"),
    ("unknown key", "zoo", lambda t, p: sets("zoo.nope=1"), "unknown config key zoo.nope (valid: "),
    ("wrong type", "imitate", lambda t, p: sets("zoo.runs=many"), "config key zoo.runs: expected int, got 'many'"),
    ("unknown task", "zoo", lambda t, p: sets("task.name=imagenet"), "config key task.name: unknown name 'imagenet'"),
    ("no config file", "imitate", lambda t, p: ["--config", "nowhere.yaml"], "config file nowhere.yaml not found"),
    # runs that would do nothing and report success
    ("imitate.steps=-1", "imitate", lambda t, p: sets("imitate.steps=-1"),
     "config key imitate.steps: expected >= 1, got -1"),
    ("grpo.iterations=0", "grpo", lambda t, p: sets("grpo.iterations=0"),
     "config key grpo.iterations: expected >= 1, got 0"),
    ("group of one", "grpo", lambda t, p: sets("grpo.group_size=1", "grpo.antithetic=false"),
     "config key grpo.group_size: expected >= 2 (a group of one has zero spread, so nothing is learned), got 1"),
    ("odd antithetic group", "grpo", lambda t, p: sets("grpo.group_size=5"),
     "config key grpo.group_size: antithetic sampling pairs samples, so it must be even"),
    ("imitate --resume, no state", "imitate", lambda t, p: ["--resume"],
     "artifacts/runs/digits_mlp-imitate/state.safetensors: nothing to resume from"),
    ("grpo --resume, no state", "grpo", lambda t, p: ["--resume", "--init-policy", str(p)],
     "artifacts/runs/digits_mlp-grpo/state.safetensors: nothing to resume from"),
    ("imitate into an earlier run", "imitate", lambda t, p: earlier_run(t, "digits_mlp-imitate") or sets(*TINY),
     "artifacts/runs/digits_mlp-imitate: holds an earlier run; pass --resume to continue it, --overwrite"),
    ("grpo into an earlier run", "grpo", lambda t, p: earlier_run(t, "digits_mlp-grpo") or ["--init-policy", str(p)],
     "artifacts/runs/digits_mlp-grpo: holds an earlier run"),
    ("imitate --resume with a changed setting", "imitate",
     lambda t, p: saved_run(t, "digits_mlp-imitate", TINY, {"step": 3}) or
     ["--resume"] + sets(*TINY, "imitate.batch_size=8"),
     "config key imitate.batch_size: 8 differs from the run being resumed (4); start another run with --name"),
    ("imitate --resume of a finished run, before any zoo", "imitate",
     lambda t, p: saved_run(t, "digits_mlp-imitate", TINY, {"step": 6}) or ["--resume"] + sets(*TINY),
     "digits_mlp-imitate/state.safetensors: the run finished its 6 steps; nothing to resume"),
    ("grpo --resume with a changed group size", "grpo",
     lambda t, p: saved_run(t, "digits_mlp-grpo", TINY, {"iteration": 2}) or
     ["--resume", "--init-policy", str(p)] + sets(*TINY, "grpo.group_size=6"),
     "config key grpo.group_size: 6 differs from the run being resumed (16)"),
    ("grpo --resume with a changed seed", "grpo",
     lambda t, p: saved_run(t, "digits_mlp-grpo", TINY, {"iteration": 2}) or
     ["--resume", "--init-policy", str(p)] + sets(*TINY, "seed=5"),
     "config key seed: 5 differs from the run being resumed (0)"),
    ("grpo --resume of a finished run", "grpo",
     lambda t, p: saved_run(t, "digits_mlp-grpo", TINY, {"iteration": DEFAULT_GRPO.iterations}) or
     ["--resume", "--init-policy", str(p)] + sets(*TINY),
     f"digits_mlp-grpo/state.safetensors: the run finished its {DEFAULT_GRPO.iterations} iterations; nothing to "
     f"resume"),
    ("grpo --resume, a policy.json that is not one", "grpo",
     lambda t, p: saved_run(t, "digits_mlp-grpo", TINY, {"iteration": 2}) or
     written(t / "artifacts/runs/digits_mlp-grpo/policy.json", b"[1]") and
     ["--resume", "--init-policy", str(p)] + sets(*TINY),
     "digits_mlp-grpo/policy.json: not the policy spec of the run being resumed"),
    ("--resume and --overwrite", "imitate", lambda t, p: ["--resume", "--overwrite"],
     "--resume continues the run in its folder, --overwrite replaces it"),
    ("grpo, no imitation policy", "grpo", lambda t, p: [],
     "artifacts/runs/digits_mlp-imitate/policy.safetensors: no imitation policy"),
    ("a reference model no machine holds", "zoo", lambda t, p: sets("reference.widths=[100000000000]"),
     "error: out of memory: 25600000000000 bytes (25600.0 GB) asked of the CPU; lower the sizes in the config"),
    ("a policy no machine holds, before any zoo", "imitate", lambda t, p: sets("policy.dim=100000"),
     "error: out of memory: 9602158708864 bytes (9602.2 GB) asked of the CPU"),
    ("a batch of pairs no machine holds, before any zoo", "imitate", lambda t, p: sets("imitate.batch_size=10000000"),
     "error: out of memory: 192805313920 bytes (192.8 GB) asked of the CPU"),
    ("a policy past 64-bit sizes", "imitate", lambda t, p: sets("policy.dim=4611686018427387904"),
     "error: out of memory: more than 2^63 bytes asked (a size no 64-bit machine addresses)"),
    ("task-loss inits no machine holds, before any zoo", "imitate", lambda t, p: sets("imitate.task_inits=100000000"),
     "bytes (964.0 GB) asked of the CPU"),
    ("a GRPO group no machine holds, before Ray starts", "grpo",
     lambda t, p: ["--init-policy", str(p)] + sets(*TINY, "grpo.group_size=100000000"),
     "error: out of memory: 5856000000000 bytes (5856.0 GB) asked of the CPU"),
    ("more checkpoints than a run has steps", "zoo", lambda t, p: sets("zoo.checkpoints=1000"),
     "config key zoo.checkpoints: 1000 checkpoints of a run of 192 SGD steps; expected at most 193"),
    ("--samples past 64 bits", "generate", lambda t, p: ["--policy", str(p), "--samples", "9223372036854775807"],
     "--samples 9223372036854775807: expected at most 1000000"),
    ("a zoo of zero SGD steps", "zoo", lambda t, p: sets("zoo.batch_size=100000"),
     "config key zoo.batch_size: 100000 leaves no SGD step: the train split holds 1048 examples"),
    ("bench warmstart of zero SGD steps (it looped forever)", "bench",
     lambda t, p: ["warmstart", "--policy", str(p), "--seeds", "1"] + sets(*TINY, "zoo.batch_size=100000"),
     "config key zoo.batch_size: 100000 leaves no SGD step"),
    ("bench sensitivity of zero SGD steps", "bench",
     lambda t, p: ["sensitivity", "--seeds", "1"] + sets(*TINY, "zoo.batch_size=100000"),
     "config key zoo.batch_size: 100000 leaves no SGD step"),
    ("zoo.out is a file", "zoo", lambda t, p: written(t / "f") and sets(f"zoo.out={t / 'f'}"),
     "zoo folder (zoo.out) "),
    ("a run folder that is a file", "imitate", lambda t, p: written(t / "artifacts/runs/x") and ["--name", "x"],
     "run folder artifacts/runs/x: exists and is not a folder"),
    ("a binary config", "zoo", lambda t, p: written(t / "c.yaml", b"\x00\xd0\xff") and ["--config", str(t / "c.yaml")],
     "c.yaml: not a text file (a YAML config is UTF-8 text)"),
    # files
    ("corrupt zoo.json", "imitate", lambda t, p: zoo_folder(t, zoo_json='{"experiment": "dig') or sets(*TINY),
     "artifacts/checkpoints/digits_mlp/zoo.json: not valid JSON"),
    ("corrupt run.json", "imitate", lambda t, p: zoo_folder(t, run_json='{"run": 0, "che') or sets(*TINY),
     "artifacts/checkpoints/digits_mlp/run-0000/run.json: not valid JSON"),
    ("run.json of the wrong shape", "zoo", lambda t, p: zoo_folder(t, run_json='{"run": 0}') or sets(*TINY),
     "artifacts/checkpoints/digits_mlp/run-0000/run.json: not a zoo run record ('checkpoints' must be a list"),
    ("run.json of another run", "imitate",
     lambda t, p: zoo_folder(t, run_json=json.dumps({"run": 3, "checkpoints": []})) or sets(*TINY),
     "run-0000/run.json: not a zoo run record ('run' must be 0, got 3)"),
    ("manifest.json of the wrong shape", "bench",
     lambda t, p: zoo_folder(t) or written(t / "artifacts/checkpoints/digits_mlp/manifest.json", b'{"runs": "x"}')
     and ["generate", "--policy", str(p)] + sets(*TINY),
     "digits_mlp/manifest.json: not a zoo manifest (expected a mapping with a non-empty list 'runs')"),
    ("zoo of another config", "zoo", lambda t, p: zoo_folder(t) or sets(*TINY, "zoo.lr=0.5"),
     "artifacts/checkpoints/digits_mlp/zoo.json: the zoo there was built with a different `zoo` config"),
    ("truncated policy.json", "generate", lambda t, p: ["--policy", str(policy_copy(p, t, lambda s: s[:len(s) // 2]))],
     "bad-policy/policy.json: not valid JSON"),
    ("policy.json without layout", "generate", lambda t, p: ["--policy", str(policy_copy(p, t, without_layout))],
     "bad-policy/policy.json: not a policy spec (no 'layout'"),
    ("policy.json: an unknown policy key", "generate",
     lambda t, p: ["--policy", str(policy_copy(p, t, edited(lambda d: d["policy"].update(bogus=1))))],
     "bad-policy/policy.json: unknown config key policy.bogus (valid: dim,"),
    ("policy.json: a policy key of the wrong type", "generate",
     lambda t, p: ["--policy", str(policy_copy(p, t, edited(lambda d: d["policy"].update(dim="64"))))],
     "bad-policy/policy.json: config key policy.dim: expected int, got '64'"),
    ("policy.json: a schedule that is not one", "generate",
     lambda t, p: ["--policy", str(policy_copy(p, t, edited(lambda d: d.update(schedule="abc"))))],
     "bad-policy/policy.json: 'schedule' must be a list of at least 2 ascending progress values in [0, 1]"),
    ("policy.json: scales for other tensors", "generate",
     lambda t, p: ["--policy", str(policy_copy(p, t, edited(lambda d: d.update(scales={"a": 1.0}))))],
     "bad-policy/policy.json: 'scales' must give a number > 0 for each of the reference model's tensors"),
    ("policy.json: an experiment without its generate section", "generate",
     lambda t, p: ["--policy", str(policy_copy(p, t, edited(lambda d: d["experiment"].pop("generate"))))],
     "bad-policy/policy.json: 'experiment' has no 'generate'"),
    ("policy.json: an experiment without its reference model (it loaded the default one)", "generate",
     lambda t, p: ["--policy", str(policy_copy(p, t, edited(lambda d: d["experiment"].pop("reference"))))],
     "bad-policy/policy.json: 'experiment' has no 'reference'"),
    ("policy.json: an experiment key of the wrong type", "generate",
     lambda t, p: ["--policy", str(policy_copy(p, t, edited(lambda d: d["experiment"].update(seed="0"))))],
     "bad-policy/policy.json: in 'experiment': config key seed: expected int, got '0'"),
    ("policy.json: a schedule off its grid", "generate",
     lambda t, p: ["--policy", str(policy_copy(p, t, edited(lambda d: d.update(schedule=[0.0, 0.3, 1.0]))))],
     "bad-policy/policy.json: 'schedule' must run from 0 to 1 on points of 'grid'"),
    ("a policy file missing a trained tensor (it loaded zeros)", "generate",
     lambda t, p: ["--policy", str(policy_without(p, t, "unit_value"))],
     "bad-policy/policy.safetensors: policy weights do not fit its spec (missing tensor 'unit_value')"),
    ("no policy", "generate", lambda t, p: ["--policy", "nowhere/policy.safetensors"],
     "nowhere/policy.safetensors: policy file not found"),
    ("--out is a file", "generate", lambda t, p: (t / "taken").write_text("x") and ["--policy", str(p), "--out", "taken"],
     "--out taken: exists and is not a folder"),
    ("--out under a file", "generate", lambda t, p: (t / "taken").write_text("x") and
     ["--policy", str(p), "--out", "taken/nets"], "--out taken/nets: taken is not a folder"),
    ("--out /proc/foo", "generate", lambda t, p: ["--policy", str(p), "--out", "/proc/foo"],
     "--out /proc/foo: nothing can be written in /proc"),
    ("policy of another experiment", "generate", lambda t, p: ["--config", "configs/mnist_mlp.yaml", "--policy", str(p)],
     "belongs to experiment digits_mlp, --config configs/mnist_mlp.yaml is experiment mnist_mlp"),
    ("--seeds 1,1,1", "generate", lambda t, p: ["--policy", str(p), "--seeds", "1,1,1"],
     "--seeds '1,1,1': seed 1 given more than once"),
    ("--seeds 5..2", "generate", lambda t, p: ["--policy", str(p), "--seeds", "5..2"], "--seeds '5..2': no seeds"),
    ("int32 --init", "generate", lambda t, p: ["--policy", str(p), "--init", str(init_file(t, torch.int32))],
     "init.safetensors: tensor 'layers.0.weight' has dtype int32, expected a floating-point dtype"),
    ("float64 --init that overflows", "generate",
     lambda t, p: ["--policy", str(p), "--init", str(init_file(t, torch.float64, scale=1e300))],
     "init.safetensors: tensor 'layers.0.weight' overflows float32"),
    ("--init of another model", "generate", lambda t, p: ["--policy", str(p), "--init", str(save_weights(
        t / "wide.safetensors", build_reference("mlp", [9], (1, 8, 8), 10).state_dict()))],
     "wide.safetensors: tensor 'layers.0.weight' has shape (9, 64), expected (8, 64)"),
    ("bench, bad config", "bench", lambda t, p: ["generate"] + sets("imitate.eval_seeds=0"),
     "config key imitate.eval_seeds: expected >= 1, got 0"),
    ("bench generate on an objective (it printed plain accuracy)", "bench",
     lambda t, p: ["generate"] + sets("env.objective=quantized"),
     "config key env.objective: bench generate scores plain test accuracy, got 'quantized'"),
    # issue 26: integers past 64 bits, negative seeds, names, schedules, bad draw counts
    ("seed=2^64", "zoo", lambda t, p: sets("seed=18446744073709551616"),
     "config key seed: 18446744073709551616 does not fit in a 64-bit integer"),
    ("zoo.seed=2^64", "imitate", lambda t, p: sets("zoo.seed=18446744073709551616"),
     "config key zoo.seed: 18446744073709551616 does not fit in a 64-bit integer"),
    ("grpo.seed_start=2^64", "grpo", lambda t, p: sets("grpo.seed_start=18446744073709551616"),
     "config key grpo.seed_start: 18446744073709551616 does not fit in a 64-bit integer"),
    ("--seeds 2^64", "generate", lambda t, p: ["--policy", str(p), "--seeds", "18446744073709551616"],
     "--seeds '18446744073709551616': seed 18446744073709551616 is not in [0, 2^63)"),
    ("--sample-seed 2^64", "generate", lambda t, p: ["--policy", str(p), "--sample-seed", "18446744073709551616"],
     "--sample-seed 18446744073709551616: expected a value in [0, 2^63)"),
    ("negative --seeds", "generate", lambda t, p: ["--policy", str(p), "--seeds", "-3"],
     "--seeds '-3': seed -3 is not in [0, 2^63)"),
    ("a billion --seeds", "generate", lambda t, p: ["--policy", str(p), "--seeds", "0..999999999999"],
     "--seeds '0..999999999999': 1000000000000 seeds, more than 1000000"),
    ("empty name", "zoo", lambda t, p: sets('name=""'), "config key name: '' is not a folder name"),
    ("name with a slash", "imitate", lambda t, p: sets("name=a/b"), "config key name: 'a/b' is not a folder name"),
    ("a blank name (it made a zoo folder named ' ')", "zoo", lambda t, p: sets("name=' '"),
     "config key name: ' ' is not a folder name"),
    ("an empty config file (it ran on the code's defaults)", "zoo",
     lambda t, p: written(t / "c.yaml", b"") and ["--config", str(t / "c.yaml")], "c.yaml: empty"),
    ("zoo seeds among GRPO's", "zoo", lambda t, p: sets("zoo.seed=100000"),
     f"config key grpo.seed_start: GRPO init seeds 100000..{LAST_GRPO_SEED} (grpo.iterations x grpo.inits_per_iter "
     f"from it) overlap the zoo's seeds 100000..100255"),
    ("bench --seed-start negative (a cache folder seed--00005)", "bench", lambda t, p: ["audit", "--seed-start", "-5"],
     "--seed-start -5: expected a seed in [0, 2^63)"),
    ("bench --seed-start past 2^64", "bench", lambda t, p: ["generate", "--seed-start", "18446744073709551616"],
     "--seed-start 18446744073709551616: expected a seed in [0, 2^63)"),
    ("bench --seeds past 2^64", "bench", lambda t, p: ["generate", "--seeds", "18446744073709551616"],
     "--seeds 18446744073709551616 from --seed-start 0: expected at most 1000000 seeds, all below 2^63"),
    ("schedule that snaps to one step", "generate",
     lambda t, p: ["--policy", str(p), "--set", "generate.schedule=[0.0,0.001,0.002,1.0]"],
     "config key generate.schedule: [0.0, 0.001, 0.002, 1.0] snaps to"),
    ("--samples 0", "generate", lambda t, p: ["--policy", str(p), "--samples", "0"], "--samples 0: expected at least 1"),
    ("--samples with --best-of", "generate", lambda t, p: ["--policy", str(p), "--samples", "2", "--best-of", "2"],
     "--samples and --best-of: choose one"),
    ("pathwise without a latent", "grpo",
     lambda t, p: ["--init-policy", str(p)] + sets("grpo.noise=iid", "grpo.trainable=latent"),
     "config key grpo.estimator: pathwise backpropagates through the last step's unit latent"),
    ("the whole policy by the score function", "grpo", lambda t, p: ["--init-policy", str(p)] + sets("grpo.estimator=score"),
     "config key grpo.trainable: policy trains the trunk and head through the reward gradient: it needs "
     "grpo.estimator=pathwise"),
    ("fresh examples on a fixed batch", "grpo", lambda t, p: ["--init-policy", str(p)] + sets("grpo.reward_batch=fixed",
                                                                                                 "grpo.fresh_examples=100"),
     "config key grpo.fresh_examples: it sizes the examples drawn anew each iteration: it needs grpo.reward_batch=fresh"),
    ("more fresh examples than the train split", "grpo",
     lambda t, p: ["--init-policy", str(p)] + sets("grpo.reward_batch=fresh", "grpo.fresh_examples=100000"),
     "config key grpo.fresh_examples: expected at most the"),
    ("an ensemble of one init", "grpo", lambda t, p: ["--init-policy", str(p)] + sets("grpo.ensemble=0.5", "grpo.inits_per_iter=1"),
     "config key grpo.ensemble: the ensemble's loss reaches each net through the workers' reward gradients"),
    ("repulsion by the score function", "grpo", lambda t, p: ["--init-policy", str(p)] + sets("grpo.repel=0.1", "grpo.estimator=score", "grpo.trainable=latent"),
     "config key grpo.repel: the repulsion acts between the nets of different inits"),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(case, policy, in_tmp, capsys):
    _, entry, argv, message = case
    argv = argv(in_tmp, policy)  # sets up the files the case needs, then the snapshot is taken
    before = snapshot(in_tmp, policy.parent)
    capsys.readouterr()
    assert ENTRY[entry](argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err, err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert snapshot(in_tmp, policy.parent) == before


def test_missing_task_data_leaves_no_zoo_behind(in_tmp, monkeypatch, capsys):
    # Wrong data location: one line, and no zoo.json that would refuse the rerun with the right location.
    monkeypatch.setenv("SYNTHNET_DATA", str(in_tmp / "empty"))
    assert imitate.cli(["--config", "configs/mnist_mlp.yaml"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: MNIST: dataset files not found under") and err.count("\n") == 1
    assert not list(in_tmp.rglob("*"))


def test_cli_process_exits_2_with_one_line(in_tmp):
    # The real `python -m` path once, for the exit status a shell sees.
    env_cwd = Path(__file__).resolve().parents[2]
    proc = subprocess.run([sys.executable, "-m", "trainer.imitate", "--set", "imitate.steps=-1"], cwd=env_cwd,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.splitlines()[-1] == "error: config key imitate.steps: expected >= 1, got -1"
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_float_inits_are_cast_and_the_cast_is_said(policy, in_tmp, capsys, dtype):
    path = init_file(in_tmp, dtype)
    assert generate.cli(["--policy", str(policy), "--init", str(path), "--mean", "--out", "out"]) == 0
    err = capsys.readouterr().err
    name = str(dtype).removeprefix("torch.")
    assert f"note: {path}: cast layers.0.weight {name} -> float32" in err
    sample = json.loads((in_tmp / "out/report.json").read_text())["samples"][0]
    assert 0.0 <= sample["test_accuracy"] <= 1.0


def test_an_init_that_makes_non_finite_nets_scores_zero_and_is_counted(policy, in_tmp, capsys):
    # What used to crash score_batch: every generated set non-finite. Now: scored 0, counted, said.
    path = init_file(in_tmp, scale=1e30)
    assert generate.cli(["--policy", str(policy), "--init", str(path), "--out", "out"]) == 0
    report = json.loads((in_tmp / "out/report.json").read_text())
    assert report["summary"]["non_finite"] == 1
    assert report["samples"][0]["test_accuracy"] == report["samples"][0]["reward_accuracy"] == 0.0
    assert "warning: 1 of 1 generated nets have non-finite weights and score 0" in capsys.readouterr().err


@pytest.mark.parametrize("omp, extra, line, threads", [
    (None, [], "torch threads: 3 per process (auto: 3 cores / 1 (this process)", 3),
    (None, ["--set", "threads=2"], "torch threads: 2 per process (threads=2;", 2),
    ("2", [], "torch threads: 2 per process (OMP_NUM_THREADS=2;", 2),  # the environment's choice beats auto
])
def test_entry_point_sets_and_says_its_torch_threads(policy, in_tmp, capsys, monkeypatch, omp, extra, line, threads):
    monkeypatch.setattr("os.sched_getaffinity", lambda _pid: {0, 1, 2})
    if omp:
        monkeypatch.setenv("OMP_NUM_THREADS", omp)
    else:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    before = torch.get_num_threads()
    try:
        assert generate.cli(["--policy", str(policy), "--seeds", "0", "--mean", "--out", "out", *extra]) == 0
        assert torch.get_num_threads() == threads
    finally:
        torch.set_num_threads(before)  # the rest of the suite runs on one thread (conftest)
    assert line in capsys.readouterr().out


def test_generate_into_an_earlier_output_replaces_its_nets_and_refuses_strangers(policy, in_tmp, capsys):
    args = ["--policy", str(policy), "--mean", "--out", "out"]
    assert generate.cli(args + ["--seeds", "0..2"]) == 0
    assert generate.cli(args + ["--seeds", "5"]) == 0
    assert "note: out: replacing the 3 nets of an earlier generate" in capsys.readouterr().err
    report = json.loads((in_tmp / "out/report.json").read_text())
    assert [Path(s["file"]).name for s in report["samples"]] == ["seed-000005.safetensors"]
    assert sorted(p.name for p in (in_tmp / "out").glob("*.safetensors")) == ["seed-000005.safetensors"]
    (in_tmp / "out/mine.safetensors").write_bytes(b"x")  # a file generate did not write: not its to remove
    before = snapshot(in_tmp)
    assert generate.cli(args + ["--seeds", "6"]) == 2
    assert "error: --out out: holds mine.safetensors that no report.json of generate lists" in capsys.readouterr().err
    assert snapshot(in_tmp) == before
