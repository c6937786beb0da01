"""`bench rollout`: every scoring path timed on the same weight sets, and checked to agree."""

import json
import re

import pytest

from trainer.bench import rollout
from trainer.bench.__main__ import cli as bench_main
from trainer.bench.rollout import ScoringMismatch
from trainer.config import load_config


def test_bench_rollout_smoke(ray_local, capsys):
    argv = ["rollout", "--config", "configs/digits_mlp.yaml", "--set", "reference.widths=[8]", "-G", "3",
            "--repeats", "2", "--workers", "1"]
    assert bench_main(argv) == 0  # it also checks that every path's correct counts agree
    rows = [line.split("|") for line in capsys.readouterr().out.splitlines() if line.startswith("| digits_mlp")]
    assert [r[3].strip().split(",")[0] for r in rows] == ["loop of load_state_dict + forward", "vmap", "Ray pool"]
    assert all(float(r[5]) > 0 for r in rows) and rows[0][6].strip() == "1.00x" and rows[2][7].strip() == "1.00x"


def test_bench_rollout_stops_when_a_path_scores_differently_from_the_loop(monkeypatch):
    """A path that miscounts one weight set stops the bench with the counts of both, under `python -O` too (the check
    is a raise, not an assert)."""
    real = rollout.score_batch

    def miscounts_the_last_set(*args, **kwargs):
        scores = real(*args, **kwargs)
        scores.correct[-1] += 1
        return scores

    cfg = load_config(overrides=["reference.widths=[8]"])
    assert len(rollout.bench_rollout(cfg, groups=3, repeats=1, workers=[], split="reward")) == 2  # loop and vmap agree
    monkeypatch.setattr(rollout, "score_batch", miscounts_the_last_set)
    with pytest.raises(ScoringMismatch) as e:
        rollout.bench_rollout(cfg, groups=3, repeats=1, workers=[], split="reward")
    message = re.fullmatch(r"digits_mlp: correct counts of \['vmap, chunks of 16'\] differ from the loop's on the same 3 "
                           r"weight sets: loop (\[.*\]), vmap, chunks of 16 (\[.*\])", str(e.value))
    loop, vmap = (json.loads(message[i]) for i in (1, 2))
    assert vmap == loop[:2] + [loop[2] + 1]
