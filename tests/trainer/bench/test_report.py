"""`bench report`: RESULTS.md with every step's table, figures and the command that reproduces it, on the tiny zoo and
policy of tests/trainer/test_audit.py."""

import json
import re
import shlex

from tests.settings import TINY_ZOO as TINY
from trainer import plots
from trainer.bench import rollout
from trainer.bench.__main__ import cli as bench_main
from trainer.bench.common import figure


def test_bench_report_writes_results_with_tables_figures_and_commands_that_reproduce_them(tiny_zoo, tiny_policy,
                                                                                          in_tmp, monkeypatch):
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
                             "figures/digits_mlp-objectives.png", "figures/digits_mlp-rollout.png",
                             "figures/grpo-budget.png"]
    assert all((in_tmp / "docs" / link).is_file() for link in links)
    assert "### accuracy at 90% sparsity (pruned)" in text and "not trained: `python -m trainer.grpo" in text
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
