"""Issue 33: ``max_epochs`` of a MONAI Label train request means passes over the labelled images
whatever scale file the server merges (cpu_small.yaml's epoch_length 200 made 10 epochs 2,000
iterations); the schedule spans those passes. No monailabel needed: the rule is the app's
``epoch_overrides`` applied to the merged configs as the app's trainer applies it."""

from __future__ import annotations

import pytest
from conftest import CONFIGS, REPO
from monai.bundle import ConfigParser

from custom.monailabel_app.lib.bundle_config import APP_OVERRIDE, epoch_overrides


def _merged(tmp_path, scale: str | None, epochs, labelled: int):
    parser = ConfigParser()
    files = [CONFIGS / "common.yaml", CONFIGS / "train.yaml", CONFIGS / "methods" / "ours.yaml", APP_OVERRIDE]
    parser.read_config([str(f) for f in files + ([CONFIGS / scale] if scale else [])])
    data = [{"image": f"/x/{i}.png", "label": f"/x/{i}_l.png"} for i in range(labelled)]
    parser.update({"bundle_root": str(REPO / "bundle"), "ckpt_dir": str(tmp_path), "num_classes": 2,
                   "train#dataset#data": data, "train_datalist": data, **epoch_overrides(epochs)})
    parser["train#dataloader#dataset"] = data  # the entries themselves: no file is read here
    return parser


@pytest.mark.parametrize("scale", [None, "cpu_small.yaml"])
def test_an_epoch_is_one_pass_over_the_labelled_images_at_any_scale(tmp_path, scale):
    parser = _merged(tmp_path, scale, 10, labelled=7)
    labeled_bs = int(parser.get_parsed_content("labeled_bs"))
    passes = 7 // labeled_bs  # the labelled loader drops the last incomplete batch
    assert parser.get_parsed_content("train#epoch_length") == passes
    assert parser.get_parsed_content("max_iterations") == 10 * passes  # the poly schedule's horizon


@pytest.mark.parametrize("bad", [0, -3, "abc", True, 2.5])
def test_a_bad_max_epochs_is_one_line(bad):
    with pytest.raises(ValueError, match=rf"^train request: max_epochs {bad!r}: expected a positive integer"):
        epoch_overrides(bad)


def test_info_shows_a_run_whose_process_ended_as_stopped():
    """Issue 33: after ``DELETE /train/`` the stats file still says ``running`` (the process was
    stopped between two epochs); ``GET /info/`` shows ``stopped`` once that process is gone."""
    import subprocess
    import sys

    from custom.monailabel_app.lib.bundle_config import running_or_stopped

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    stats = {"status": "running", "pid": gone.pid, "iterations": 40, "epoch": 4}
    shown = running_or_stopped(stats)
    assert shown["status"] == "stopped" and shown["stopped_after"] == "iteration 40, epoch 4" and "pid" not in shown
    alive = {"status": "running", "pid": __import__("os").getpid()}
    assert running_or_stopped(alive) == alive
    assert running_or_stopped({"status": "done", "iterations": 40}) == {"status": "done", "iterations": 40}


def test_a_training_process_that_ended_unreaped_counts_as_stopped():
    import subprocess
    import sys
    import time

    from custom.monailabel_app.lib.bundle_config import running_or_stopped

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    time.sleep(1.0)  # it has exited; not waited for: a zombie, as a killed task may stay for a while
    try:
        assert running_or_stopped({"status": "running", "pid": child.pid, "iterations": 3, "epoch": 1})["status"] == (
            "stopped"
        )
    finally:
        child.wait()
