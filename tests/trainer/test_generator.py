"""WeightGenerator without a trained policy: the chunked mean path equals the whole-batch one; draws re-draw the
share of init entries they say, from the same net's same tensor, and pick the lowest loss."""

import math

import torch

from envs.tasks import task_from_config
from trainer import generator
from trainer.generator import init_states, lowest_loss, redraw_entries

from tests.settings import untrained_generator




def test_the_mean_path_in_chunks_equals_the_whole_batch(monkeypatch):
    weight_generator = untrained_generator()
    init = init_states(weight_generator.cfg, task_from_config(weight_generator.cfg.task), range(5))
    whole, whole_steps = weight_generator.generate(init, mean_only=True)
    monkeypatch.setattr(generator, "GENERATION_ACTIVATION_BUDGET", 2 * 64 * 2 * 16)  # 2 nets per chunk: 3 chunks
    assert weight_generator.nets_per_chunk() == 2
    chunked, steps = weight_generator.generate(init, mean_only=True)
    assert any(not torch.allclose(whole[k], init[k]) for k in init)
    for k in whole:
        torch.testing.assert_close(chunked[k], whole[k], rtol=1e-5, atol=1e-6)
    assert len(steps) == len(whole_steps) == 2
    for s, w in zip(steps, whole_steps):
        assert (s.t1, s.t2, s.sampled) == (w.t1, w.t2, w.sampled) and s.log_prob.shape == (5,)
        for k in w.y:
            torch.testing.assert_close(s.y[k], w.y[k], rtol=1e-5, atol=1e-6)


def test_redraw_replaces_the_share_it_says_with_entries_of_the_same_tensor():
    weight_generator = untrained_generator()
    init = init_states(weight_generator.cfg, task_from_config(weight_generator.cfg.task), range(4))
    init["frozen"] = torch.arange(4)  # not floating: passes through
    assert all(torch.equal(a, b) for a, b in zip(redraw_entries(init, 0.0, torch.Generator()).values(), init.values()))
    share = 0.3
    out = redraw_entries(init, share, torch.Generator().manual_seed(0))
    again = redraw_entries(init, share, torch.Generator().manual_seed(0))
    assert torch.equal(out["frozen"], init["frozen"])
    changed, total = 0, 0
    for k, v in init.items():
        if not v.is_floating_point():
            continue
        assert torch.equal(out[k], again[k])  # one seed, one draw
        for i in range(len(v)):  # each net's entries come from its own tensor, none from another net's
            assert torch.isin(out[k][i], v[i]).all()
        changed += int((out[k] != v).sum())
        total += v.numel()
    # A re-drawn entry lands on another value unless it draws itself: P(change) = share (1 - 1/n) ~ share.
    se = math.sqrt(share * (1 - share) / total)
    assert abs(changed / total - share) < 4 * se + 0.01
    big = {"w": torch.randn(2, 10_000)}  # every entry distinct: a change is exactly a re-draw of another entry
    swapped = (redraw_entries(big, share, torch.Generator().manual_seed(1))["w"] != big["w"]).double().mean().item()
    assert abs(swapped - share * (1 - 1e-4)) < 4 * math.sqrt(share * (1 - share) / 20_000)
    zeros = {"b": torch.zeros(3, 7)}  # a constant tensor stays constant
    assert torch.equal(redraw_entries(zeros, 1.0, torch.Generator())["b"], zeros["b"])


def test_draws_at_no_redraw_are_the_mean_path_and_the_lowest_loss_is_kept():
    weight_generator = untrained_generator()
    init = init_states(weight_generator.cfg, task_from_config(weight_generator.cfg.task), range(3))
    mean, _ = weight_generator.generate(init, mean_only=True)
    weight_generator.cfg.generate.redraw = 0.0
    draws = weight_generator.draw(init, 2, torch.Generator().manual_seed(0))
    for k in mean:
        torch.testing.assert_close(draws[k].view(3, 2, *mean[k].shape[1:]),
                                   mean[k][:, None].expand(3, 2, *mean[k].shape[1:]), rtol=1e-5, atol=1e-6)
    weight_generator.cfg.generate.redraw = 0.5
    draws = weight_generator.draw(init, 2, torch.Generator().manual_seed(0))
    k = next(iter(draws))
    assert not torch.allclose(draws[k][0], draws[k][1])
    loss = torch.tensor([[0.5, 0.2], [float("nan"), 0.9], [float("inf"), 0.1]], dtype=torch.float64)
    chosen, best = lowest_loss(draws, loss)
    assert best.tolist() == [1, 1, 1]
    assert all(torch.equal(chosen[k], draws[k][[1, 3, 5]]) for k in draws)
    assert lowest_loss(draws, torch.tensor([[0.1, 0.2]] * 3))[1].tolist() == [0, 0, 0]
