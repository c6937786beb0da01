"""`bench rollout`: every scoring path timed on the same weight sets, and checked to agree."""

from trainer.bench.__main__ import main as bench_main


def test_bench_rollout_smoke(ray_local, capsys):
    argv = ["rollout", "--config", "configs/digits_mlp.yaml", "--set", "reference.widths=[8]", "-G", "3",
            "--repeats", "2", "--workers", "1"]
    assert bench_main(argv) == 0  # it also asserts that every path's correct counts agree
    rows = [line.split("|") for line in capsys.readouterr().out.splitlines() if line.startswith("| digits_mlp")]
    assert [r[3].strip().split(",")[0] for r in rows] == ["loop of load_state_dict + forward", "vmap", "Ray pool"]
    assert all(float(r[5]) > 0 for r in rows) and rows[0][6].strip() == "1.00x" and rows[2][7].strip() == "1.00x"
