"""A Ray cluster of several nodes on this one machine (`ray.cluster_utils.Cluster`, as Ray's own tests do): scoring
actors spread over nodes, a node lost mid-GRPO and mid-zoo, workers the cluster cannot place, the joined-cluster line.

The head holds no CPUs and every worker node one, so each scoring actor or zoo run has a node to itself: which node
hosts what follows from the resources, and removing a worker node surely takes a worker with it.
"""

import threading
import time

import pytest
import ray
import torch
from ray.cluster_utils import Cluster

from rollout.cluster import PlacementError, init_ray
from rollout.pool import RolloutPool
from tests.settings import CFG, assert_same, grpo_trainer, imitate_cli
from trainer.checkpoints import load_weights, read_json
from trainer.cli import guarded
from trainer.config import load_config
from trainer.zoo import build_zoo


@pytest.fixture(scope="module")
def cluster():
    """A head (no CPUs) and two worker nodes of 1 CPU, joined by this process.

    In this process rather than a subprocess, so tests can reach into the pool and remove nodes between calls. A
    driver joins one Ray instance at a time: the private local one the session may have started (`ray_local`) is shut
    down first and started again after, with the CPUs it had, so the tests that run later find what they expect.
    """
    local_cpus = ray.cluster_resources().get("CPU") if ray.is_initialized() else None
    ray.shutdown()
    c = Cluster(initialize_head=True, head_node_args=dict(num_cpus=0, num_gpus=0, include_dashboard=False))
    try:
        for _ in range(2):
            c.add_node(num_cpus=1, num_gpus=0)
        c.wait_for_nodes()
        init_ray(c.address)
        yield c
    finally:
        ray.shutdown()
        c.shutdown()
        if local_cpus is not None:
            init_ray(None, num_cpus=int(local_cpus))


def replace_node(cluster, node_id):
    """Remove the worker node `node_id` (its processes killed) and add a fresh one of 1 CPU; returns the new id."""
    node = next(n for n in cluster.worker_nodes if n.node_id == node_id)
    cluster.remove_node(node)
    fresh = cluster.add_node(num_cpus=1, num_gpus=0)
    cluster.wait_for_nodes()
    return fresh.node_id


def test_joining_a_cluster_prints_what_it_has(cluster, capsys):
    ray.shutdown()
    init_ray(cluster.address)
    err = capsys.readouterr().err.splitlines()
    assert f"ray: joined the cluster at {cluster.address}: 3 nodes, 2 CPUs, 0 GPUs" in err


def test_scoring_actors_run_on_different_nodes(batch, cluster):  # noqa: F811
    stacked, expected = batch
    workers = {n.node_id for n in cluster.worker_nodes}
    with RolloutPool(CFG) as pool:
        nodes = pool.nodes()
        assert len(set(nodes)) == 2 and set(nodes) == workers  # one actor per worker node, none on the head
        assert_same(pool.score(stacked), expected)
        assert pool.restarts == 0


def test_a_node_lost_mid_grpo_leaves_the_policy_bit_identical(cluster, in_tmp):
    assert imitate_cli() == 0  # its zoo runs on the cluster's nodes too
    policy = in_tmp / "artifacts/runs/digits_mlp-imitate/policy.safetensors"
    straight = grpo_trainer(policy, in_tmp / "straight", 2)
    pool = RolloutPool(straight.cfg)  # one pool for both runs: its actors start once
    straight = grpo_trainer(policy, in_tmp / "straight", 2, pool=pool)
    disturbed = grpo_trainer(policy, in_tmp / "disturbed", 2, pool=pool)
    try:
        straight.train()
        disturbed.train(until=1)
        lost = pool.nodes()[0]
        fresh = replace_node(cluster, lost)  # actor 0 dies with its node between iterations 1 and 2
        assert pool.restarts == 0
        disturbed.train()
        assert disturbed.iteration == 2 and pool.restarts == 1
        assert pool.nodes()[0] == fresh  # its share re-ran on a new actor, on the fresh node
    finally:
        pool.close()
    a, b = straight.policy.state_dict(), disturbed.policy.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    imitated = load_weights(policy)[0]
    assert any(not torch.equal(a[k], imitated[k]) for k in a)  # GRPO moved it: the comparison is not of two copies


def test_a_node_lost_mid_zoo_loses_no_run(cluster, in_tmp):
    cfg = load_config(overrides=["zoo.runs=2", "reference.widths=[8]", "zoo.epochs=4", "zoo.checkpoints=3",
                                 "zoo.batch_size=16", "rollout.num_workers=2"])
    out = {}
    zoo = threading.Thread(target=lambda: out.update(zoo=build_zoo(cfg, progress=False)))
    zoo.start()
    deadline = time.monotonic() + 60
    started = []
    while len(started) < 2:  # both worker nodes busy with a run (one CPU each), none finished yet
        assert time.monotonic() < deadline and zoo.is_alive(), "the zoo's first runs did not start"
        time.sleep(0.05)
        started = sorted(p.name for p in cfg.zoo_dir.glob(".run-*.tmp"))
    assert not list(cfg.zoo_dir.glob("run-*")), "a run finished before a node could be removed: lengthen the runs"
    replace_node(cluster, next(iter(cluster.worker_nodes)).node_id)  # takes one of the two running runs with it
    zoo.join(timeout=90)
    assert not zoo.is_alive() and out.get("zoo") == cfg.zoo_dir, "the zoo did not finish after losing a node"
    manifest = read_json(cfg.zoo_dir / "manifest.json")
    assert [r["run"] for r in manifest["runs"]] == [0, 1]
    for r in manifest["runs"]:
        assert read_json(cfg.zoo_dir / f"run-{r['run']:04d}/run.json") == r
        assert all((cfg.zoo_dir / c["file"]).is_file() for c in r["checkpoints"])
    assert not list(cfg.zoo_dir.glob(".run-*"))


def test_a_gpu_request_on_a_cpu_cluster_fails_at_once(cluster, capsys):
    t = time.perf_counter()
    assert guarded(lambda: RolloutPool(CFG, gpus_per_worker=1)) == 2  # what an entry point does with it
    assert time.perf_counter() - t < 5
    assert capsys.readouterr().err == ("error: scoring actors cannot be placed: each asks for 1 CPU and 1 GPU, but no "
                                       "node of the Ray cluster has that much (it has 3 nodes, 2 CPUs, 0 GPUs); add "
                                       "such a node or lower rollout.gpus_per_worker\n")


def test_cpus_held_by_another_job_fail_at_the_deadline(cluster):
    held = ray.util.placement_group([{"CPU": 1}] * 2, strategy="SPREAD")  # another job holds every CPU
    ray.get(held.ready(), timeout=60)
    try:
        t = time.perf_counter()
        with pytest.raises(PlacementError) as e:
            RolloutPool(CFG, timeout_s=2)
        assert str(e.value) == ("2 of 2 scoring actors not started within rollout.timeout_s=2s: each asks for 1 CPU "
                                "and 0 GPUs; the Ray cluster has 3 nodes, 2 CPUs (0 free), 0 GPUs (0 free)")
        assert time.perf_counter() - t < 10
    finally:
        ray.util.remove_placement_group(held)
    with RolloutPool(CFG) as pool:  # the failed pool left nothing queued: the freed CPUs go to the next one
        assert len(set(pool.nodes())) == 2
