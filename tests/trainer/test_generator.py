"""WeightGenerator without a trained policy: the chunked mean path equals the whole-batch one."""

import torch

from envs.tasks import task_from_config
from trainer import generator
from trainer.generator import init_states

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
