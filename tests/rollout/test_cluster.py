"""Joining Ray as an entry point does: torch threads per process, and SIGTERM taking the private instance down."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path


def test_torch_threads_share_the_cores_among_processes(monkeypatch):
    from rollout.cluster import torch_threads

    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: set(range(6)))
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert [torch_threads(None, n) for n in (1, 2, 3, 4, 7)] == [6, 3, 2, 1, 1]
    assert torch_threads(0, 2) == 3 and torch_threads(5, 2) == 5  # 0 means auto too; a set value is kept
    monkeypatch.setenv("OMP_NUM_THREADS", "2")  # the environment's explicit choice beats auto, not a set value
    assert torch_threads(None, 3) == 2 and torch_threads(4, 3) == 4


def _descendants(pid):
    """Pids of every live process below `pid` (Ray's gcs_server, raylet, agents and workers for a driver)."""
    children = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _alive(pid):
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_sigterm_unwinds_the_run_and_takes_the_private_ray_down(tmp_path):
    # SIGTERM used to kill the driver on the spot (Ray's own handler), leaving its Ray processes to linger.
    repo = Path(__file__).resolve().parents[2]
    with open(tmp_path / "stderr", "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "trainer.zoo", "--set", "zoo.runs=20000", "--set",
                                 f"zoo.out={tmp_path}/zoo"], cwd=repo, stdout=subprocess.DEVNULL, stderr=err)
    try:
        deadline = time.monotonic() + 120
        while "zoo digits_mlp:" not in (tmp_path / "stderr").read_text():  # the progress bar: Ray is up, runs queued
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "stderr").read_text()[-2000:]
            time.sleep(0.2)
        ray_procs = _descendants(proc.pid)
        assert len(ray_procs) >= 3
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 128 + signal.SIGTERM
        deadline = time.monotonic() + 30
        while any(_alive(p) for p in ray_procs) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not [p for p in ray_procs if _alive(p)]
        assert "Traceback" not in (tmp_path / "stderr").read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
