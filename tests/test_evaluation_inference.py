"""Evaluation at the original size and inference outputs, on real shared images where possible."""

from __future__ import annotations

import json
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import CONFIGS, REPO, require_shared
from PIL import Image

from custom.evaluation.evaluate import case_record, write_report
from custom.networks import UNeXt


def _random_model(path, classes=2):
    torch.manual_seed(0)
    torch.save(UNeXt(1, classes).state_dict(), path)
    return str(path)


def test_shifted_real_mask_gives_hand_derived_dice_and_mm_distances():
    hc = require_shared("hc18")
    gt = (np.array(Image.open(hc / "labels" / "000_HC.png")) > 0).astype(np.int64)
    k = 6
    pred = np.zeros_like(gt)
    pred[:, k:] = gt[:, :-k]  # shifted right by k columns
    inter = np.logical_and(pred, gt).sum()
    dice = 2 * inter / (pred.sum() + gt.sum())
    s = 0.1  # mm per pixel
    row = case_record(pred.T, gt.T, 2, (s, s), "000_HC")  # (x, y) order in, as MONAI reads
    assert row["dice"] == pytest.approx(dice, abs=1e-9)
    assert row["unit"] == "mm"
    # a horizontal shift of k px moves no surface point by more than k px: HD95 <= k * s, and > 0
    assert 0 < row["hd95"] <= k * s + 1e-9
    assert row["hd95_monai"] >= row["hd95"] - 1e-9
    row_px = case_record(pred.T, gt.T, 2, None, "000_HC")
    assert row_px["unit"] == "px" and row_px["hd95"] == pytest.approx(row["hd95"] / s)


def test_empty_prediction_policy_in_the_report(tmp_path):
    gt = np.zeros((40, 30), dtype=np.int64)
    gt[10:20, 5:15] = 1
    rows = [case_record(np.zeros_like(gt), gt, 2, (0.5, 0.5), "empty"), case_record(gt, gt, 2, (0.5, 0.5), "perfect")]
    assert rows[0]["dice"] == 0.0 and rows[0]["hd95"] == pytest.approx(np.hypot(40 * 0.5, 30 * 0.5))
    summary = write_report(rows, str(tmp_path), ["head"])
    assert summary["overall"]["n_empty_pred"] == 1
    assert summary["overall"]["dice_mean"] == pytest.approx(0.5)
    assert (tmp_path / "per_image.csv").read_text().count("\n") == 3
    assert "Empty-mask policy" in (tmp_path / "summary.md").read_text()


def _bundle(*args, timeout=600):
    cmd = [sys.executable, "-m", "monai.bundle", "run", *args]
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return res


def test_evaluate_config_writes_report_at_original_size_with_hc(tmp_path):
    hc = require_shared("hc18")
    names = ["000_HC", "001_HC", "010_2HC"]
    csv = {line.split(",")[0]: line.split(",") for line in (hc / "pixel_size_and_hc.csv").read_text().splitlines()[1:]}
    entries = [
        {
            "image": str(hc / "images" / f"{n}.png"),
            "label": str(hc / "labels" / f"{n}.png"),
            "name": n,
            "spacing": [float(csv[f"{n}.png"][1])] * 2,
            "hc_mm": float(csv[f"{n}.png"][2]),
        }
        for n in names
    ]
    # the entries are the shared data's own files: outside this list's folder, allowed explicitly
    doc = {"num_classes": 2, "test": entries, "allow_paths_outside": True}
    (tmp_path / "datalist.json").write_text(json.dumps(doc))
    model = _random_model(tmp_path / "model.pt")
    configs = str([str(CONFIGS / c) for c in ("common.yaml", "train.yaml", "evaluate.yaml")])
    _bundle(
        "evaluating",
        "--config_file",
        configs,
        "--meta_file",
        str(CONFIGS / "metadata.json"),
        "--dataset_dir",
        str(tmp_path),
        "--ckpt_path",
        model,
        "--output_dir",
        str(tmp_path / "out"),
        "--image_size",
        "[64,64]",
        "--head_class",
        "1",
    )
    out = tmp_path / "out" / "evaluation"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_images"] == 3 and summary["unit"] == "mm"
    assert "head_circumference" in summary and summary["head_circumference"]["reference"] == "csv"
    assert len(list((out / "overlays").glob("*.png"))) == 6
    rows = (out / "per_image.csv").read_text().splitlines()
    assert rows[0].startswith("name,") and len(rows) == 4


def test_inference_writes_masks_of_the_original_size_png_and_nifti(tmp_path):
    hc, psfhs = require_shared("hc18"), require_shared("psfhs")
    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / "head.png").write_bytes((hc / "images" / "010_2HC.png").read_bytes())  # 800 x 540, not square
    (inputs / "pelvis.png").write_bytes((psfhs / "images" / "04500.png").read_bytes())
    img = np.array(Image.open(hc / "images" / "000_HC.png"), dtype=np.float32)
    affine = np.diag([0.2, 0.3, 1.0, 1.0])
    nib.save(nib.Nifti1Image(img.T.copy(), affine), str(inputs / "scan.nii.gz"))
    model = _random_model(tmp_path / "model.pt", classes=3)
    configs = str([str(CONFIGS / c) for c in ("common.yaml", "inference.yaml")])
    _bundle(
        "--config_file",
        configs,
        "--meta_file",
        str(CONFIGS / "metadata.json"),
        "--input_path",
        str(inputs),
        "--ckpt_path",
        model,
        "--output_dir",
        str(tmp_path / "out"),
        "--image_size",
        "[64,64]",
        "--num_classes",
        "3",
        "--save_overlays",
        "true",
    )
    out = tmp_path / "out" / "inference"
    for name, src in (("head", inputs / "head.png"), ("pelvis", inputs / "pelvis.png")):
        mask = np.array(Image.open(out / f"{name}_mask.png"))
        assert mask.shape == np.array(Image.open(src)).shape[:2]
        assert mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 1, 2}
        assert (out / f"{name}_overlay.png").is_file()
    nii = nib.load(str(out / "scan_mask.nii.gz"))
    assert np.squeeze(nii.get_fdata()).shape == img.T.shape
    assert np.allclose(nii.affine, affine)
    # a second run must not overwrite the outputs
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "monai.bundle",
            "run",
            "--config_file",
            configs,
            "--meta_file",
            str(CONFIGS / "metadata.json"),
            "--input_path",
            str(inputs),
            "--ckpt_path",
            model,
            "--output_dir",
            str(tmp_path / "out"),
            "--image_size",
            "[64,64]",
            "--num_classes",
            "3",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode != 0 and "refusing to overwrite" in (res.stdout + res.stderr)


def test_inference_reports_missing_checkpoint_and_input(tmp_path):
    configs = str([str(CONFIGS / c) for c in ("common.yaml", "inference.yaml")])
    png = tmp_path / "x.png"
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(png)
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "monai.bundle",
            "run",
            "--config_file",
            configs,
            "--input_path",
            str(png),
            "--ckpt_path",
            str(tmp_path / "nope.pt"),
            "--output_dir",
            str(tmp_path / "o"),
            "--image_size",
            "[64,64]",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode != 0 and "checkpoint not found" in res.stdout + res.stderr
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "monai.bundle",
            "run",
            "--config_file",
            configs,
            "--input_path",
            str(tmp_path / "missing.png"),
            "--output_dir",
            str(tmp_path / "o"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode != 0 and "input not found" in res.stdout + res.stderr
