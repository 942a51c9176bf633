"""Segmentation metrics against values derived by hand, a brute-force oracle and real masks.

Hand derivations use shapes whose surface distances can be enumerated: one-pixel-thick
row segments (the whole segment is its surface) and filled squares (the surface is the
one-pixel ring).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from ignite.engine import Engine
from monai.handlers import MeanDice, from_engine
from monai.metrics import DiceMetric, compute_average_surface_distance
from scipy.spatial.distance import cdist

from custom.evaluation.metrics import (
    EMPTY_POLICY,
    AverageSurfaceDistance,
    AverageSurfaceDistanceMetric,
    PolicyMeanDice,
    PooledHD95,
    PooledHD95Metric,
    binary_metrics,
    evaluate_batch,
    evaluate_case,
    image_diagonal,
    summarize,
    summary_markdown,
    surface_distances,
)

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
PSFHS_LABELS = DATA / "psfhs" / "labels"
needs_psfhs = pytest.mark.skipif(
    not PSFHS_LABELS.is_dir(), reason=f"real PSFHS masks not found at {PSFHS_LABELS} (shared data folder absent)"
)


# ----------------------------------------------------------------------------- helpers


def segments(shape: tuple[int, int], row: int, gt_cols: range, pred_cols: range) -> tuple[np.ndarray, np.ndarray]:
    """Two one-pixel-thick horizontal segments on ``row`` (label 1)."""
    pred, gt = np.zeros(shape, np.int64), np.zeros(shape, np.int64)
    gt[row, gt_cols.start : gt_cols.stop] = 1
    pred[row, pred_cols.start : pred_cols.stop] = 1
    return pred, gt


def oracle_surface(mask: np.ndarray) -> np.ndarray:
    """Foreground pixels with a 4-neighbour outside the mask or outside the image (no erosion)."""
    m = np.pad(mask.astype(bool), 1)
    inner = m[:-2, 1:-1] & m[2:, 1:-1] & m[1:-1, :-2] & m[1:-1, 2:]
    return m[1:-1, 1:-1] & ~inner


def oracle_distances(pred: np.ndarray, gt: np.ndarray, spacing=(1.0, 1.0)) -> tuple[np.ndarray, np.ndarray]:
    """Directed surface distances by brute force over all surface-pixel pairs."""
    s = np.asarray(spacing, dtype=np.float64)
    pp = np.argwhere(oracle_surface(pred)) * s
    gg = np.argwhere(oracle_surface(gt)) * s
    d = cdist(pp, gg)
    return d.min(axis=1), d.min(axis=0)


def load_psfhs(name: str) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(PSFHS_LABELS / name), dtype=np.int64)


def shift_in_padded_frame(label: np.ndarray, k: int, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """(shifted, original) in a frame zero-padded by k, so that np.roll wraps nothing around."""
    padded = np.pad(label, k)
    return np.roll(padded, k, axis=axis), padded


def random_label_map(rng: np.random.Generator, shape=(48, 64), num_classes=3) -> np.ndarray:
    """Discs and rectangles of classes 1..num_classes-1 at random places."""
    lab = np.zeros(shape, np.int64)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    for c in range(1, num_classes):
        cy, cx = rng.integers(8, shape[0] - 8), rng.integers(8, shape[1] - 8)
        r = rng.integers(4, 9)
        lab[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = c
        y0, x0 = rng.integers(0, shape[0] - 6), rng.integers(0, shape[1] - 6)
        lab[y0 : y0 + rng.integers(2, 6), x0 : x0 + rng.integers(2, 6)] = c
    return lab


def one_hot(lab: np.ndarray, num_classes: int) -> torch.Tensor:
    """``B x 1 x H x W`` integer labels -> ``B x C x H x W`` float one-hot."""
    t = torch.as_tensor(lab)[:, 0]
    return torch.nn.functional.one_hot(t, num_classes).permute(0, 3, 1, 2).float()


# ------------------------------------------------------------------ hand-derived values


def test_disjoint_segments_hand_values_and_why_asd_is_not_monai_symmetric():
    # G: row 5, columns 2..9 (8 px); P: columns 12..15 (4 px). Every pixel is surface.
    # d(P->G) = distance to column 9 = [3, 4, 5, 6]; d(G->P) = distance to column 12 = [10, 9, ..., 3].
    pred, gt = segments((12, 20), 5, range(2, 10), range(12, 16))
    d_pg, d_gp = surface_distances(pred == 1, gt == 1)
    np.testing.assert_allclose(np.sort(d_pg), [3, 4, 5, 6])
    np.testing.assert_allclose(np.sort(d_gp), [3, 4, 5, 6, 7, 8, 9, 10])
    row = evaluate_case(pred, gt, num_classes=2)
    assert row["dice_1"] == 0.0 and row["unit"] == "px"
    # pooled, sorted: 3 3 4 4 5 5 6 6 7 8 9 10; position 0.95 * 11 = 10.45 -> 9 + 0.45 * (10 - 9)
    assert row["hd95_1"] == pytest.approx(9.45)
    # ASD = (mean[3..6] + mean[3..10]) / 2 = (4.5 + 6.5) / 2
    assert row["asd_1"] == pytest.approx(5.5)
    # MONAI: max(p95[3..6] = 5 + 0.85, p95[3..10] = 9 + 0.65) = 9.65
    assert row["hd95_monai_1"] == pytest.approx(9.65, abs=1e-5)
    # MONAI's symmetric surface distance is the mean of the POOLED set, 70 / 12, not 5.5:
    monai_sym = compute_average_surface_distance(
        torch.as_tensor(pred)[None, None], torch.as_tensor(gt)[None, None], include_background=True, symmetric=True
    )
    assert monai_sym.item() == pytest.approx(70 / 12, abs=1e-5)
    assert monai_sym.item() != pytest.approx(row["asd_1"])


def test_overlapping_segments_hand_values_pooled_can_exceed_monai_on_tiny_sets():
    # G: columns 2..9, P: columns 5..12 (shift k = 3). Dice = 2 * 5 / (8 + 8).
    # d(P->G) = [0, 0, 0, 0, 0, 1, 2, 3] = d(G->P).
    pred, gt = segments((12, 20), 5, range(2, 10), range(5, 13))
    row = evaluate_case(pred, gt, num_classes=2)
    assert row["dice_1"] == pytest.approx(0.625)
    # pooled: ten 0s, 1 1 2 2 3 3; position 0.95 * 15 = 14.25 -> 3
    assert row["hd95_1"] == pytest.approx(3.0)
    assert row["asd_1"] == pytest.approx(0.75)
    # MONAI: p95 of 8 values: position 6.65 -> 2 + 0.65 = 2.65. "MONAI >= pooled" (metrics.md)
    # holds for the population quantiles, not always for linearly interpolated sample ones.
    assert row["hd95_monai_1"] == pytest.approx(2.65, abs=1e-5)


@pytest.mark.parametrize("axis", [0, 1])
def test_shifted_squares_hand_values(axis):
    # G: 10x10 square rows/cols 10..19; P: the same shifted by k = 3 along `axis`.
    # Overlap 10 * 7 = 70 -> Dice = 140 / 200. Each surface is a 36-pixel ring; for P (shift along x):
    #   top/bottom rows, columns 13..19 -> 0 (14 px); columns 20, 21, 22 -> 1, 2, 3 (x2 rows)
    #   left column 13, rows 11..18 -> min(3, distance to G's top/bottom row) = 1 2 3 3 3 3 2 1
    #   right column 22, rows 11..18 -> 3 (8 px)
    # -> fourteen 0, four 1, four 2, fourteen 3 (sum 54); G->P is the mirror image.
    gt = np.zeros((30, 40), np.int64)
    gt[10:20, 10:20] = 1
    pred = np.roll(gt, 3, axis=axis)
    expected = np.array([0] * 14 + [1] * 4 + [2] * 4 + [3] * 14, dtype=float)
    d_pg, d_gp = surface_distances(pred == 1, gt == 1)
    np.testing.assert_allclose(np.sort(d_pg), expected)
    np.testing.assert_allclose(np.sort(d_gp), expected)
    row = evaluate_case(pred, gt, num_classes=2)
    assert row["dice_1"] == pytest.approx(0.7)
    assert row["hd95_1"] == pytest.approx(3.0)  # positions 67.45 of 72 sorted values: among the 3s
    assert row["asd_1"] == pytest.approx(54 / 36)
    assert row["hd95_monai_1"] == pytest.approx(3.0)
    assert row["dice"] == row["dice_1"] and row["hd95"] == row["hd95_1"]


# ----------------------------------------------------------------------------- spacing


def test_anisotropic_spacing_scales_distances():
    sy, sx = 2.0, 0.5
    # horizontal segments: every distance is along x -> scaled by sx exactly
    pred, gt = segments((12, 20), 5, range(2, 10), range(12, 16))
    row = evaluate_case(pred, gt, 2, spacing=(sy, sx))
    assert row["unit"] == "mm"
    assert row["hd95_1"] == pytest.approx(9.45 * sx)
    assert row["asd_1"] == pytest.approx(5.5 * sx)
    assert row["hd95_monai_1"] == pytest.approx(9.65 * sx, abs=1e-5)
    # the same segments vertical: scaled by sy
    row_t = evaluate_case(pred.T.copy(), gt.T.copy(), 2, spacing=(sy, sx))
    assert row_t["hd95_1"] == pytest.approx(9.45 * sy)
    assert row_t["asd_1"] == pytest.approx(5.5 * sy)
    # single pixels (0, 0) and (3, 4): 5 px; sqrt((3 * 2)^2 + (4 * 0.5)^2) = sqrt(40) mm
    p, g = np.zeros((8, 8), np.int64), np.zeros((8, 8), np.int64)
    g[0, 0], p[3, 4] = 1, 1
    assert evaluate_case(p, g, 2)["hd95_1"] == pytest.approx(5.0)
    mm = evaluate_case(p, g, 2, spacing=(sy, sx))
    assert mm["hd95_1"] == pytest.approx(math.sqrt(40)) and mm["asd_1"] == pytest.approx(math.sqrt(40))
    assert mm["hd95_monai_1"] == pytest.approx(math.sqrt(40), rel=1e-6)


# ------------------------------------------------------------------------ real masks


@needs_psfhs
@pytest.mark.parametrize("name,k,axis", [("03744.png", 5, 1), ("04100.png", 3, 0), ("04650.png", 8, 1)])
def test_real_mask_shift_against_counts_oracle_and_monai(name, k, axis):
    pred, gt = shift_in_padded_frame(load_psfhs(name), k, axis)
    row = evaluate_case(pred, gt, num_classes=3)
    for c in (1, 2):
        p, g = pred == c, gt == c
        assert g.any(), f"{name} lacks class {c}"
        # Dice from an independent count: |P n G| = pixels of class c whose k-shifted copy is also c
        original = gt == c
        shifted_back = np.zeros_like(original)
        if axis == 1:
            shifted_back[:, k:] = original[:, :-k]
        else:
            shifted_back[k:, :] = original[:-k, :]
        overlap = int(np.sum(original & shifted_back))
        assert row[f"dice_{c}"] == pytest.approx(2 * overlap / (2 * int(original.sum())))
        # distances against a brute-force oracle (explicit neighbour test + all pairs)
        o_pg, o_gp = oracle_distances(p, g)
        d_pg, d_gp = surface_distances(p, g)
        np.testing.assert_allclose(np.sort(d_pg), np.sort(o_pg), atol=1e-9)
        np.testing.assert_allclose(np.sort(d_gp), np.sort(o_gp), atol=1e-9)
        assert row[f"hd95_{c}"] == pytest.approx(np.percentile(np.concatenate([o_pg, o_gp]), 95))
        assert row[f"asd_{c}"] == pytest.approx((o_pg.mean() + o_gp.mean()) / 2)
        assert 0 < row[f"hd95_{c}"] <= k + 1e-9  # a pure shift moves no surface point further than k
        assert row[f"hd95_{c}"] <= row[f"hd95_monai_{c}"] + 1e-4
    # isotropic spacing s multiplies every distance by s
    s = 0.37
    mm = evaluate_case(pred, gt, 3, spacing=(s, s))
    for key in ("hd95_1", "asd_1", "hd95_2", "asd_2", "hd95_monai_1", "hd95_monai_2"):
        assert mm[key] == pytest.approx(s * row[key], rel=1e-5)


@needs_psfhs
def test_real_mask_anisotropic_spacing_matches_oracle():
    pred, gt = shift_in_padded_frame(load_psfhs("04200.png"), 4, 0)
    spacing = (0.3, 0.12)
    row = evaluate_case(pred, gt, 3, spacing=spacing)
    for c in (1, 2):
        o_pg, o_gp = oracle_distances(pred == c, gt == c, spacing)
        assert row[f"hd95_{c}"] == pytest.approx(np.percentile(np.concatenate([o_pg, o_gp]), 95))
        assert row[f"asd_{c}"] == pytest.approx((o_pg.mean() + o_gp.mean()) / 2)
        assert row[f"hd95_{c}"] <= row[f"hd95_monai_{c}"] + 1e-4


# ---------------------------------------------------------------------- empty policy


def test_empty_policy_values_and_counts():
    shape, spacing = (12, 20), (2.0, 0.5)
    assert image_diagonal(shape) == pytest.approx(math.sqrt(12**2 + 20**2))
    assert image_diagonal(shape, spacing) == pytest.approx(26.0)  # sqrt(24^2 + 10^2)
    gt = np.zeros(shape, np.int64)
    gt[2:6, 3:9] = 1  # class 1 present; class 2 absent
    pred = np.zeros(shape, np.int64)  # empty prediction
    for sp, diag in ((None, math.sqrt(544)), (spacing, 26.0)):
        row = evaluate_case(pred, gt, num_classes=3, spacing=sp)
        assert row["dice_1"] == 0.0 and row["empty_pred_1"] and not row["empty_gt_1"]
        for key in ("hd95_1", "asd_1", "hd95_monai_1"):
            assert row[key] == pytest.approx(diag)
        # class 2 empty in both: Dice 1, distances 0, not counted
        assert row["dice_2"] == 1.0 and row["hd95_2"] == 0.0 and row["asd_2"] == 0.0 and row["hd95_monai_2"] == 0.0
        assert not row["empty_pred_2"] and not row["empty_gt_2"]
        assert row["n_empty_pred"] == 1 and row["n_empty_gt"] == 0
        assert row["hd95"] == pytest.approx(diag / 2) and row["dice"] == pytest.approx(0.5)
        assert all(math.isfinite(v) for k, v in row.items() if isinstance(v, float))
    # non-empty prediction, empty ground truth: Dice 0 and the same penalty, counted as empty_gt
    fp = binary_metrics(gt == 1, np.zeros(shape, bool), spacing)
    assert fp.dice == 0.0 and fp.hd95 == pytest.approx(26.0) and fp.asd == pytest.approx(26.0)
    assert fp.empty_gt and not fp.empty_pred
    summary = summarize([evaluate_case(pred, gt, 3), evaluate_case(gt, gt, 3)], ["PS", "head"])
    assert summary["classes"]["PS"]["n_empty_pred"] == 1 and summary["overall"]["n_empty_pred"] == 1
    assert summary["policy"] == EMPTY_POLICY and "diagonal" in summary_markdown(summary)


def test_evaluate_batch_accepts_torch_b1hw_and_per_image_spacing():
    rng = np.random.default_rng(0)
    gt = np.stack([random_label_map(rng) for _ in range(3)])[:, None]
    pred = np.stack([random_label_map(rng) for _ in range(3)])[:, None]
    spacings = [(0.5, 0.5), (1.0, 0.25), (0.2, 0.3)]
    rows = evaluate_batch(torch.as_tensor(pred), torch.as_tensor(gt), 3, spacing=spacings)
    for b in range(3):
        assert rows[b] == evaluate_case(pred[b, 0], gt[b, 0], 3, spacing=spacings[b])
    assert evaluate_batch(pred, gt, 3, spacing=(0.5, 0.5))[1] == evaluate_case(pred[1], gt[1], 3, spacing=(0.5, 0.5))
    with pytest.raises(ValueError):
        evaluate_case(pred, gt, 3)  # a batch of 3 is not one case


# ------------------------------------------------------------------------ aggregation


def _row(d1, d2, h1, h2, e1=False, unit="mm"):
    r = {
        "dice_1": d1,
        "dice_2": d2,
        "hd95_1": h1,
        "hd95_2": h2,
        "asd_1": h1 / 2,
        "asd_2": h2 / 2,
        "hd95_monai_1": h1,
        "hd95_monai_2": h2,
        "empty_pred_1": e1,
        "empty_pred_2": False,
        "empty_gt_1": False,
        "empty_gt_2": False,
        "unit": unit,
    }
    return r


def test_summarize_mean_std_and_markdown():
    rows = [_row(0.5, 0.9, 2.0, 4.0), _row(0.7, 0.9, 4.0, 8.0), _row(0.9, 0.6, 6.0, 0.0, e1=True)]
    s = summarize(rows, {1: "PS", 2: "head"})
    ps, head, overall = s["classes"]["PS"], s["classes"]["head"], s["overall"]
    assert s["n_images"] == 3 and s["unit"] == "mm" and s["std_ddof"] == 0
    assert ps["dice_mean"] == pytest.approx(0.7)
    assert ps["dice_std"] == pytest.approx(math.sqrt((0.04 + 0 + 0.04) / 3))
    assert head["dice_mean"] == pytest.approx(0.8)
    assert head["dice_std"] == pytest.approx(math.sqrt((0.01 + 0.01 + 0.04) / 3))
    assert ps["hd95_mean"] == pytest.approx(4.0) and ps["asd_mean"] == pytest.approx(2.0)
    # over classes: per-image means 0.7, 0.8, 0.75 -> mean 0.75, std sqrt((0.0025 + 0.0025 + 0) / 3)
    assert overall["dice_mean"] == pytest.approx(0.75)
    assert overall["dice_std"] == pytest.approx(math.sqrt(0.005 / 3))
    # hd95 per-image means 3, 6, 3 -> mean 4, std sqrt((1 + 4 + 1) / 3)
    assert overall["hd95_mean"] == pytest.approx(4.0) and overall["hd95_std"] == pytest.approx(math.sqrt(2.0))
    assert ps["n_empty_pred"] == 1 and head["n_empty_pred"] == 0 and overall["n_empty_pred"] == 1
    # sample std on request
    assert summarize(rows, ["PS", "head"], ddof=1)["classes"]["PS"]["dice_std"] == pytest.approx(0.2)
    md = summary_markdown(s)
    assert "| PS | 0.700 ± 0.163 |" in md and "HD95 (mm)" in md and "| Mean over classes | 0.750 ±" in md
    assert "3 images" in md and EMPTY_POLICY in md
    with pytest.raises(ValueError, match="units"):
        summarize(rows + [_row(1, 1, 0, 0, unit="px")], ["PS", "head"])
    with pytest.raises(KeyError):
        summarize(rows, ["background", "PS", "head"])


# --------------------------------------------------------- MONAI / Ignite validation


def test_metric_classes_and_ignite_handlers_match_evaluate_case():
    rng = np.random.default_rng(1)
    gt = np.stack([random_label_map(rng) for _ in range(4)])[:, None]
    pred = np.stack([random_label_map(rng) for _ in range(4)])[:, None]
    pred[2][pred[2] == 1] = 0  # an empty prediction of class 1
    spacing = (0.4, 0.25)
    rows = evaluate_batch(pred, gt, 3, spacing=spacing)
    assert rows[2]["empty_pred_1"]
    expected_hd = np.array([[r["hd95_1"], r["hd95_2"]] for r in rows])
    expected_asd = np.array([[r["asd_1"], r["asd_2"]] for r in rows])
    y_pred, y = one_hot(pred, 3), one_hot(gt, 3)

    hd = PooledHD95Metric(spacing=spacing, reduction="none")
    hd(y_pred[:2], y[:2])
    hd(list(y_pred[2:]), list(y[2:]))  # decollated channel-first items, as evaluators produce
    np.testing.assert_allclose(hd.aggregate().numpy(), expected_hd, rtol=1e-5)
    asd = AverageSurfaceDistanceMetric(spacing=spacing)
    asd(y_pred, y)
    assert asd.aggregate().item() == pytest.approx(expected_asd.mean(), rel=1e-5)
    # spacing passed at call time overrides the constructor's
    hd_px = PooledHD95Metric(reduction="mean_batch")
    hd_px(y_pred, y, spacing=spacing)
    np.testing.assert_allclose(hd_px.aggregate().numpy(), expected_hd.mean(0), rtol=1e-5)

    def step(engine, batch):
        return {"pred": y_pred[batch], "label": y[batch]}

    engine = Engine(step)
    transform = from_engine(["pred", "label"])
    PooledHD95(spacing=spacing, output_transform=transform).attach(engine, "hd95")
    AverageSurfaceDistance(spacing=spacing, output_transform=transform).attach(engine, "asd")
    PolicyMeanDice(output_transform=transform).attach(engine, "dice")
    engine.run([slice(0, 2), slice(2, 4)], max_epochs=1)
    assert engine.state.metrics["hd95"] == pytest.approx(expected_hd.mean(), rel=1e-5)
    assert engine.state.metrics["asd"] == pytest.approx(expected_asd.mean(), rel=1e-5)
    assert engine.state.metrics["dice"] == pytest.approx(np.mean([r["dice"] for r in rows]), rel=1e-5)
    assert tuple(engine.state.metric_details["hd95"].shape) == (4, 2)


def test_monai_dice_empty_behaviour():
    # B=3: (both empty), (empty prediction), (perfect) for the single foreground channel
    y = torch.zeros(3, 2, 8, 8)
    y_pred = torch.zeros(3, 2, 8, 8)
    y[1, 1, 2:5, 2:5] = 1
    y[2, 1, 1:3, 1:3] = 1
    y_pred[2, 1, 1:3, 1:3] = 1
    y[:, 0] = 1 - y[:, 1]
    y_pred[:, 0] = 1 - y_pred[:, 1]
    policy = DiceMetric(include_background=False, ignore_empty=False, reduction="none")
    np.testing.assert_allclose(policy(y_pred, y).numpy()[:, 0], [1.0, 0.0, 1.0])
    default = DiceMetric(include_background=False, reduction="none")(y_pred, y).numpy()[:, 0]
    assert math.isnan(default[0])  # MONAI's default drops both-empty images from the mean
    assert MeanDice(include_background=False).metric_fn.ignore_empty  # the stock handler keeps that default
    assert not PolicyMeanDice().metric_fn.ignore_empty
    # and our evaluate_case agrees with the policy Dice
    labels = y.argmax(1, keepdim=True).numpy()
    preds = y_pred.argmax(1, keepdim=True).numpy()
    assert [r["dice_1"] for r in evaluate_batch(preds, labels, 2)] == [1.0, 0.0, 1.0]
