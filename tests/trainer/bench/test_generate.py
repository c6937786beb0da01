"""`bench generate`: random inits, SGD and the policy side by side on held-out seeds, and its speed table."""

import numpy as np
import pytest
import torch

from envs.tasks import load_task
from tests.settings import TINY
from trainer.bench.__main__ import cli as bench_main
from trainer.generator import WeightGenerator, init_states, redraw_entries, repeat_groups, score_states, split_scores


def test_bench_generate_prints_random_sgd_and_policy_side_by_side(trained, in_tmp, capsys):
    args = ["generate", "--seeds", "3"] + sum((["--set", s] for s in TINY), [])
    assert bench_main(args) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert [r.split("|")[1].split()[0] for r in rows] == ["random", "SGD"] + ["policy"] * 4
    assert "(mean path, " in rows[2] and "(one draw per init: 0.05 of the init re-drawn, sample seed 0" in rows[3]
    ratios = [float(r.split("|")[4]) for r in rows]
    assert ratios[1] == 1.0 and 0.0 <= ratios[0] < 0.5
    weight_generator = WeightGenerator.load(trained / "policy.safetensors", TINY)
    task = load_task("digits", reward_size=300)
    test, _ = independent_draws(weight_generator, task, 16, 0)
    assert float(rows[3].split("|")[3]) == pytest.approx(np.median(test[:, 0]), abs=1e-4)  # the draws' median, recomputed
    assert "(best of 4 draws per init by reward-split loss, what `generate` writes with --best-of 4" in rows[4]
    assert "(best of 16 draws per init by reward-split loss, what `generate` writes by default" in rows[5]


def independent_draws(weight_generator, task, n, seed):
    """n draws per init of seeds 0..2 built here from their parts: entries re-drawn, then the mean path."""
    gen = torch.Generator().manual_seed(seed)
    start = redraw_entries(repeat_groups(init_states(weight_generator.cfg, task, [0, 1, 2]), n), 0.05, gen)
    draws, _ = weight_generator.generate(start, mean_only=True, trajectory=False)
    test = np.array(score_states(weight_generator.cfg, task, draws, "test")).reshape(3, n)
    return test, split_scores(weight_generator.cfg, task, draws, "reward").loss.numpy().reshape(3, n)


def test_best_of_n_keeps_the_draw_with_the_lowest_reward_loss(trained):
    """Best-of-n, recomputed: the same 16 draws per init scored on both splits, the chosen one the reward loss's
    argmin among the first n; best-of-1 is the first draw, and no larger n has a higher reward loss."""
    from trainer.bench.generate import best_of, draw_scores

    weight_generator = WeightGenerator.load(trained / "policy.safetensors", TINY)
    task = load_task("digits", reward_size=300)
    test, loss = draw_scores(weight_generator, task, [0, 1, 2], 16, sample_seed=5)
    want_test, want_loss = independent_draws(weight_generator, task, 16, 5)
    np.testing.assert_allclose(test, want_test, atol=1e-6)
    np.testing.assert_allclose(loss, want_loss, rtol=1e-6)
    got = best_of(test, loss, [1, 4, 16])
    assert len(set(test.flatten())) > 3  # the draws differ, so the choice matters
    for n in (1, 4, 16):
        assert got[n] == [want_test[i, want_loss[i, :n].argmin()] for i in range(3)]
    assert got[1] == want_test[:, 0].tolist()


def test_bench_generate_speed_times_generation_against_sgd_to_equal_accuracy(trained, in_tmp, capsys):
    args = ["generate", "--seeds", "3", "--speed", "--speed-seeds", "2", "--check-every", "5"]
    assert bench_main(args + sum((["--set", s] for s in TINY), [])) == 0
    out = capsys.readouterr().out
    speed = out[out.index("Speed on cpu: 1 torch thread(s)"):]
    rows = [line.split("|")[1:-1] for line in speed.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert [r[1].strip() for r in rows] == ["1", "64", "1"] and rows[2][0].startswith(" SGD (sgd, batch 16)")
    assert all(float(r[2]) >= 0 and float(r[3]) >= 0 for r in rows)  # ms/net, wall and CPU
    assert rows[2][5].strip() == "1x" and int(rows[2][4]) % 5 == 0  # SGD steps: checked every 5


def test_same_init_sgd_gives_each_output_minus_sgd_from_its_own_init(trained, in_tmp, capsys):
    """--same-init-sgd: SGD from the held-out inits themselves, and per seed each policy output minus it, recomputed
    from SGD run here by the audit's recipe and the policy's mean path."""
    from trainer.audit import sgd_from_seeds
    from trainer.bench.common import paired_difference
    from trainer.generator import mean_path_accuracy, reference_layout, score_states

    args = ["generate", "--seeds", "3", "--best-of", "--same-init-sgd"] + sum((["--set", s] for s in TINY), [])
    assert bench_main(args) == 0
    out = capsys.readouterr().out
    assert "| SGD from these 3 held-out seeds" in out
    rows = out[out.index("Per seed against SGD from the same init"):].splitlines()
    rows = [r.split("|")[1:-1] for r in rows if r.startswith("| ") and "---" not in r][1:]
    assert [r[0].strip().rsplit(" (", 1)[1] for r in rows] == ["mean path)", "draws)"]
    weight_generator = WeightGenerator.load(trained / "policy.safetensors", TINY)
    cfg, task = weight_generator.cfg, load_task("digits", reward_size=300)
    sgd = score_states(cfg, task, sgd_from_seeds(cfg, [0, 1, 2], reference_layout(cfg, task)[0].state_dict()), "test")
    mean = mean_path_accuracy(weight_generator, task, [0, 1, 2])[0]
    assert rows[0][1].strip() == paired_difference(sgd, mean)
    assert float(rows[0][1].split()[0]) < 0  # a tiny policy is below SGD from its own inits


def test_same_init_sgd_keeps_one_row_per_policy_given_as_folder_or_file(trained, in_tmp, capsys):
    """Policies given as run folders (whose parent is `runs` for all of them) or files each keep their own rows in the
    per-seed table against SGD, labelled as given."""
    args = ["generate", "--seeds", "2", "--best-of", "--same-init-sgd", "--policy", str(trained),
            "--policy", str(trained / "policy.safetensors")] + sum((["--set", s] for s in TINY), [])
    assert bench_main(args) == 0
    out = capsys.readouterr().out
    rows = out[out.index("Per seed against SGD from the same init"):].splitlines()
    labels = [r.split("|")[1].strip() for r in rows if r.startswith("| ") and "---" not in r][1:]
    assert labels == [f"{p} ({what})" for p in (trained, trained / "policy.safetensors") for what in ("mean path", "draws")]
