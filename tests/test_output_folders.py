"""Output folders that cannot take the outputs (read-only, full, a mount point) are refused with
one line naming the option and the path, before the work where that can be known; what the
system refuses during the work (ENOSPC) is one line too, and nothing partial is left."""

from __future__ import annotations

import errno
import os
import tempfile

import numpy as np
import pytest

from custom.utils.outputs import OutputFolderError, check_output_folder, os_error_line


def _read_only(monkeypatch, folder):
    """mkstemp in ``folder`` fails as on a read-only file system (root ignores chmod)."""
    real = tempfile.mkstemp

    def mkstemp(*args, **kwargs):
        if os.path.abspath(str(kwargs.get("dir", ""))) == os.path.abspath(str(folder)):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(folder))
        return real(*args, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)


def test_a_read_only_folder_is_refused_by_name(tmp_path, monkeypatch):
    out = tmp_path / "ro"
    out.mkdir()
    _read_only(monkeypatch, out)
    with pytest.raises(OutputFolderError) as err:
        check_output_folder(out / "masks", "--infer_output_dir")
    text = str(err.value)
    assert text.startswith(f"--infer_output_dir {out / 'masks'}: cannot write there") and "Read-only" in text, text


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders: the monkeypatched test covers it")
def test_a_chmod_read_only_folder_is_refused(tmp_path):
    out = tmp_path / "ro"
    out.mkdir()
    out.chmod(0o500)
    try:
        with pytest.raises(OutputFolderError, match="cannot write there"):
            check_output_folder(out, "--out", replaced_whole=True)
    finally:
        out.chmod(0o700)


def test_a_mount_point_is_refused_where_the_folder_is_replaced_whole(tmp_path, monkeypatch):
    out = tmp_path / "mnt"
    out.mkdir()
    real = os.path.ismount
    monkeypatch.setattr(os.path, "ismount", lambda p: os.path.abspath(p) == str(out) or real(p))
    with pytest.raises(OutputFolderError, match="is a mount point"):
        check_output_folder(out, "--eval_output_dir", replaced_whole=True)
    check_output_folder(out, "--infer_output_dir")  # written file by file: a mount point is fine


def test_a_full_disk_is_refused_before_the_work(tmp_path, monkeypatch):
    import shutil

    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(100, 100, 0))
    with pytest.raises(OutputFolderError, match="no space left"):
        check_output_folder(tmp_path, "--out")


def test_os_error_line_names_the_path_without_a_traceback():
    try:
        try:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/data/out/x.png")
        except OSError as e:
            raise RuntimeError("wrapped by a library") from e
    except RuntimeError as e:
        line = os_error_line(e)
    assert line.startswith("/data/out/x.png: No space left on device") and "\n" not in line, line
    assert os_error_line(RuntimeError("a bug")) is None


def test_the_bundle_hook_prints_one_line_for_a_full_disk(capsys):
    from custom.utils.runtime import _OneLineErrors

    hook = _OneLineErrors(lambda *a: print("TRACEBACK", file=__import__("sys").stderr))
    error = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/models/model.pt")
    hook(OSError, error, None)
    err = capsys.readouterr().err
    assert err.startswith("error: /models/model.pt: No space left on device") and "TRACEBACK" not in err, err


def test_enospc_during_evaluation_leaves_nothing_partial(tmp_path, monkeypatch):
    import custom.evaluation.evaluate as ev

    def full_disk(rows, output_dir, class_names):
        (open(os.path.join(output_dir, "per_image.csv"), "w")).close()
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), os.path.join(output_dir, "summary.json"))

    monkeypatch.setattr(ev, "write_report", full_disk)
    report = ev.SegmentationReport(str(tmp_path / "evaluation"), 2, n_overlays=0)
    gt = np.zeros((8, 8), np.int64)
    gt[2:5, 2:5] = 1
    report.rows = [ev.case_record(gt, gt, 2, None, "a")]
    with pytest.raises(OSError) as err:
        report.write()
    assert "No space left on device" in os_error_line(err.value)
    assert os.listdir(tmp_path) == []  # no evaluation folder, no hidden partial one


def test_prepare_into_a_read_only_parent_is_refused_before_reading(tmp_path, monkeypatch, capsys):
    from custom.data.__main__ import _prepare_command

    src = tmp_path / "src"
    (src / "images").mkdir(parents=True)
    (src / "labels").mkdir()
    parent = tmp_path / "ro"
    parent.mkdir()
    _read_only(monkeypatch, parent)
    with pytest.raises(SystemExit):
        _prepare_command("folder", source=str(src), out=str(parent / "out"), progress=False)
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: --out {parent / 'out'}: cannot write there") and "\n" not in err, err


def test_training_and_inference_check_their_folders_first(tmp_path, monkeypatch):
    from custom.deploy.inference import InputScreen
    from custom.training.lock import hold_ckpt_dir

    _read_only(monkeypatch, tmp_path)
    with pytest.raises(OutputFolderError, match="--ckpt_dir"):
        hold_ckpt_dir(tmp_path / "models")
    screen = InputScreen(str(tmp_path / "inference"))
    with pytest.raises(OutputFolderError, match="--infer_output_dir"):
        screen([{"image": str(tmp_path / "never_read.png")}])


def test_a_full_disk_while_writing_masks_stops_the_run_in_one_line(tmp_path, monkeypatch):
    import torch
    from monai.data import MetaTensor

    import custom.utils.atomic as atomic
    from custom.deploy.inference import InputScreen, SaveMaskd

    screen = InputScreen(str(tmp_path / "inference"))
    saver = SaveMaskd("pred", str(tmp_path / "inference"), screen=screen)
    pred = MetaTensor(torch.ones(1, 16, 16), meta={"filename_or_obj": "/x/a.png", "spatial_shape": (16, 16)})

    def full(path):  # the rename that publishes the mask fails as on a full disk
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(atomic, "_fsync_file", full)
    with pytest.raises(OutputFolderError) as err:
        saver({"pred": pred})
    text = str(err.value)
    assert text.startswith(f"--infer_output_dir {tmp_path / 'inference'}: cannot write a_mask.png: No space left"), text
    assert screen.bad == []  # not blamed on the input
    assert [p.name for p in (tmp_path / "inference").iterdir()] == []  # nothing partial
