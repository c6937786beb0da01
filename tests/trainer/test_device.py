"""The `device` setting: resolved from the config, checked before any work, and checkpoints that load on any device."""

import json

import pytest
import torch

from envs.spec import ConfigError
from envs.tasks import task_from_config
from rollout.worker import ScoringWorker
from trainer import zoo
from trainer.cli import parser, run_main
from trainer.config import load_config
from trainer.device import resolve_device, worker_gpus
from trainer.generator import WeightGenerator, init_states

from tests.settings import untrained_generator

NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the behaviour of a machine without CUDA")


def test_auto_resolves_to_cuda_only_when_torch_sees_a_gpu():
    cfg = load_config()
    assert cfg.device == "auto"
    assert resolve_device(cfg.device).type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == torch.device("cpu")


def test_device_names_are_checked_when_the_config_loads():
    for bad in ("gpu", "cuda:x", "CPU"):
        with pytest.raises(ConfigError, match="config key device: unknown device"):
            load_config(overrides=[f"device={bad}"])
    with pytest.raises(ConfigError, match="rollout.gpus_per_worker"):
        load_config(overrides=["rollout.gpus_per_worker=-1"])
    with pytest.raises(ConfigError, match="rollout.precision"):
        load_config(overrides=["rollout.precision=fp16"])


@NO_CUDA
def test_cuda_without_a_gpu_is_a_one_line_error_before_any_work(in_tmp, capsys):
    assert run_main(zoo.main, parser("zoo"), ["--set", "device=cuda", "--set", "zoo.runs=1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: config key device: cuda requested, but torch sees no CUDA device") and \
        err.count("\n") == 1
    assert not list(in_tmp.iterdir())  # no zoo folder, no Ray
    with pytest.raises(ConfigError, match="cuda:1 requested"):
        resolve_device("cuda:1")


def test_workers_stay_on_the_cpu_unless_the_experiment_runs_on_cuda():
    assert worker_gpus(load_config(overrides=["device=cpu", "rollout.gpus_per_worker=0.5"])) == 0.0
    if torch.cuda.is_available():
        assert worker_gpus(load_config(overrides=["device=cuda", "rollout.gpus_per_worker=0.5"])) == 0.5


def test_a_policy_saved_for_another_device_loads_here(in_tmp):
    weight_generator = untrained_generator()
    weight_generator.save(in_tmp / "p")
    spec = json.loads((in_tmp / "p/policy.json").read_text())
    spec["experiment"]["device"] = "cuda:3"  # as a GPU machine would have stored it
    (in_tmp / "p/policy.json").write_text(json.dumps(spec))
    loaded = WeightGenerator.load(in_tmp / "p/policy.safetensors")  # the stored device is not this machine's concern
    assert loaded.cfg.device == "auto" and loaded.device == resolve_device("auto")
    for k, v in weight_generator.policy.state_dict().items():
        assert torch.equal(loaded.policy.state_dict()[k].cpu(), v)
    init = init_states(weight_generator.cfg, task_from_config(weight_generator.cfg.task), range(3))
    for k, v in weight_generator.generate(init, mean_only=True)[0].items():
        torch.testing.assert_close(loaded.generate(init, mean_only=True)[0][k].cpu(), v)


def test_bf16_scoring_runs_and_nearly_agrees_with_fp32():
    cfg = load_config()
    sets = init_states(cfg, task_from_config(cfg.task), range(4))
    fp32 = ScoringWorker(cfg.task, cfg.reference).score(sets)
    bf16 = ScoringWorker(cfg.task, cfg.reference, precision="bf16").score(sets)
    assert (fp32.correct - bf16.correct).abs().max() <= 0.05 * fp32.n
    torch.testing.assert_close(bf16.loss, fp32.loss, rtol=0.05, atol=0.05)
