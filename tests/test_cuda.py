"""What a GPU machine must show: scoring on the GPU equals the CPU's, GRPO, imitate and generate run there, and what
was trained there loads on the CPU. Skipped, with its reason, where torch sees no CUDA device."""

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="no CUDA device: torch.cuda.is_available() is False on this machine")


@pytest.fixture
def true_fp32():
    """TF32 (on by default on CUDA) may flip an example on a decision boundary; equality is checked in fp32."""
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


@pytest.mark.parametrize("family", ["mlp", "cnn"])
def test_scoring_on_the_gpu_counts_what_the_cpu_counts(family, true_fp32):
    from envs.models import reference_from_config
    from envs.scoring import score_batch
    from trainer.config import load_config
    from trainer.generator import init_states

    cfg = load_config(overrides=[f"reference.family={family}", "reference.widths=[8]"])
    from envs.tasks import task_from_config
    task = task_from_config(cfg.task)
    sets = init_states(cfg, task, range(6))
    model = reference_from_config(cfg.reference, task)
    cpu = score_batch(model, sets, task.reward, chunk_size=4)
    gpu = score_batch(model.to("cuda"), {k: v.cuda() for k, v in sets.items()}, task.reward.to("cuda"), chunk_size=4)
    assert torch.equal(gpu.correct, cpu.correct) and gpu.correct.device.type == "cpu"
    torch.testing.assert_close(gpu.loss, cpu.loss, rtol=1e-4, atol=1e-5)


def test_imitate_generate_and_grpo_on_the_gpu_and_the_policy_loads_on_the_cpu(in_tmp, ray_local):
    from trainer import generate
    from trainer.config import load_config
    from trainer.grpo import GRPOTrainer
    from trainer.generator import WeightGenerator

    from tests.settings import GRPO, imitate_cli

    assert imitate_cli("--set", "device=cuda") == 0
    path = in_tmp / "artifacts/runs/digits_mlp-imitate/policy.safetensors"
    assert generate.cli(["--seeds", "0..2", "--mean", "--set", "device=cuda", "--name", "gpu"]) == 0
    assert generate.cli(["--seeds", "0..2", "--mean", "--set", "device=cpu", "--name", "cpu"]) == 0
    on_cpu = WeightGenerator.load(path, ["device=cpu"])
    assert on_cpu.device.type == "cpu"
    cfg = load_config(overrides=GRPO + ["grpo.iterations=1", "device=cuda", "rollout.gpus_per_worker=0.5"])
    trainer = GRPOTrainer(cfg, path, in_tmp / "grpo", progress=False)
    assert trainer.weight_generator.device.type == "cuda"
    metrics = trainer.train()
    assert 0.0 <= metrics["rollout/reward_mean"] <= 1.0 and metrics["losses/grad_norm"] >= 0.0
    after = WeightGenerator.load(in_tmp / "grpo/policy.safetensors", ["device=cpu"])
    assert after.device.type == "cpu"
    assert any(not torch.equal(after.policy.state_dict()[k], v) for k, v in on_cpu.policy.state_dict().items())
