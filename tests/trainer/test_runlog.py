"""Run folders: what a new run may start in, what it must refuse."""

import pytest

from trainer.checkpoints import CheckpointError
from trainer.config import ConfigError
from trainer.runlog import check_run_dir, lock_run_dir


def test_a_crashed_run_that_saved_nothing_is_cleared_and_a_saved_one_is_refused(tmp_path, capsys):
    crashed = tmp_path / "crashed"
    crashed.mkdir()
    (crashed / "events.out.tfevents.1.host.1.0").write_bytes(b"x")
    check_run_dir(crashed, resume=False, overwrite=False)
    assert list(crashed.iterdir()) == []  # its curves alone: nothing to resume, so the rerun starts clean
    assert "removing the TensorBoard events of an earlier run that saved no state" in capsys.readouterr().err
    saved = tmp_path / "saved"
    saved.mkdir()
    for name in ("events.out.tfevents.1.host.1.0", "policy.json"):
        (saved / name).write_text("{}")
    with pytest.raises(ConfigError, match="holds an earlier run; pass --resume"):
        check_run_dir(saved, resume=False, overwrite=False)
    assert len(list(saved.iterdir())) == 2
    with pytest.raises(CheckpointError, match="state.safetensors: nothing to resume from"):
        check_run_dir(saved, resume=True, overwrite=False)
    check_run_dir(tmp_path / "new", resume=False, overwrite=False)  # a folder that does not exist yet is fine


def test_a_folder_a_live_run_holds_is_refused_before_anything_is_removed(tmp_path):
    # A second run with the same --name once removed the first one's curves (events, no state yet) before its lock
    # refused it; --overwrite would have removed its files too.
    live = tmp_path / "live"
    lock = lock_run_dir(live)
    (live / "events.out.tfevents.1.host.1.0").write_bytes(b"curves")
    try:
        for resume, overwrite in ((False, False), (False, True)):
            with pytest.raises(ConfigError, match="another run is writing to this folder"):
                check_run_dir(live, resume=resume, overwrite=overwrite)
        assert (live / "events.out.tfevents.1.host.1.0").read_bytes() == b"curves"
    finally:
        lock.close()
    check_run_dir(live, resume=False, overwrite=False)  # its run ended (lock released): the crashed curves go
    assert not (live / "events.out.tfevents.1.host.1.0").exists()
