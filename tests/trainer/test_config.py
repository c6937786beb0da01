import pytest

from trainer.config import ConfigError, load_config
from trainer.zoo import main as zoo_main
from trainer.cli import parser, run_main


def test_default_config_loads_digits():
    cfg = load_config()
    assert cfg.task.name == "digits" and cfg.reference.family == "mlp"


@pytest.mark.parametrize("name", ["digits_mlp", "mnist_mlp", "mnist_cnn"])
def test_shipped_configs_load(name):
    assert load_config(f"configs/{name}.yaml").name == name


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
    ("zoo.optimizer=lbfgs", "config key zoo.optimizer: unknown optimizer 'lbfgs' (valid: sgd, adam)"),
    ("grpo.reward=f1", "config key grpo.reward: unknown reward 'f1' (valid: accuracy, neg_loss)"),
    ("grpo.explore=middle", "config key grpo.explore: unknown explore 'middle' (valid: all, first, last)"),
    ("grpo.group_size=5", "config key grpo.group_size: antithetic sampling pairs samples, so it must be even"),
])
def test_config_errors_name_the_key(override, message):
    with pytest.raises(ConfigError) as e:
        load_config(overrides=[override])
    assert message in str(e.value) and "\n" not in str(e.value)


def test_missing_config_file_is_one_line_error():
    with pytest.raises(ConfigError, match="config file nowhere.yaml not found"):
        load_config("nowhere.yaml")


def test_entry_point_reports_user_error_in_one_line_and_exits_2(capsys):
    rc = run_main(zoo_main, parser("zoo"), ["--set", "task.name=imagenet"])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.count("\n") == 1 and err.startswith("error: config key task.name")
