"""`bench report`: RESULTS.md with every step's table, figures and the command that reproduces it, on the tiny zoo and
policy of tests/trainer/test_audit.py."""

import json
import re
import shlex
import subprocess
from pathlib import Path

from tests.settings import TINY_ZOO as TINY
from trainer import plots
from trainer.bench import rollout
from trainer.bench.__main__ import cli as bench_main
from trainer.bench.common import figure
from trainer.config import CONFIG_DIR


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
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                          text=True).stdout.strip()
    stamp = text.split("## digits_mlp:")[1].splitlines()[2]
    assert f"at commit `{head}`" in stamp  # each section stamped with the source's commit and its own command
    assert stamp.startswith("Written by `python -m trainer.bench report --config configs/digits_mlp.yaml --set")
    # Every shipped config has a section; those whose chain was not run say how to make it.
    shipped = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
    assert re.findall(r"^## (\w+):", text, re.M) == shipped and len(shipped) >= 4
    for name in shipped:
        body = text.split(f"## {name}:")[1].split("\n## ")[0]
        assert ("Not measured in this report" in body) == (name != "digits_mlp"), name
        if name != "digits_mlp":
            assert f"`python -m trainer.imitate --config configs/{name}.yaml`" in body
    # The audit section's command, run again, writes exactly the table the report holds.
    (cmd,) = [c for c in re.findall(r"```bash\n(.*)\n```", text) if " audit " in c]
    argv = shlex.split(cmd)[3:]
    argv[argv.index("--out") + 1] = "again.md"
    assert bench_main(argv) == 0
    assert (in_tmp / "again.md").read_text().strip() in text

    # With --config, only that experiment's section is rewritten. A report written whole by an earlier version stamped
    # only its head: the sections it keeps take that stamp.
    old_head = "Written by `python -m trainer.bench report --out docs/RESULTS.md` at commit `0000000` at the start."
    (in_tmp / "docs/RESULTS.md").write_text(f"# Results\n\n{old_head} Never edited by hand.\n\n"
                                            "## digits_mlp: old\n\nold table\n\n"
                                            "## mnist_mlp: mlp [32] on mnist\n\n### A table\n\n| kept |\n")
    assert bench_main(["report", "--config", "configs/digits_mlp.yaml", "--seeds", "3", "--out", "docs/RESULTS.md"]
                      + tiny_policy) == 0
    merged = (in_tmp / "docs/RESULTS.md").read_text()
    assert re.findall(r"^## (\w+):", merged, re.M) == ["digits_mlp", "mnist_mlp"]
    digits = merged.split("## digits_mlp:")[1].split("\n## ")[0]
    assert "old table" not in digits and f"at commit `{head}`" in digits.splitlines()[2]
    assert "--seeds 3" in digits.splitlines()[2] and "| rollout stub |" in digits
    assert merged.split("## mnist_mlp:")[1].splitlines()[1:] == ["", old_head, "", "### A table", "", "| kept |"]


def test_bench_report_checks_every_step_before_the_first_runs(tiny_zoo, in_tmp, capsys):
    sets = sum((["--set", s] for s in TINY + [f"zoo.out={tiny_zoo[0].zoo_dir}"]), [])
    assert bench_main(["report"] + sets) == 2  # no policy trained yet for any shipped config: nothing to report
    assert capsys.readouterr().err.startswith("error: no shipped experiment has a zoo and a policy yet")
    assert bench_main(["report", "--config", "configs/digits_mlp.yaml"] + sets) == 2  # a named one must have both
    assert capsys.readouterr().err.startswith("error: artifacts/runs/digits_mlp-imitate/policy.safetensors: policy "
                                              "file not found")
    assert bench_main(["report", "--config", "configs/digits_mlp.yaml", "--config", "configs/mnist_mlp.yaml",
                       "--policy", "p.safetensors"]) == 2
    assert capsys.readouterr().err == ("error: --policy applies to one experiment; with several --config each uses its "
                                       "imitation policy\n")
    assert not list(in_tmp.iterdir())
