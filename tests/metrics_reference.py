"""The per-image metrics of ``custom.evaluation.metrics`` as implemented before issue 17 item 4, kept
verbatim as the reference of ``tests/test_metrics_match_full_image_reference.py`` (full-image surfaces and
distance transforms, MONAI's ``compute_hausdorff_distance`` for HD95_monai) and as the
"previous" figure of ``python -m custom.tools.bench evaluate --reference tests/metrics_reference.py``.

Not collected by pytest (no ``test_`` prefix); imported by the test and by the benchmark.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import torch
from monai.metrics import compute_hausdorff_distance
from scipy import ndimage

METRIC_NAMES = ("dice", "hd95", "asd", "hd95_monai")


def _spacing_tuple(spacing, ndim):
    if spacing is None:
        return None
    if isinstance(spacing, (int, float, np.floating, np.integer)):
        return (float(spacing),) * ndim
    return tuple(float(s) for s in spacing)


def image_diagonal(shape, spacing=None) -> float:
    s = _spacing_tuple(spacing, len(shape)) or (1.0,) * len(shape)
    return float(math.sqrt(sum((n * si) ** 2 for n, si in zip(shape, s))))


def dice_coefficient(pred, gt) -> float:
    p, g = pred.astype(bool), gt.astype(bool)
    denominator = np.count_nonzero(p) + np.count_nonzero(g)
    if denominator == 0:
        return 1.0
    return float(2.0 * np.count_nonzero(p & g) / denominator)


def surface_mask(mask):
    m = mask.astype(bool)
    structure = ndimage.generate_binary_structure(m.ndim, 1)
    return m ^ ndimage.binary_erosion(m, structure=structure)


def directed_surface_distances(surface_from, surface_to, spacing=None):
    sampling = _spacing_tuple(spacing, surface_to.ndim)
    distance_to_y = ndimage.distance_transform_edt(~surface_to.astype(bool), sampling=sampling)
    return np.asarray(distance_to_y[surface_from.astype(bool)], dtype=np.float64)


def surface_distances(pred, gt, spacing=None):
    sp, sg = surface_mask(pred), surface_mask(gt)
    return directed_surface_distances(sp, sg, spacing), directed_surface_distances(sg, sp, spacing)


def monai_hd95(pred, gt, spacing=None) -> float:
    p = torch.as_tensor(pred.astype(bool))[None, None]
    g = torch.as_tensor(gt.astype(bool))[None, None]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*always_return_as_numpy.*", category=FutureWarning)
        value = compute_hausdorff_distance(
            p, g, include_background=True, percentile=95, spacing=_spacing_tuple(spacing, pred.ndim)
        )
    return float(value.item())


def binary_metrics(pred, gt, spacing=None) -> dict[str, Any]:
    p, g = np.asarray(pred).astype(bool), np.asarray(gt).astype(bool)
    has_p, has_g = bool(p.any()), bool(g.any())
    if not has_p and not has_g:
        return dict(dice=1.0, hd95=0.0, asd=0.0, hd95_monai=0.0, empty_pred=False, empty_gt=False)
    if not has_p or not has_g:
        penalty = image_diagonal(p.shape, spacing)
        return dict(dice=0.0, hd95=penalty, asd=penalty, hd95_monai=penalty, empty_pred=not has_p, empty_gt=not has_g)
    d_pg, d_gp = surface_distances(p, g, spacing)
    return dict(
        dice=dice_coefficient(p, g),
        hd95=float(np.percentile(np.concatenate([d_pg, d_gp]), 95)),
        asd=float((np.mean(d_pg) + np.mean(d_gp)) / 2.0),
        hd95_monai=monai_hd95(p, g, spacing),
        empty_pred=False,
        empty_gt=False,
    )


def evaluate_case(pred, gt, num_classes: int, spacing=None) -> dict[str, Any]:
    """The reference ``custom.evaluation.metrics.evaluate_case`` (2-D label maps)."""
    p, g = np.asarray(pred), np.asarray(gt)
    row: dict[str, Any] = {}
    for c in range(1, num_classes):
        m = binary_metrics(p == c, g == c, spacing)
        row.update({f"{k}_{c}": v for k, v in m.items()})
    classes = range(1, num_classes)
    for name in METRIC_NAMES:
        row[name] = float(np.mean([row[f"{name}_{c}"] for c in classes]))
    row["n_empty_pred"] = sum(row[f"empty_pred_{c}"] for c in classes)
    row["n_empty_gt"] = sum(row[f"empty_gt_{c}"] for c in classes)
    row["unit"] = "px" if spacing is None else "mm"
    return row
