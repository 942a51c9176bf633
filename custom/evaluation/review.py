"""Which head measurements to distrust: per-image review scores, thresholds set on validation, the flag.

A clinician reads a head circumference off the predicted head. This module marks the frames whose
number should be checked by hand (``review: true`` with its reasons), from what the prediction, the
image and the bundle's second network give:

- ``no_head``: no head predicted, or no ellipse could be fitted (always marked);
- ``edge``: the share of the fitted ellipse's outline outside the frame (a head cut by the frame's
  edge: the fit extrapolates the missing arc);
- ``ellipse_misfit``: ``1 - Dice(head, filled fitted ellipse)``: the predicted head is not the ellipse
  that gives the HC (a bite out of the outline, a second blob, a ragged edge);
- ``disagreement``: ``1 - Dice`` of the two networks' heads (the CNN that is deployed and the
  Transformer trained beside it; only with the weights of a two-network method);
- ``skull_outside``: how much brighter the image is in a ring just outside the predicted outline than
  just inside it (the skull's bright arc left outside the outline: the failure of later pregnancy,
  where the model takes the inner of the skull's two arcs for the head's edge);
- ``size_outside``: how far the measured head circumference lies outside the range of the
  validation list's reference heads, as a share of that range's nearer end (a head larger or
  smaller than any the model was checked on: a later or earlier stage of pregnancy); in mm only, so
  where the pixel size is known.

Thresholds are set on the validation list only (:func:`calibrate`): each score's threshold is the
``1 - rate / n`` quantile of its validation values (``rate`` the share of in-distribution frames one
accepts to mark, ``n`` the number of scores that vary there), so that at most about ``rate`` of frames
like the validation ones are marked whatever the scores' correlation (a union bound). Written by hand: MONAI
and scikit-image give the pieces (the ellipse fit, Dice) but no review rule for a measurement.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from scipy import ndimage

from custom.evaluation.biometry import fit_head_ellipse, largest_component

__all__ = [
    "SCORES",
    "REVIEW_FILE",
    "head_label",
    "write_review_file",
    "read_review_file",
    "second_network",
    "size_outside",
    "ellipse_mask",
    "ellipse_outline",
    "review_scores",
    "calibrate",
    "review",
]

# every score but no_head, which marks a frame by itself
SCORES = ("edge", "ellipse_misfit", "disagreement", "skull_outside", "size_outside")
# the thresholds of the weights beside which it lies (models/review.json), set on validation
REVIEW_FILE = "review.json"


def head_label(labels: Mapping[str, int] | None) -> int | None:
    """The label of the fetal head in ``{class name: label}`` (the one class whose name says head),
    or ``None`` when no class, or more than one, does."""
    heads = [int(v) for k, v in (labels or {}).items() if "head" in str(k).lower()]
    return heads[0] if len(heads) == 1 else None


def ellipse_outline(cy: float, cx: float, a: float, b: float, angle: float, n: int = 360) -> np.ndarray:
    """``n x 2`` (row, column) points of the ellipse (:func:`fit_head_ellipse`'s convention: ``angle``
    from the +column axis towards the +row axis)."""
    t = np.linspace(0.0, 2.0 * math.pi, n, endpoint=False)
    cos, sin = math.cos(angle), math.sin(angle)
    x = cx + a * np.cos(t) * cos - b * np.sin(t) * sin
    y = cy + a * np.cos(t) * sin + b * np.sin(t) * cos
    return np.stack([y, x], axis=1)


def ellipse_mask(shape: Sequence[int], cy: float, cx: float, a: float, b: float, angle: float) -> np.ndarray:
    """The filled ellipse on a ``shape`` (rows, columns) grid, in pixels."""
    rows, cols = np.mgrid[: shape[0], : shape[1]].astype(np.float64)
    x, y = cols - cx, rows - cy
    u = x * math.cos(angle) + y * math.sin(angle)
    v = -x * math.sin(angle) + y * math.cos(angle)
    return (u / max(a, 1e-9)) ** 2 + (v / max(b, 1e-9)) ** 2 <= 1.0


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * float(np.logical_and(a, b).sum()) / total


def _ring_contrast(image: np.ndarray, head: np.ndarray, width: int) -> float:
    """Mean of ``image`` in a ring of ``width`` pixels just outside ``head`` minus its mean in the
    ring just inside, in units of the image's intensity spread (0 when either ring is empty)."""
    inside = head & ~ndimage.binary_erosion(head, iterations=width)
    outside = ndimage.binary_dilation(head, iterations=width) & ~head
    if not inside.any() or not outside.any():
        return 0.0
    spread = float(np.std(image)) or 1.0
    return (float(image[outside].mean()) - float(image[inside].mean())) / spread


def review_scores(
    head: np.ndarray, second_head: np.ndarray | None = None, image: np.ndarray | None = None
) -> dict[str, float]:
    """The review scores of one frame's predicted head (``H x W`` booleans, rows x columns).

    ``second_head``: the other network's head on the same frame (``disagreement``); ``image``: the
    frame's intensities at the same size (``skull_outside``, ring width 2 % of the frame's shorter
    side). Returns ``{"no_head": 0 or 1, "edge", "ellipse_misfit"[, "disagreement"][, "skull_outside"]}``;
    with no head only ``no_head`` is 1 (the other scores are nan).
    """
    head = np.asarray(head, dtype=bool)
    nan = float("nan")
    out: dict[str, float] = {"no_head": 0.0, "edge": nan, "ellipse_misfit": nan}
    if second_head is not None:
        out["disagreement"] = 1.0 - _dice(head, np.asarray(second_head, dtype=bool))
    component = largest_component(head)
    try:
        cy, cx, a, b, angle = fit_head_ellipse(component)
    except ValueError:
        out["no_head"] = 1.0
        return out
    outline = ellipse_outline(cy, cx, a, b, angle)
    h, w = head.shape
    outside = (outline[:, 0] < 0) | (outline[:, 0] > h - 1) | (outline[:, 1] < 0) | (outline[:, 1] > w - 1)
    out["edge"] = float(outside.mean())
    out["ellipse_misfit"] = 1.0 - _dice(head, ellipse_mask(head.shape, cy, cx, a, b, angle))
    if image is not None:
        image = np.asarray(image, dtype=np.float64)
        if image.shape != head.shape:
            raise ValueError(f"image {image.shape} and head mask {head.shape} differ in size")
        width = max(1, round(0.02 * min(h, w)))
        out["skull_outside"] = _ring_contrast(image, component, width)
    return out


def size_outside(hc_mm: float | None, hc_range_mm: Sequence[float] | None) -> float:
    """``max(0, hc / high - 1, low / hc - 1)`` for the range ``(low, high)`` of the validation heads
    (0 inside it); ``nan`` without a measurement in mm or a range."""
    if hc_mm is None or hc_range_mm is None or not math.isfinite(hc_mm) or hc_mm <= 0:
        return float("nan")
    low, high = (float(v) for v in hc_range_mm)
    return max(0.0, hc_mm / high - 1.0, low / hc_mm - 1.0)


def with_size(scores: Mapping[str, float], hc_mm: float | None, calibration: Mapping[str, Any] | None) -> dict:
    """``scores`` plus ``size_outside`` of ``hc_mm`` (a head circumference in mm, or ``None``) against
    the validation heads' range recorded in ``calibration`` (:func:`calibrate`), where both exist."""
    out = dict(scores)
    hc_range = (calibration or {}).get("hc_range_mm")
    if hc_range is not None and hc_mm is not None and not out.get("no_head"):
        out["size_outside"] = size_outside(hc_mm, hc_range)
    return out


def calibrate(rows: Iterable[Mapping[str, Any]], rate: float = 0.1) -> dict[str, Any]:
    """Thresholds from the validation list's review scores (``rows``: per-image dicts holding them).

    Each score present in ``rows`` gets the ``1 - rate / n`` quantile of its finite validation
    values (``n``: how many scores vary on validation; a constant score's threshold is its value),
    so at most about ``rate`` of frames like the validation ones are marked. Rows with a head
    circumference in mm and its reference (``hc``, ``hc_ref``) also give the range of the validation
    heads (``hc_range_mm``) and the ``size_outside`` score. Returns ``{"rate", "quantile",
    "n_images", "thresholds": {score: t}[, "hc_range_mm"]}``.
    """
    if not 0.0 < float(rate) < 1.0:
        raise ValueError(f"review rate {rate!r}: expected a share between 0 and 1 (e.g. 0.1)")
    rows = list(rows)
    # the heads' size range: the validation references in mm (rows of case_record: hc_ref, hc in mm)
    refs = np.array([float(r["hc_ref"]) for r in rows if r.get("hc_unit") == "mm" and "hc_ref" in r], dtype=float)
    refs = refs[np.isfinite(refs)]
    hc_range = [float(refs.min()), float(refs.max())] if len(refs) >= 2 else None
    if hc_range is not None:
        rows = [
            with_size(r, float(r["hc"]) if r.get("hc_unit") == "mm" else None, {"hc_range_mm": hc_range}) for r in rows
        ]
    values = {s: np.array([float(r[s]) for r in rows if s in r], dtype=float) for s in SCORES}
    values = {s: v[np.isfinite(v)] for s, v in values.items() if np.isfinite(v).any()}
    if not values:
        raise ValueError("no review score to calibrate: the validation rows hold no head")
    # a score constant on validation (a head never cut by the frame's edge) marks none of those frames:
    # its threshold is that value and it takes no share of the rate
    varying = [s for s, v in values.items() if np.ptp(v) > 0]
    q = 1.0 - float(rate) / max(1, len(varying))
    return {
        "rate": float(rate),
        "quantile": q,
        "n_images": len(rows),
        "thresholds": {s: float(np.quantile(v, q)) for s, v in values.items()},
        **({"hc_range_mm": hc_range} if hc_range is not None else {}),
    }


def review(scores: Mapping[str, float], thresholds: Mapping[str, float]) -> tuple[bool, str]:
    """``(review, reason)``: marked when there is no head or any score is above its threshold; the
    reason names each such score with its value and threshold (``""`` when not marked)."""
    if scores.get("no_head", 0.0) >= 1.0:
        return True, "no head ellipse"
    reasons = [
        f"{name} {scores[name]:.3g} > {limit:.3g}"
        for name, limit in thresholds.items()
        if name in scores and math.isfinite(scores[name]) and scores[name] > limit
    ]
    return bool(reasons), "; ".join(reasons)


def write_review_file(ckpt_dir: str, calibration: Mapping[str, Any], head_class: int, weights: str = "model.pt") -> str:
    """``ckpt_dir/review.json``: ``calibration`` (:func:`calibrate`), the head's label and the sha256
    of the weights it was set for, written atomically; returns its path."""
    import os

    from custom.utils.atomic import atomic_write_json
    from custom.utils.digest import file_sha256

    path = os.path.join(ckpt_dir, REVIEW_FILE)
    doc = {
        **calibration,
        "head_class": int(head_class),
        "weights_sha256": file_sha256(os.path.join(ckpt_dir, weights)),
        "set_on": "validation",
    }
    atomic_write_json(path, doc, indent=2)
    return path


def read_review_file(ckpt_path: str) -> dict[str, Any] | None:
    """The review thresholds beside the weights ``ckpt_path`` (``review.json`` in its folder), or
    ``None`` when there is none. Thresholds set for other weights (another sha256) are refused,
    naming both files: a review rule must never judge a model it was not set for."""
    import os

    from custom.utils.digest import file_sha256
    from custom.utils.jsonio import load_json

    path = os.path.join(os.path.dirname(os.path.abspath(ckpt_path)), REVIEW_FILE)
    if not os.path.isfile(path):
        return None
    doc = load_json(path)
    thresholds = doc.get("thresholds") if isinstance(doc, Mapping) else None
    if not isinstance(thresholds, Mapping) or not all(isinstance(v, (int, float)) for v in thresholds.values()):
        raise ValueError(f"{path}: no thresholds of review scores (a mapping of score names to numbers)")
    if doc.get("weights_sha256") != file_sha256(ckpt_path):
        raise ValueError(
            f"{path}: set for other weights than {ckpt_path} (sha256 differs); set them again on the "
            "validation list with the evaluating workflow, or remove the file"
        )
    return dict(doc)


def second_network(
    review_doc: Mapping[str, Any] | None, transformer: Any, state_path: str, key: str = "transformer"
) -> Any:
    """The second network the review needs: ``transformer`` loaded from the training state
    ``state_path`` when the thresholds (:func:`read_review_file`) include ``disagreement``, else ``None``
    (also, with a warning, when there is no such state: the other scores still judge)."""
    import logging
    import os

    if not review_doc or "disagreement" not in review_doc.get("thresholds", {}):
        return None
    if not os.path.isfile(state_path):  # e.g. a packaged bundle: its weights travel without the state
        logging.getLogger(__name__).warning(
            "the networks' disagreement is not judged: no training state with the Swin-Unet at %s", state_path
        )
        return None
    from custom.training.checkpoint import load_network_weights

    return load_network_weights(transformer, state_path, key=key)
