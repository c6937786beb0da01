"""`bench search`: ES directly on the weights of generated nets."""

import pytest

from envs.models import reference_from_config
from envs.tasks import task_from_config
from tests.settings import TINY
from trainer.bench.__main__ import cli as bench_main
from trainer.bench.search import es_search
from trainer.config import load_config
from trainer.generator import WeightGenerator, init_states, mean_path_accuracy


def test_es_search_raises_the_reward_it_searches_on():
    cfg = load_config(overrides=TINY)
    task = task_from_config(cfg.task)
    start = init_states(cfg, task, [0, 1])  # random inits: accuracy ~0.1
    model = reference_from_config(cfg.reference, task)
    reward = task.split("reward")
    hist = es_search(model, start, lambda it: reward, {"reward": reward}, iterations=20, pairs=32, sigma=0.05, lr=1.0,
                     seed=0, every=10)
    assert [h["evaluations"] for h in hist] == [0, 640, 1280]
    assert hist[0]["reward"] < 0.15 and hist[-1]["reward"] > hist[0]["reward"] + 0.05, hist


def test_bench_search_starts_from_the_mean_path_and_runs_both_reward_sources(trained, in_tmp, capsys):
    args = ["search", "--seeds", "1", "--iterations", "4", "--pairs", "8", "--threads", "1"] + sum(
        (["--set", s] for s in TINY), [])
    assert bench_main(args) == 0
    rows = [r.split("|")[1:-1] for r in capsys.readouterr().out.splitlines() if r.startswith("| ") and "---" not in r]
    rows = rows[1:]
    assert [r[0].strip().split()[0] for r in rows] == ["the"] * 5 + ["fresh"] * 5
    assert [int(r[1]) for r in rows[:5]] == [0, 16, 32, 48, 64]
    weight_generator = WeightGenerator.load(trained / "policy.safetensors")
    test = mean_path_accuracy(weight_generator, task_from_config(weight_generator.cfg.task), [0])[0][0]
    assert float(rows[0][3]) == float(rows[5][3]) == pytest.approx(test, abs=1e-4)
