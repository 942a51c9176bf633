"""Fetal head biometry (docs/metrics.md, "Head circumference"): ellipse fit and HC in mm.

The HC18 challenge measures the head circumference as the perimeter of an ellipse fitted
to the head and scores ``|HC_pred - HC_ref|`` in mm. Here:

1. keep the largest connected component of the binary head mask and fill its holes;
2. take its boundary as the sub-pixel iso-contour at level 0.5
   (``skimage.measure.find_contours``), scaled by the pixel size to mm;
3. fit an ellipse to the boundary points by total least squares
   (``skimage.measure.EllipseModel``, Halir & Flusser's direct fit);
4. ``HC = pi * (3 (a + b) - sqrt((3a + b)(a + 3b)))`` (Ramanujan), ``a, b`` the semi-axes.

Why the boundary fit and not ``regionprops`` moments: both agree within 0.01% on the
complete, filled HC18 reference masks, but the moments describe the pixels that are in
the image, so a head cut by the image border (it happens in HC18) gets a too-small
ellipse (a half-ellipse cut at its centre: semi-major axis 98.6 instead of 120 px), while
``find_contours`` leaves the contour open along the image border and the fit to the arc
recovers the whole ellipse (119.96 px). The boundary fit also ignores holes and interior
errors of a predicted mask.

Empty masks: :func:`head_circumference_mm` returns ``nan`` (no exception, so batch
evaluation continues) and :func:`hc_absolute_difference` flags ``empty_pred``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Union

import numpy as np
import torch
from scipy import ndimage
from skimage import measure

__all__ = [
    "largest_component",
    "boundary_points",
    "fit_head_ellipse",
    "ellipse_perimeter",
    "head_circumference_mm",
    "hc_absolute_difference",
]

PixelSize = Union[float, Sequence[float], None]


def _binary_2d(mask: np.ndarray | torch.Tensor) -> np.ndarray:
    """A binary ``H x W`` numpy mask from ``H x W`` / ``1 x H x W`` / ``1 x 1 x H x W`` input."""
    a = mask.detach().cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
    while a.ndim > 2 and a.shape[0] == 1:
        a = a[0]
    if a.ndim != 2:
        raise ValueError(f"expected a 2D head mask, got shape {a.shape}.")
    return a > 0


def _pixel_size(pixel_size: PixelSize) -> tuple[float, float]:
    """``None`` -> (1, 1) (pixels); a float -> isotropic; ``(sy, sx)`` as given, in mm."""
    if pixel_size is None:
        return 1.0, 1.0
    if isinstance(pixel_size, (int, float, np.floating, np.integer)):
        return float(pixel_size), float(pixel_size)
    sy, sx = (float(s) for s in pixel_size)
    return sy, sx


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 8-connected foreground component of a binary mask, holes filled
    (all-False for an empty mask)."""
    labels, n = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    if n == 0:
        return np.zeros_like(mask, dtype=bool)
    sizes = np.bincount(labels.ravel())[1:]
    return ndimage.binary_fill_holes(labels == (int(np.argmax(sizes)) + 1))


def boundary_points(mask: np.ndarray) -> np.ndarray:
    """``N x 2`` sub-pixel ``(row, col)`` points of the 0.5 iso-contour of a binary mask.

    Contours stay open where the mask meets the image border: the border is not part of
    the head outline, so it must not enter the ellipse fit.
    """
    contours = measure.find_contours(mask.astype(np.float64), 0.5)
    if not contours:
        return np.zeros((0, 2))
    return np.concatenate(contours, axis=0)


def _fit_ellipse_xy(points_xy: np.ndarray) -> tuple[float, float, float, float, float]:
    """Total-least-squares ellipse ``(xc, yc, a, b, theta)`` of ``N x 2`` (x, y) points;
    ``theta`` rotates the ``a`` axis from +x towards +y. Supports skimage < 0.26 and >= 0.26."""
    model_cls = measure.EllipseModel
    if hasattr(model_cls, "from_estimate"):  # skimage >= 0.26
        model = model_cls.from_estimate(points_xy)
        if not model:
            raise ValueError(f"ellipse fit failed: {model}")
        (xc, yc), (a, b), theta = model.center, model.axis_lengths, model.theta
    else:  # pragma: no cover - older skimage
        model = model_cls()
        if not model.estimate(points_xy):
            raise ValueError("ellipse fit failed.")
        xc, yc, a, b, theta = model.params
    return float(xc), float(yc), float(a), float(b), float(theta)


def fit_head_ellipse(
    mask: np.ndarray | torch.Tensor, pixel_size_mm: PixelSize = None
) -> tuple[float, float, float, float, float]:
    """Ellipse ``(cy, cx, a, b, angle)`` fitted to the boundary of the largest component.

    ``cy, cx``: centre (row, column); ``a >= b``: semi-axes; in pixels, or in mm when
    ``pixel_size_mm`` (a float or ``(sy, sx)``) is given. ``angle`` in ``[0, pi)``: angle of
    the ``a`` axis from the +column axis towards the +row axis (clockwise as displayed).
    Raises ``ValueError`` for an empty mask or a failed fit (fewer than 5 boundary points,
    degenerate points).
    """
    component = largest_component(_binary_2d(mask))
    if not component.any():
        raise ValueError("empty head mask: no ellipse to fit.")
    sy, sx = _pixel_size(pixel_size_mm)
    points = boundary_points(component)
    if len(points) < 5:
        raise ValueError(f"{len(points)} boundary points are too few for an ellipse fit (need 5).")
    xc, yc, a, b, theta = _fit_ellipse_xy(np.stack([points[:, 1] * sx, points[:, 0] * sy], axis=1))
    a, b = abs(a), abs(b)
    if a < b:
        a, b, theta = b, a, theta + math.pi / 2
    return yc, xc, a, b, float(theta % math.pi)


def ellipse_perimeter(a: float, b: float) -> float:
    """Ramanujan's approximation ``pi * (3 (a + b) - sqrt((3a + b)(a + 3b)))`` of the
    perimeter of an ellipse with semi-axes ``a, b`` (exact for a circle)."""
    return float(math.pi * (3.0 * (a + b) - math.sqrt((3.0 * a + b) * (a + 3.0 * b))))


def head_circumference_mm(mask: np.ndarray | torch.Tensor, pixel_size_mm: PixelSize) -> float:
    """HC in mm: :func:`ellipse_perimeter` of :func:`fit_head_ellipse` in mm.

    Returns ``nan`` for an empty mask or a failed fit (check with ``math.isnan``), so that a
    batch evaluation continues; :func:`hc_absolute_difference` reports it as a flag.
    """
    if pixel_size_mm is None:
        raise ValueError("pixel_size_mm is required: HC is reported in mm.")
    try:
        _, _, a, b, _ = fit_head_ellipse(mask, pixel_size_mm)
    except ValueError:
        return float("nan")
    return ellipse_perimeter(a, b)


def hc_absolute_difference(
    pred_mask: np.ndarray | torch.Tensor, ref_hc_mm: float, pixel_size_mm: PixelSize
) -> dict[str, Any]:
    """HC18's score ``|HC(pred_mask) - HC_ref|`` in mm.

    Returns ``{"hc_mm", "ref_hc_mm", "abs_diff_mm", "empty_pred", "unit": "mm"}``;
    ``empty_pred`` is True (and ``hc_mm``, ``abs_diff_mm`` are nan) when the prediction is
    empty or no ellipse could be fitted: count these cases, do not average the nans.
    """
    hc = head_circumference_mm(pred_mask, pixel_size_mm)
    failed = math.isnan(hc)
    return {
        "hc_mm": hc,
        "ref_hc_mm": float(ref_hc_mm),
        "abs_diff_mm": float("nan") if failed else abs(hc - float(ref_hc_mm)),
        "empty_pred": failed,
        "unit": "mm",
    }
