"""Filling HC18 ellipse outlines (annotation rings) into filled head masks.

A closed ring is filled with ``scipy.ndimage.binary_fill_holes``. Where the ring is open
(typically cut by the image border, so its inside touches the border and is no "hole"), the
fill adds little or nothing; then a least-squares ellipse (``skimage.measure.EllipseModel``)
is fitted to the ring pixels and rasterised, clipped to the image.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import ndimage

from .errors import ReadError

__all__ = ["FIT_AREA_RATIO", "fit_ellipse", "ellipse_parameters", "ellipse_mask", "fill_outline"]

# The fill is trusted when it covers at least this share of the fitted ellipse's area: a closed
# ring fills to ~100 %, an open one to little more than the ring itself.
FIT_AREA_RATIO = 0.9


def fit_ellipse(points_xy: np.ndarray) -> Any | None:
    """Least-squares ellipse through (x, y) points, or None when no ellipse fits."""
    from skimage.measure import EllipseModel

    if len(points_xy) < 5:
        return None
    if hasattr(EllipseModel, "from_estimate"):  # scikit-image >= 0.26
        model = EllipseModel.from_estimate(points_xy)
        return model if model else None
    model = EllipseModel()  # older scikit-image
    return model if model.estimate(points_xy) else None


def ellipse_parameters(model: Any) -> tuple[float, float, float, float, float]:
    """``(xc, yc, a, b, theta)`` of a fitted ``EllipseModel`` (any scikit-image version)."""
    if hasattr(model, "axis_lengths"):  # scikit-image >= 0.26
        (xc, yc), (a, b), theta = model.center, model.axis_lengths, model.theta
    else:
        xc, yc, a, b, theta = model.params
    return float(xc), float(yc), float(a), float(b), float(theta)


def ellipse_mask(model: Any, shape: tuple[int, int]) -> np.ndarray:
    """Rasterise a fitted ellipse (clipped to the image) into a boolean mask of ``shape``."""
    from skimage.draw import ellipse

    xc, yc, a, b, theta = ellipse_parameters(model)
    mask = np.zeros(shape, bool)
    if not all(np.isfinite([xc, yc, a, b, theta])) or a <= 0 or b <= 0:
        return mask
    # EllipseModel's theta turns the a-axis from x towards y (rows grow downwards); skimage.draw
    # turns the other way, hence -theta. a lies along columns (x), b along rows (y).
    rows, cols = ellipse(yc, xc, b, a, shape=shape, rotation=-theta)
    mask[rows, cols] = True
    return mask


def fill_outline(outline: np.ndarray) -> tuple[np.ndarray, bool]:
    """Filled mask (bool) from an outline image (non-zero = ring) and whether the ellipse fit was used."""
    ring = np.asarray(outline) > 0
    if not ring.any():
        raise ReadError("outline is empty (no annotated pixel)")
    filled = ndimage.binary_fill_holes(ring)
    rows, cols = np.nonzero(ring)
    model = fit_ellipse(np.column_stack([cols, rows]).astype(np.float64))
    fitted = ellipse_mask(model, ring.shape) | ring if model is not None else None
    if fitted is None or not fitted.any() or filled.sum() >= FIT_AREA_RATIO * fitted.sum():
        if filled.sum() <= ring.sum():
            raise ReadError("outline is open and no ellipse could be fitted to it")
        return filled, False
    return fitted, True
