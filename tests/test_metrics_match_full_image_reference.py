"""Issue 17 item 4: the bounding-box metrics core of ``custom.evaluation.metrics`` gives the same per-image
values as the previous full-image implementation (``tests/metrics_reference.py``, MONAI's
``compute_hausdorff_distance`` for HD95_monai), on real PSFHS frames and on edge cases.
Speed is measured by ``python -m custom.tools.bench evaluate``, not here."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import SHARED_DATA
from metrics_reference import evaluate_case as reference_case
from metrics_reference import monai_hd95 as reference_monai_hd95
from scipy import ndimage

from custom.evaluation.metrics import evaluate_case, monai_hd95, surface_distances

PSFHS_LABELS = SHARED_DATA / "psfhs" / "labels"
TOL = 1e-6


def assert_same_row(new: dict, ref: dict) -> None:
    assert set(new) == set(ref), set(new) ^ set(ref)
    for key, value in ref.items():
        if isinstance(value, float):
            assert math.isfinite(new[key]), key
            assert new[key] == pytest.approx(value, rel=TOL, abs=TOL), (key, new[key], value)
        else:
            assert new[key] == value, (key, new[key], value)


def degraded_predictions(gt: np.ndarray, rng: np.random.Generator) -> list[np.ndarray]:
    """Network-like errors: blocky resize-back, shift, eroded/dilated class, stray blobs, lost class."""
    out = []
    t = torch.as_tensor(gt, dtype=torch.float32)[None, None]
    small = torch.nn.functional.interpolate(t, size=(40, 40), mode="nearest")
    out.append(torch.nn.functional.interpolate(small, size=gt.shape, mode="nearest")[0, 0].numpy().astype(np.int64))
    out.append(np.roll(gt, (int(rng.integers(-6, 7)), int(rng.integers(-6, 7))), axis=(0, 1)))
    grown = gt.copy()
    grown[ndimage.binary_dilation(gt == 2, iterations=3) & (gt == 0)] = 2
    grown[ndimage.binary_erosion(gt == 1, iterations=2) ^ (gt == 1)] = 0
    out.append(grown)
    noisy = gt.copy()
    for _ in range(6):
        y, x = rng.integers(0, gt.shape[0] - 8), rng.integers(0, gt.shape[1] - 8)
        noisy[y : y + rng.integers(1, 8), x : x + rng.integers(1, 8)] = rng.integers(0, 3)
    out.append(noisy)
    lost = gt.copy()
    lost[lost == 1] = 0  # class 1 missing: empty prediction, penalty
    out.append(lost)
    return out


@pytest.mark.skipif(not PSFHS_LABELS.is_dir(), reason=f"real PSFHS masks absent ({PSFHS_LABELS})")
@pytest.mark.parametrize("spacing", [None, (0.3, 0.12)])
def test_real_frames_equal_the_previous_implementation(spacing):
    from PIL import Image

    files = sorted(PSFHS_LABELS.glob("*.png"))
    rng = np.random.default_rng(17)
    picks = [files[i] for i in rng.choice(len(files), size=min(6, len(files)), replace=False)]
    for path in picks:
        gt = np.asarray(Image.open(path), dtype=np.int64)
        assert gt.shape == (256, 256)
        for pred in degraded_predictions(gt, rng) + [gt]:
            assert_same_row(evaluate_case(pred, gt, 3, spacing), reference_case(pred, gt, 3, spacing))


def _edge_cases() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    shape = (37, 53)
    z = np.zeros(shape, np.int64)
    blob = z.copy()
    blob[5:20, 8:30] = 1
    blob[22:30, 33:50] = 2
    border = z.copy()
    border[0:10, 0:53] = 1  # touches three image borders
    border[30:37, 45:53] = 2
    pixel = z.copy()
    pixel[36, 52] = 1  # one pixel in the corner
    full = np.ones(shape, np.int64)  # class 1 everywhere: its surface is the image border
    far = z.copy()
    far[0, 0] = 2
    far[36, 52] = 2
    return {
        "empty prediction": (z, blob),
        "empty reference": (blob, z),
        "both empty": (z, z),
        "touching the border": (border, blob),
        "single pixel": (pixel, blob),
        "whole image": (full, blob),
        "two far pixels": (far, pixel + blob),
        "identical": (blob, blob),
    }


@pytest.mark.parametrize("case", list(_edge_cases()))
@pytest.mark.parametrize("spacing", [None, (2.0, 0.5)])
def test_edge_cases_equal_the_previous_implementation(case, spacing):
    pred, gt = _edge_cases()[case]
    assert_same_row(evaluate_case(pred, gt, 3, spacing), reference_case(pred, gt, 3, spacing))


def test_edge_case_policy_values():
    pred, gt = _edge_cases()["empty prediction"]
    row = evaluate_case(pred, gt, 3)
    diagonal = math.hypot(37, 53)
    assert row["dice_1"] == 0.0 and row["hd95_1"] == pytest.approx(diagonal) and row["asd_1"] == pytest.approx(diagonal)
    assert row["n_empty_pred"] == 2 and row["n_empty_gt"] == 0
    row = evaluate_case(gt, pred, 3)
    assert row["n_empty_gt"] == 2 and row["hd95_monai_2"] == pytest.approx(diagonal)
    row = evaluate_case(pred, pred, 3)
    assert row["dice"] == 1.0 and row["hd95"] == 0.0 and row["asd"] == 0.0 and row["hd95_monai"] == 0.0


def test_cropped_distances_equal_full_image_ones_in_order_and_monai_hd95():
    from metrics_reference import surface_distances as full_image

    pred, gt = _edge_cases()["touching the border"]
    for c in (1, 2):
        for spacing in (None, (0.7, 1.3)):
            new, old = surface_distances(pred == c, gt == c, spacing), full_image(pred == c, gt == c, spacing)
            for a, b in zip(new, old):
                np.testing.assert_allclose(a, b, rtol=0, atol=1e-9)  # same pixels, same (row-major) order
            assert monai_hd95(pred == c, gt == c, spacing) == pytest.approx(
                reference_monai_hd95(pred == c, gt == c, spacing), rel=TOL, abs=TOL
            )


# -------------------------------------------------------------- python -m custom.tools.bench evaluate
def _bench_evaluate(*args: str):
    import subprocess
    import sys

    from conftest import REPO

    return subprocess.run(
        [sys.executable, "-m", "custom.tools.bench", "evaluate", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={**__import__("os").environ, "OMP_NUM_THREADS": "1"},
    )


@pytest.mark.skipif(not PSFHS_LABELS.is_dir(), reason=f"real PSFHS masks absent ({PSFHS_LABELS})")
def test_bench_evaluate_json_reports_frames_per_second_beside_the_reference():
    import json

    proc = _bench_evaluate(
        "--dataset-dir",
        str(PSFHS_LABELS.parent),
        "--frames",
        "4",
        "--reference",
        "tests/metrics_reference.py",
        "--n-overlays",
        "1",
        "--json",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stdout
    r = json.loads(lines[0])
    assert r["frames"] == 4 and r["frame_shapes"] == [[256, 256]] and r["overlays"] == 2
    for key in ("score_frames_per_s", "path_frames_per_s", "reference_score_frames_per_s", "speedup_vs_reference"):
        assert r[key] > 0, key
    assert set(r["ms_per_frame"]) == {"load", "resize_back", "score"} and 0 < r["mean_dice"] <= 1


def test_bench_evaluate_missing_dataset_is_one_line(tmp_path):
    proc = _bench_evaluate("--dataset-dir", str(tmp_path / "nowhere"), "--frames", "2")
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "--dataset-dir" in errors[0] and "Traceback" not in proc.stderr, proc.stderr
