"""The generative policy end to end on tiny budgets: the measured default output, sampling, --samples and --best-of
(its resume is in test_imitate_generate)."""

import json

import pytest
import torch

from trainer import generate, imitate
from trainer.generator import WeightGenerator

from tests.settings import GENERATIVE as GENERATIVE_SETTINGS, TINY

GENERATIVE = TINY + GENERATIVE_SETTINGS


def imitate_generative(*extra):
    return imitate.cli(sum((["--set", s] for s in GENERATIVE), []) + list(extra))


@pytest.fixture
def generative(in_tmp, ray_local):
    assert imitate_generative() == 0
    return in_tmp / "artifacts/runs/digits_mlp-imitate"


def test_the_default_output_is_what_imitation_measured_better(generative):
    spec = json.loads((generative / "policy.json").read_text())
    assert spec["policy"]["generative"] and spec["default_output"] in ("samples", "mean")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(generative))
    ea.Reload()
    last = {t: ea.Scalars(t)[-1].value for t in ("eval/accuracy_median", "eval/sample_accuracy_median")}
    better = "samples" if last["eval/sample_accuracy_median"] >= last["eval/accuracy_median"] else "mean"
    assert spec["default_output"] == better
    assert {"losses/kl_nats_per_net", "losses/mse_mean_path"} <= set(ea.Tags()["scalars"])


def test_samples_differ_per_draw_and_the_mean_path_is_deterministic(generative):
    from envs.tasks import load_task
    from trainer.generator import init_states

    weight_generator = WeightGenerator.load(generative / "policy.safetensors")
    init = init_states(weight_generator.cfg, load_task("digits", reward_size=300), [0, 1])
    a, _ = weight_generator.generate(init, generator=torch.Generator().manual_seed(0))
    b, _ = weight_generator.generate(init, generator=torch.Generator().manual_seed(1))
    c, _ = weight_generator.generate(init, generator=torch.Generator().manual_seed(0))
    m1, _ = weight_generator.generate(init, mean_only=True)
    m2, _ = weight_generator.generate(init, mean_only=True)
    key = "net.0.weight" if "net.0.weight" in a else next(iter(a))
    assert not torch.equal(a[key], b[key]) and torch.equal(a[key], c[key]) and torch.equal(m1[key], m2[key])


def test_samples_and_best_of_write_what_they_say(generative, in_tmp):
    assert generate.cli(["--seeds", "0..1", "--samples", "3", "--out", "many"]) == 0
    report = json.loads((in_tmp / "many/report.json").read_text())
    assert len(report["samples"]) == 6 and len(list((in_tmp / "many").glob("*.safetensors"))) == 6
    assert [(s["seed"], s["draw"]) for s in report["samples"]] == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]
    assert generate.cli(["--seeds", "0..1", "--best-of", "4", "--out", "best"]) == 0
    report = json.loads((in_tmp / "best/report.json").read_text())
    walk = "sampled walk" if json.loads((generative / "policy.json").read_text())["default_output"] == "samples" \
        else "mean path"  # a generative policy imitation measured better sampled draws its latent too
    assert report["summary"]["output"] == (f"the best of 4 draws (0.05 of the init's entries re-drawn, then the {walk}) "
                                           f"per init, by loss on the reward split")
    for s in report["samples"]:
        losses, accs = s["candidate_reward_loss"], s["candidate_reward_accuracy"]
        assert len(losses) == len(accs) == 4 and s["chosen_draw"] == min(range(4), key=lambda i: (losses[i], i))
        assert s["reward_accuracy"] == pytest.approx(accs[s["chosen_draw"]], abs=1e-6)  # scored again, in-process


def test_best_of_in_blocks_of_inits_keeps_each_inits_lowest_loss_draw(trained, in_tmp, monkeypatch):
    """With room for one init's candidates at a time, the best-of choice goes init by init; each net written is the
    lowest reward-split loss among its init's draws, rebuilt here from one generator stream and scored in-process."""
    from envs.tasks import load_task
    from trainer.checkpoints import load_weights
    from trainer.generator import init_states, split_scores

    monkeypatch.setattr(generate, "BEST_OF_NETS", 4)
    assert generate.cli(["--seeds", "0..2", "--best-of", "4", "--sample-seed", "3",
                         "--out", "blocks"]) == 0
    report = json.loads((in_tmp / "blocks/report.json").read_text())
    weight_generator = WeightGenerator.load(trained / "policy.safetensors")
    task = load_task("digits", reward_size=300)
    gen = torch.Generator().manual_seed(3)
    for seed, net in zip([0, 1, 2], report["samples"]):
        draws = weight_generator.draw(init_states(weight_generator.cfg, task, [seed]), 4, gen)
        loss = split_scores(weight_generator.cfg, task, draws, "reward").loss
        assert net["candidate_reward_loss"] == pytest.approx(loss.tolist(), rel=1e-6)
        best = int(loss.argmin())
        assert net["chosen_draw"] == best
        saved = load_weights(net["file"])[0]
        assert all(torch.allclose(saved[k], draws[k][best]) for k in saved)


@pytest.mark.parametrize("argv", [["--samples", "0"], ["--best-of", "-1"], ["--samples", "2", "--best-of", "2"],
                                  ["--mean", "--samples", "2"]])
def test_bad_draw_counts_are_one_line_errors_before_any_work(argv, in_tmp, capsys):
    assert generate.cli(["--seeds", "0", "--out", "x", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --")
    assert not (in_tmp / "x").exists()


def test_the_energy_loss_is_the_energy_score_of_two_prior_draws():
    """`imitate.energy_loss` recomputed by hand: two draws of the unit latent around the prior's mean from the same
    generator stream, decoded; the mean over the batch of (|A - W2| + |B - W2|) / 2 - |A - B| / 2, each norm over the
    whole net with every tensor weighed by its size; plus the regressor's loss at the prior's mean."""
    from dataclasses import replace

    from policy.model import DenoisingPolicy, PolicyConfig
    from policy.tokenizer import Tokenizer, fit_scales
    from tests.settings import batch_of, make

    _, layout = make("mlp")
    states = batch_of("mlp", range(6))
    tok = Tokenizer(layout, fit_scales({k: states[k] for k in layout.shapes}))
    x1 = tok.encode({k: v[:3] for k, v in states.items()})
    x2 = tok.encode({k: v[3:] for k, v in states.items()})
    torch.manual_seed(0)
    policy = DenoisingPolicy(replace(PolicyConfig(dim=16, rounds=1, heads=2), generative=True, latent_dim=4,
                                     latent_std=1.0), layout)
    with torch.no_grad():
        for p in policy.parameters():  # off the zero-initialised heads, so the latent moves the weights
            p.add_(0.1 * torch.randn_like(p))
    t1, t2 = torch.zeros(3), torch.full((3,), 0.5)
    loss, parts, _ = imitate.energy_loss(policy, x1, x2, t1, t2, torch.Generator().manual_seed(7))

    gen = torch.Generator().manual_seed(7)
    h, heads = policy.encode(x1, t1, t2)
    mean, std = policy.latent(h)
    draws = []
    for _ in range(2):
        u = {g: mean[g] + std[g].view(-1, 1, 1) * torch.randn(mean[g].shape, generator=gen) for g in mean}
        draws.append(policy.decode(x1, policy.lift(h, u), heads)[0])

    def norm(a, b):  # one flat vector per net, entries of a tensor scaled by 1 / sqrt(its size)
        return torch.linalg.vector_norm(torch.cat([(a[k] - b[k]).flatten(1) / a[k][0].numel() ** 0.5 for k in a], 1),
                                        dim=1)

    a, b = draws
    score = ((norm(a, x2) + norm(b, x2)) / 2 - norm(a, b) / 2).mean()
    centre, std_w = policy.decode(x1, policy.lift(h, mean), heads)
    regression, _ = imitate.imitation_loss(centre, std_w, x2)
    assert parts["losses/energy"] == pytest.approx(score.item(), rel=1e-5)
    assert norm(a, b).min() > 1e-3  # the two draws differ
    assert loss.item() == pytest.approx((score + regression).item(), rel=1e-5)
