"""Head-circumference biometry: Ramanujan's perimeter, ellipse fits of drawn ellipses, HC18."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.special import ellipe
from skimage import draw

from custom.evaluation.biometry import (
    ellipse_perimeter,
    fit_head_ellipse,
    hc_absolute_difference,
    head_circumference_mm,
)

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
HC18 = DATA / "hc18"
needs_hc18 = pytest.mark.skipif(
    not (HC18 / "pixel_size_and_hc.csv").is_file(),
    reason=f"HC18 masks/CSV not found at {HC18} (shared data folder absent)",
)


def drawn_ellipse(shape, cy, cx, r_radius, c_radius, rotation=0.0) -> np.ndarray:
    """A filled ellipse mask (pixel centres inside the ellipse), skimage's convention."""
    mask = np.zeros(shape, np.uint8)
    rr, cc = draw.ellipse(cy, cx, r_radius, c_radius, shape=shape, rotation=rotation)
    mask[rr, cc] = 1
    return mask


def test_ramanujan_perimeter():
    assert ellipse_perimeter(10.0, 10.0) == pytest.approx(2 * math.pi * 10.0, rel=1e-12)  # exact for a circle
    assert ellipse_perimeter(90.0, 60.0) == pytest.approx(ellipse_perimeter(60.0, 90.0))
    # against the exact perimeter 4 a E(1 - b^2 / a^2) (complete elliptic integral of the 2nd kind)
    for a, b in ((90.0, 60.0), (100.0, 50.0), (3.0, 2.9)):
        exact = 4 * a * ellipe(1 - (b / a) ** 2)
        assert ellipse_perimeter(a, b) == pytest.approx(exact, rel=1e-4)
    assert ellipse_perimeter(90.0, 60.0) == pytest.approx(math.pi * (3 * 150 - math.sqrt(330 * 270)))


@pytest.mark.parametrize("rotation", [0.0, 0.4, -1.1])
def test_fit_of_drawn_ellipse(rotation):
    mask = drawn_ellipse((300, 400), 150, 200, 60, 90, rotation)
    cy, cx, a, b, angle = fit_head_ellipse(mask)
    assert (cy, cx) == pytest.approx((150, 200), abs=0.1)
    assert a == pytest.approx(90, rel=0.01) and b == pytest.approx(60, rel=0.01)
    # skimage rotates counter-clockwise as displayed; ours is measured from +column towards +row
    assert math.cos(2 * (angle - (-rotation))) == pytest.approx(1.0, abs=1e-3)
    assert head_circumference_mm(mask, 1.0) == pytest.approx(ellipse_perimeter(90, 60), rel=0.01)
    assert head_circumference_mm(torch.as_tensor(mask)[None, None], 0.2) == pytest.approx(
        0.2 * ellipse_perimeter(90, 60), rel=0.01
    )


def test_anisotropic_pixels_circle_in_mm():
    # 80 x 40 pixel semi-axes with (sy, sx) = (0.5, 1.0) mm: a circle of radius 40 mm
    mask = drawn_ellipse((200, 120), 100, 60, 80, 40)
    _, _, a, b, _ = fit_head_ellipse(mask, (0.5, 1.0))
    assert a == pytest.approx(40, rel=0.01) and b == pytest.approx(40, rel=0.01)
    assert head_circumference_mm(mask, (0.5, 1.0)) == pytest.approx(2 * math.pi * 40, rel=0.01)


def test_largest_component_holes_and_border_cut():
    mask = drawn_ellipse((300, 400), 150, 200, 60, 90, 0.3)
    reference = head_circumference_mm(mask, 1.0)
    noisy = mask.copy()
    noisy[5:15, 5:15] = 1  # a spurious blob
    noisy[140:160, 190:210] = 0  # a hole
    assert head_circumference_mm(noisy, 1.0) == pytest.approx(reference, rel=1e-9)
    # a head cut by the image border: the open contour still determines the whole ellipse
    cut = drawn_ellipse((300, 400), 150, 60, 80, 120, 0.3)
    assert cut[:, 0].any()
    assert head_circumference_mm(cut, 1.0) == pytest.approx(ellipse_perimeter(120, 80), rel=0.01)


def test_empty_mask_gives_nan_and_flag():
    empty = np.zeros((50, 60), np.uint8)
    assert math.isnan(head_circumference_mm(empty, 0.1))
    with pytest.raises(ValueError):
        fit_head_ellipse(empty)
    result = hc_absolute_difference(empty, 150.0, 0.1)
    assert result["empty_pred"] and math.isnan(result["abs_diff_mm"]) and result["unit"] == "mm"
    ok = hc_absolute_difference(drawn_ellipse((300, 400), 150, 200, 60, 90), 100.0, 0.2)
    assert not ok["empty_pred"] and ok["abs_diff_mm"] == pytest.approx(abs(ok["hc_mm"] - 100.0))


@needs_hc18
def test_hc18_reference_masks_within_two_percent():
    from PIL import Image

    with open(HC18 / "pixel_size_and_hc.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    sample = rows[::25]  # 30 images spread over the subjects
    assert len(sample) >= 25
    errors = []
    for r in sample:
        mask = np.asarray(Image.open(HC18 / "labels" / r["filename"]))
        ref = float(r["head circumference (mm)"])
        result = hc_absolute_difference(mask, ref, float(r["pixel size(mm)"]))
        assert not result["empty_pred"]
        errors.append(result["abs_diff_mm"] / ref)
    assert max(errors) < 0.02, f"worst relative HC error {max(errors):.4f} ({sample[int(np.argmax(errors))]})"


def test_the_head_circumference_error_statistics_of_a_list():
    """Issue 32: per list the HC error's mean, median, 90th percentile, max and signed bias (a
    model that draws heads too small has a negative bias); an image without an ellipse is counted."""
    from custom.evaluation.evaluate import head_circumference_summary

    errors = [-10.0, -4.0, 2.0, -1.0, -30.0]
    rows = [{"hc_abs_diff": abs(e), "hc_diff": e, "hc_unit": "mm"} for e in errors]
    rows.append({"hc_abs_diff": float("nan"), "hc_diff": float("nan"), "hc_unit": "mm"})
    s = head_circumference_summary(rows)
    assert s["n"] == 6 and s["n_no_ellipse"] == 1
    assert s["abs_diff_mean"] == pytest.approx(9.4) and s["abs_diff_median"] == pytest.approx(4.0)
    assert s["abs_diff_max"] == 30.0 and s["abs_diff_p90"] == pytest.approx(22.0)
    assert s["bias"] == pytest.approx(-8.6)
