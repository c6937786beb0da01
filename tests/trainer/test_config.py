from pathlib import Path

import pytest

from trainer.config import ConfigError, load_config
from trainer.zoo import main as zoo_main
from trainer.cli import parser, run_main


def test_default_config_loads_digits():
    cfg = load_config()
    assert cfg.task.name == "digits" and cfg.reference.family == "mlp"


SHIPPED = sorted(p.stem for p in (Path(__file__).resolve().parents[2] / "configs").glob("*.yaml"))


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_configs_load(name):
    assert len(SHIPPED) >= 4 and load_config(f"configs/{name}.yaml").name == name


def test_set_overrides_parse_yaml_values():
    cfg = load_config(overrides=["zoo.runs=3", "reference.widths=[8, 4]", "task.root=/x", "zoo.lr=1"])
    assert cfg.zoo.runs == 3 and cfg.reference.widths == [8, 4] and cfg.task.root == "/x"
    assert cfg.zoo.lr == 1.0 and isinstance(cfg.zoo.lr, float)
    assert load_config(overrides=["zoo.lr=1e-3"]).zoo.lr == 0.001  # YAML 1.1 reads this as a string


@pytest.mark.parametrize("override, message", [
    ("zoo.nope=1", "unknown config key zoo.nope (valid: "),
    ("nope.x=1", "unknown config key nope (valid: "),
    ("zoo.runs=many", "config key zoo.runs: expected int, got 'many'"),
    ("zoo.runs=2.5", "config key zoo.runs: expected int"),
    ("task.download=1", "config key task.download: expected bool"),
    ("reference.widths=[8, x]", "config key reference.widths[1]: expected int"),
    ("task.name=imagenet", "config key task.name: unknown name 'imagenet' (valid: digits, mnist, fashion_mnist, cifar10)"),
    ("reference.family=vit", "config key reference.family: unknown family 'vit' (valid: mlp, cnn, resnet)"),
    ("reference.init=xavier", "config key reference.init: unknown init 'xavier' (valid: pytorch, kaiming_normal)"),
    ("zoo.optimizer=lbfgs", "config key zoo.optimizer: unknown optimizer 'lbfgs' (valid: sgd, adam)"),
    ("grpo.reward=f1", "config key grpo.reward: unknown reward 'f1' (valid: accuracy, neg_loss)"),
    ("grpo.explore=middle", "config key grpo.explore: unknown explore 'middle' (valid: all, first, last)"),
    ("policy.input_state=frozen",
     "config key policy.input_state: unknown input_state 'frozen' (valid: messages, static)"),
    ("grpo.group_size=5", "config key grpo.group_size: antithetic sampling pairs samples, so it must be even"),
    ("imitate.task_nets=every_step", "config key imitate.task_nets: every_step says which nets the task loss scores"),
])
def test_config_errors_name_the_key(override, message):
    with pytest.raises(ConfigError) as e:
        load_config(overrides=[override])
    assert message in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("other, key", [("policy.generative=true", "policy.flow"), ("imitate.walked_frac=0.5",
                                                                                     "imitate.walked_frac")])
def test_a_flow_policy_refuses_what_learns_from_checkpoint_pairs(other, key):
    with pytest.raises(ConfigError) as e:
        load_config(overrides=["policy.flow=true", other])
    assert str(e.value).startswith(f"config key {key}: a flow policy") and "\n" not in str(e.value)


def test_the_energy_score_needs_a_generative_policy():
    with pytest.raises(ConfigError) as e:
        load_config(overrides=["imitate.generative_loss=energy"])
    assert str(e.value).startswith("config key imitate.generative_loss:") and "\n" not in str(e.value)
    assert load_config(overrides=["imitate.generative_loss=energy", "policy.generative=true"]).imitate.generative_loss == "energy"
    with pytest.raises(ConfigError) as e:  # and the ELBO needs the posterior
        load_config(overrides=["policy.generative=true", "policy.posterior=false"])
    assert str(e.value).startswith("config key policy.posterior:") and "\n" not in str(e.value)


def test_missing_config_file_is_one_line_error():
    with pytest.raises(ConfigError, match="config file nowhere.yaml not found"):
        load_config("nowhere.yaml")


def test_entry_point_reports_user_error_in_one_line_and_exits_2(capsys):
    rc = run_main(zoo_main, parser("zoo"), ["--set", "task.name=imagenet"])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.count("\n") == 1 and err.startswith("error: config key task.name")


def _fields(cls, prefix=""):
    """(dotted key, field, type) of every leaf field of a config dataclass, recursively."""
    import dataclasses
    import typing

    for f in dataclasses.fields(cls):
        tp = typing.get_type_hints(cls)[f.name]
        if dataclasses.is_dataclass(tp):
            yield from _fields(tp, f"{prefix}{f.name}.")
        else:
            yield prefix + f.name, f, tp


NUMERIC = (int, float, list[int], list[float], list[list[int]])
FREE_TEXT = {"name", "task.root", "zoo.out", "rollout.address"}  # names and paths: any string
# generate.schedule is checked as a whole (increasing from 0 to 1) in config_from_dict
WHOLE = {"generate.schedule"}


def test_every_field_says_its_valid_values():
    """Numbers carry a range, names a Literal type or a registry: the one place a field's valid values live."""
    import typing

    from envs.spec import valid_range
    from trainer.config import ExperimentConfig

    for key, f, tp in _fields(ExperimentConfig):
        args = (tp, *typing.get_args(tp))
        if any(a in NUMERIC for a in args) and key not in WHOLE:
            assert valid_range(f) is not None, f"{key}: a number without a range"
        elif str in args and key not in FREE_TEXT:
            assert "choices" in f.metadata or "check" in f.metadata, f"{key}: a name without its valid values"
        elif typing.get_origin(tp) is typing.Literal:
            assert len(typing.get_args(tp)) >= 2, key


def test_every_bound_and_every_literal_is_enforced():
    """Each field's own rule refuses the first value past it, in one line naming the key; the bound itself loads."""
    import typing

    from trainer.config import ExperimentConfig

    checked = 0
    for key, f, tp in _fields(ExperimentConfig):
        meta = f.metadata
        if typing.get_origin(tp) is typing.Literal:
            bad = ["no-such-" + key.rsplit(".", 1)[-1]]
        elif "min" in meta or "gt" in meta:
            lo = meta.get("min", meta.get("gt"))
            step = 1 if (tp is int or "int" in str(tp)) else 1e-3
            below = lo - step if "min" in meta else lo
            bad = [below]
            if "max" in meta:
                bad.append(meta["max"] + step)
            if "list[list" in str(tp):
                bad = [[[v]] for v in bad]
            elif "list" in str(tp):
                bad = [[v] for v in bad]
        else:
            continue
        for value in bad:
            with pytest.raises(ConfigError) as e:
                load_config(overrides=[f"{key}={value}"])
            assert str(e.value).startswith(f"config key {key}") and "\n" not in str(e.value), (key, value, e.value)
            checked += 1
    assert checked > 80


@pytest.mark.parametrize("override, message", [
    ("zoo.runs=0", "config key zoo.runs: expected >= 1, got 0"),
    ("imitate.lr=-1", "config key imitate.lr: expected > 0, got -1.0"),
    ("imitate.schedule_frac=1.5", "config key imitate.schedule_frac: expected a value in [0, 1], got 1.5"),
    ("zoo.lr=.nan", "config key zoo.lr: expected > 0, got nan"),
    ("reference.widths=[]", "config key reference.widths: expected a non-empty list of values >= 1, got []"),
    ("zoo.data_seed=-1", "config key zoo.data_seed: expected null or >= 0, got -1"),
    ("policy.heads=3", "config key policy.heads: expected a divisor of policy.dim=64"),
    ("imitate.train_runs=100000", "config key imitate.train_runs: expected null or a value in [1, zoo.runs="),
])
def test_out_of_range_values_name_the_key_and_the_range(override, message):
    with pytest.raises(ConfigError) as e:
        load_config(overrides=[override])
    assert str(e.value).startswith(message) and "\n" not in str(e.value)


def test_seed_ranges_are_checked_as_intervals():
    """GRPO's init seeds are refused only where they meet the zoo's or the held-out ones (issue 26: a zoo above
    GRPO's range was refused)."""
    from trainer.config import ConfigError, load_config

    assert load_config(overrides=["zoo.seed=200000"]).zoo.seed == 200000  # GRPO 100000..100319, zoo 200000..200255
    for bad in (["zoo.seed=100100"], ["grpo.seed_start=1100"], ["grpo.seed_start=5"]):
        with pytest.raises(ConfigError, match="grpo.seed_start"):
            load_config(overrides=bad)


def test_a_removed_key_is_refused_with_its_replacement_and_dropped_from_stored_experiments():
    with pytest.raises(ConfigError, match=r"^config key env.steps was removed: an episode has len\(generate.schedule\)"):
        load_config(overrides=["env.steps=3"])
    for key in ("noise=units", "temperature=0.3"):  # how a policy samples is GRPO's setting, not the policy section's
        with pytest.raises(ConfigError, match=rf"^config key policy.{key.split('=')[0]} was removed: .* set grpo\."):
            load_config(overrides=[f"policy.{key}"])
    from envs.spec import drop_removed_keys
    from trainer.config import config_to_dict, config_from_dict

    stored = config_to_dict(load_config())
    stored["env"]["steps"] = 3  # as a policy.json written before the keys were removed holds them
    stored["policy"].update(noise="iid", temperature=1.0)
    assert config_from_dict(drop_removed_keys(stored)) == load_config()
