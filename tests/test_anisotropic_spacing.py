"""Non-square pixels (spacing x = 0.5 mm, y = 2.0 mm, as a datalist records it): HD95 and head
circumference derived by hand. Swapping or dropping the (x, y) -> (row, column) order, or taking
one axis's spacing for both, fails here (every other test uses square pixels)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from skimage.draw import ellipse

from custom.evaluation.evaluate import SegmentationReport, _spacing_of

SPACING_XY = [0.5, 2.0]  # x (columns) 0.5 mm, y (rows) 2.0 mm


def test_spacing_order_of_a_datalist_entry():
    assert _spacing_of({"spacing": SPACING_XY}) == (2.0, 0.5)  # (row, column)


@pytest.mark.parametrize("dr,dc", [(0, 4), (3, 0), (1, 4)])
def test_hd95_of_a_shifted_point_in_mm(tmp_path, dr, dc):
    rows, cols = 20, 30
    gt = np.zeros((rows, cols), np.int64)
    pred = np.zeros_like(gt)
    gt[8, 10] = 1
    pred[8 + dr, 10 + dc] = 1
    # by hand: one surface point each, dr rows of 2.0 mm and dc columns of 0.5 mm apart
    expected = math.hypot(dr * 2.0, dc * 0.5)
    report = SegmentationReport(str(tmp_path), 2)
    entry = {"image": "x.png", "label": "x_mask.png", "spacing": SPACING_XY}
    row = report.add(pred.T, entry, gt.T)  # MONAI's (x, y) order in, as evaluation reads the files
    assert row["unit"] == "mm"
    assert row["hd95"] == pytest.approx(expected, abs=1e-9)
    assert row["hd95"] != pytest.approx(math.hypot(dr * 0.5, dc * 2.0))  # the swapped order differs


def test_head_circumference_of_a_circle_drawn_on_non_square_pixels(tmp_path):
    # a head that is a circle of radius 60 mm: 30 rows (2.0 mm) by 120 columns (0.5 mm) as semi-axes
    radius_mm = 60.0
    mask = np.zeros((80, 300), np.int64)
    rr, cc = ellipse(40, 150, radius_mm / 2.0, radius_mm / 0.5, shape=mask.shape)
    mask[rr, cc] = 1
    expected = 2 * math.pi * radius_mm  # 376.99 mm, by hand
    report = SegmentationReport(str(tmp_path), 2, head_class=1)
    entry = {"image": "h.png", "label": "h_mask.png", "spacing": SPACING_XY}
    row = report.add(mask.T, entry, mask.T)
    assert row["hc_unit"] == "mm"
    assert row["hc"] == pytest.approx(expected, rel=0.02), row["hc"]
    assert row["hc_ref"] == pytest.approx(expected, rel=0.02) and row["hc_abs_diff"] == pytest.approx(0.0, abs=1e-6)
    # with a reference circumference from the CSV (HC18's hc_mm), the difference is to that value
    row = report.add(mask.T, {**entry, "hc_mm": expected + 5.0}, mask.T)
    assert row["hc_abs_diff"] == pytest.approx(abs(row["hc"] - expected - 5.0))
