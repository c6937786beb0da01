"""`bench warmstart`: SGD for B steps from the generated net against from the init."""

import pytest

from trainer.bench.__main__ import cli as bench_main
from trainer.bench.warmstart import first_reaching, table


def test_the_table_finds_the_first_budget_that_reaches_full_budget_sgd():
    rows = [dict(fraction=0.25, steps=25, init=[0.5, 0.7], generated=[0.9, 0.94]),
            dict(fraction=0.5, steps=50, init=[0.8, 0.84], generated=[0.9, 0.92]),
            dict(fraction=1.0, steps=100, init=[0.9, 0.92], generated=[0.93, 0.95])]
    r = dict(rows=rows, total_steps=100, output="mean path", generated_start=[0.3, 0.5])
    assert first_reaching(rows, 0.91, "generated") == 0.25 and first_reaching(rows, 0.91, "init") == 1.0
    assert first_reaching(rows, 0.99, "init") is None
    text = table("tiny", [0, 1], r)
    assert "from 2 held-out inits (0..1) and from the policy's mean path" in text and "(test accuracy 0.4000" in text
    assert "| 1/4 | 25 | 0.6000 | 0.9200 | +32.00 +- 8.00 pts, better on 100% |" in text
    assert text.endswith("Full-budget SGD from the init: 0.9100. The generated start reaches it at 1/4 of the budget "
                         "(4x fewer steps); the init at 1/1.")


def test_bench_warmstart_end_to_end_and_a_bad_budget_count(tiny_zoo, tiny_policy, in_tmp, capsys):
    assert bench_main(["warmstart", "--seeds", "2", "--fractions", "2", "--out", "w.md", "--plots", "figs"]
                      + tiny_policy) == 0
    text = (in_tmp / "w.md").read_text()
    assert [line.split("|")[1].strip() for line in text.splitlines() if line.startswith("| 1/")] == ["1/2", "1/1"]
    assert (in_tmp / "figs/digits_mlp-warmstart.png").stat().st_size > 0
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        bench_main(["warmstart", "--fractions", "0"] + tiny_policy)
    assert e.value.code == 2 and "argument --fractions: expected a count >= 1, got 0" in capsys.readouterr().err
