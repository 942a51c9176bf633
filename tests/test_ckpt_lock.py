"""One training per ckpt_dir: a second concurrent training is refused with one line; the lock of
a killed (dead) process is taken over."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
from conftest import REPO, tiny_overrides, train_config_files

from custom.training.lock import LOCK_NAME, CkptDirLockedError, hold_ckpt_dir, release_ckpt_dir
from custom.utils.runtime import input_error_of

HOLDER = (
    "import sys, time; from custom.training.lock import hold_ckpt_dir; "
    "hold_ckpt_dir(sys.argv[1]); print('held', flush=True); time.sleep(120)"
)


@pytest.fixture
def holder(tmp_path):
    """Another process holding the lock of tmp_path/models."""
    folder = tmp_path / "models"
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder)], cwd=REPO, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    yield folder, proc
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def test_a_second_holder_is_refused_and_a_killed_holder_is_taken_over(holder):
    folder, proc = holder
    with pytest.raises(CkptDirLockedError) as err:
        hold_ckpt_dir(folder)
    text = str(err.value)
    assert f"pid {proc.pid}" in text and str(folder) in text and "--ckpt_dir" in text and "\n" not in text, text
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert hold_ckpt_dir(folder) == str(folder / LOCK_NAME)  # the dead process's lock is recovered
    assert json.loads((folder / LOCK_NAME).read_text())["pid"] == os.getpid()
    release_ckpt_dir(folder)
    assert not (folder / LOCK_NAME).exists()


def test_a_stale_lock_file_of_a_dead_pid_is_taken_over(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a pid that is no longer alive
    folder = tmp_path / "models"
    folder.mkdir()
    (folder / LOCK_NAME).write_text(json.dumps({"pid": dead.pid, "host": os.uname().nodename, "started": "x"}))
    assert hold_ckpt_dir(folder)
    assert json.loads((folder / LOCK_NAME).read_text())["pid"] == os.getpid()
    release_ckpt_dir(folder)


def test_training_on_a_locked_ckpt_dir_is_refused_before_anything_is_written(holder, tmp_path, demo_dataset):
    from monai.bundle import run

    folder, proc = holder
    with pytest.raises(Exception) as err:
        run(run_id="training", config_file=train_config_files(), **tiny_overrides(tmp_path, demo_dataset))
    found = input_error_of(err.value)
    assert isinstance(found, CkptDirLockedError) and f"pid {proc.pid}" in str(found), str(err.value)
    assert sorted(p.name for p in folder.iterdir()) == [LOCK_NAME]  # no model.pt, no training state


def test_a_killed_runs_temporary_files_are_removed_on_the_next_start(tmp_path):
    folder = tmp_path / "models"
    folder.mkdir()
    for name in (".tmp_abc123.pt", ".tmp_def456.json"):
        (folder / name).write_bytes(b"half")
    (folder / "model.ts").write_bytes(b"kept")
    hold_ckpt_dir(folder)
    try:
        assert sorted(p.name for p in folder.iterdir()) == [LOCK_NAME, "model.ts"]
    finally:
        release_ckpt_dir(folder)


def test_an_inference_folder_is_cleared_of_a_killed_runs_temporary_files(tmp_path):
    from custom.deploy.inference import InputScreen

    out = tmp_path / "inference"
    out.mkdir()
    (out / ".tmp_x1y2z3_mask.png").write_bytes(b"half")
    (out / "old_mask.png").write_bytes(b"kept")
    screen = InputScreen(str(out))
    with pytest.raises(Exception):  # the only input is missing: nothing to segment
        screen([{"image": str(tmp_path / "missing.png")}])
    assert sorted(p.name for p in out.iterdir()) == ["old_mask.png"]
