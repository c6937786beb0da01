"""`bench sensitivity`: how SGD's final moves with its init, against another data order."""

import pytest

from trainer.bench import sensitivity
from trainer.bench.__main__ import build_parser, cli as bench_main
from trainer.config import load_config


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
    assert e.value.code == 2 and "argument --eps: expected a finite value >= 0, got -0.1" in capsys.readouterr().err
    assert not list(in_tmp.iterdir())
