"""The scoring worker without Ray, the Ray pool (order, lost actors, timeouts) and joining a `ray start` cluster."""

import json
import os
import queue
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest
import ray
import torch

from envs.models import build_reference
from envs.scoring import score_batch
from envs.tasks import load_task
from rollout.pool import RolloutError, RolloutPool
from rollout.worker import ScoringWorker

from tests.settings import CFG, assert_same



def test_worker_scores_its_slice_without_ray(batch):
    stacked, expected = batch
    worker = ScoringWorker(CFG.task, CFG.reference, "reward", chunk_size=2)
    as_numpy = {k: v.numpy() for k, v in stacked.items()}  # what the object store hands a worker
    part = worker.score(as_numpy, 2, 6)
    assert part.correct.tolist() == expected.correct[2:6].tolist() and part.num_invalid == 1
    assert_same(worker.score(stacked), expected)


def test_pool_returns_results_in_input_order(batch, ray_local):
    stacked, expected = batch
    sets = [{k: v[i] for k, v in stacked.items()} for i in range(7)]
    with RolloutPool(CFG) as pool:
        assert pool.num_workers == 2 and len(set(pool.pids())) == 2
        assert_same(pool.score(stacked), expected)
        assert_same(pool.score(sets), expected)  # a list of state dicts, another accepted form
        assert_same(pool.score({k: v[5:6] for k, v in stacked.items()}), score_batch_slice(expected, 5, 6))
        # per-example losses and weighted gradients: each worker takes its own rows of the weights
        task = load_task("digits")
        w = torch.rand(7, len(task.reward), generator=torch.Generator().manual_seed(0))
        got = pool.score(stacked, grad=True, per_example=True, example_weights=w.numpy())
        want = score_batch(build_reference("mlp", [8], task.input_shape, task.num_classes), stacked, task.reward,
                           grad=True, per_example=True, example_weights=w)
        torch.testing.assert_close(got.example_loss, want.example_loss)
        for k in want.grad:
            torch.testing.assert_close(got.grad[k], want.grad[k])
        assert pool.restarts == 0


def test_pool_scores_a_batch_whose_every_set_is_non_finite(batch, ray_local):
    # Each worker's whole share diverged: every set scores 0 and is counted, through the object store and back.
    stacked, _ = batch
    broken = {k: v.clone() for k, v in stacked.items()}
    broken["layers.0.weight"][:, 0, 0] = float("nan")
    with RolloutPool(CFG) as pool:
        scores = pool.score(broken)
    assert scores.finite.tolist() == [False] * 7 and scores.num_invalid == 7
    assert scores.correct.tolist() == [0] * 7 and torch.isinf(scores.loss).all() and pool.restarts == 0


def test_actors_run_with_the_threads_they_are_given(ray_local):
    # Ray's workers start with OMP_NUM_THREADS=1: the pool's setting must win over it
    with RolloutPool(CFG, threads=2) as pool:
        assert pool.threads == 2
        assert ray.get([a.threads.remote() for a in pool._actors], timeout=60) == [2, 2]


def test_actors_of_a_private_instance_run_at_the_drivers_niceness(ray_local):
    # Ray's default (15) let any other process on the machine starve the scoring actors while the driver waited
    with RolloutPool(CFG, threads=1) as pool:
        assert ray.get([a.niceness.remote() for a in pool._actors], timeout=60) == [os.nice(0)] * len(pool._actors)


def score_batch_slice(scores, a, b):
    return SimpleNamespace(correct=scores.correct[a:b], finite=scores.finite[a:b], loss=scores.loss[a:b], n=scores.n)


def test_killed_actor_costs_time_not_results(batch, ray_local):
    stacked, expected = batch
    with RolloutPool(CFG, worker_kwargs={"delay_s": 1.5}) as pool:
        pids = pool.pids()
        out = {}
        worker = threading.Thread(target=lambda: out.update(scores=pool.score(stacked)))
        worker.start()
        time.sleep(0.5)  # both shares are in flight (each sleeps 1.5 s before scoring)
        ray.kill(pool._actors[0])
        worker.join(timeout=60)
        assert "scores" in out, "the batch did not complete after an actor was killed"
        assert_same(out["scores"], expected)
        assert pool.restarts == 1
        new = pool.pids()
        assert new[0] != pids[0] and new[1] == pids[1]

        # A share that returns nothing within timeout_s is lost too; past max_retries the batch fails in one line.
        pool.timeout_s, pool.max_retries = 0.5, 1
        t = time.perf_counter()
        with pytest.raises(RolloutError, match=r"lost 2 times .*timeout_s=0.5s"):
            pool.score(stacked)
        assert time.perf_counter() - t < 5 and pool.restarts == 3  # both shares replaced once


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


DRIVER = """
import json, sys, torch
from types import SimpleNamespace
import ray
from envs.spec import ReferenceConfig, TaskConfig
from rollout.pool import RolloutPool
stacked = {k: torch.from_numpy(v) for k, v in __import__("numpy").load(sys.argv[1]).items()}
cfg = SimpleNamespace(task=TaskConfig(), reference=ReferenceConfig(widths=[8]))
with RolloutPool(cfg, num_workers=1, address=sys.argv[2], timeout_s=60) as pool:
    s = pool.score(stacked)
print(json.dumps(dict(gcs=ray.get_runtime_context().gcs_address, cpus=ray.cluster_resources()["CPU"],
                      correct=s.correct.tolist(), finite=s.finite.tolist(), loss=s.loss.tolist())))
"""


def test_joins_a_ray_start_cluster(batch, tmp_path):
    """`ray start --head` in a subprocess, the pool in another (a driver joins one cluster per process).

    Stopped by SIGTERM to its `--block` process, not `ray stop`: that kills every Ray process on the machine,
    including other sessions' (this suite's own private instance, a zoo build running beside it).
    """
    stacked, expected = batch
    np.savez(tmp_path / "batch.npz", **{k: v.numpy() for k, v in stacked.items()})
    port, temp_dir = _free_port(), tempfile.mkdtemp(prefix="ray")  # short: Ray's socket paths must fit 107 bytes
    env = dict(os.environ, RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")  # throwaway localhost cluster
    ray_cli = os.path.join(os.path.dirname(sys.executable), "ray")
    head = subprocess.Popen(
        [ray_cli, "start", "--head", f"--port={port}", "--num-cpus=1", "--include-dashboard=false", "--block",
         f"--temp-dir={temp_dir}", f"--ray-client-server-port={_free_port()}", "--disable-usage-stats"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True)
    try:
        lines: queue.Queue = queue.Queue()
        threading.Thread(target=lambda: [lines.put(l) for l in head.stdout], daemon=True).start()
        deadline, log = time.monotonic() + 90, []
        while not any("will now block" in l for l in log):
            assert head.poll() is None and time.monotonic() < deadline, "ray start failed:\n" + "".join(log[-20:])
            try:
                log.append(lines.get(timeout=1))
            except queue.Empty:
                pass
        run = subprocess.run([sys.executable, "-c", DRIVER, str(tmp_path / "batch.npz"), f"127.0.0.1:{port}"],
                             capture_output=True, text=True, timeout=120, env=env, cwd=os.getcwd())
        assert run.returncode == 0, run.stderr[-3000:]
        got = json.loads(run.stdout.strip().splitlines()[-1])
        assert got["gcs"].endswith(f":{port}") and got["cpus"] == 1.0  # it joined that cluster, not a private one
        assert got["correct"] == expected.correct.tolist() and got["finite"] == expected.finite.tolist()
        assert got["loss"] == expected.loss.tolist()
    finally:
        head.terminate()
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, 9)
        shutil.rmtree(temp_dir, ignore_errors=True)
