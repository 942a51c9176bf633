"""Segmentation metrics of ``docs/metrics.md``: Dice, pooled HD95, ASD, MONAI's HD95.

Per image and per foreground class ``c`` with prediction ``P = (pred == c)`` and ground
truth ``G = (gt == c)``:

- ``Dice = 2 |P n G| / (|P| + |G|)``.
- Surfaces ``S(X) = X xor erode(X)``, erosion with the connectivity-1 structuring
  element (4-neighbourhood in 2D) and pixels outside the image counted as background.
- Directed surface distances ``d(X->Y) = { min_{y in S(Y)} ||(x - y) * s|| : x in S(X) }``
  with the pixel spacing ``s = (sy, sx)`` in mm (``s = 1``: pixels).
- ``HD95 = percentile_95( d(P->G) u d(G->P) )``: the 95th percentile (linear
  interpolation) of the POOLED distances of both directions (medpy's ``hd95``).
- ``ASD = ( mean d(P->G) + mean d(G->P) ) / 2``: the mean of the two directed means
  (medpy's ``assd``).
- ``HD95_monai = max( percentile_95 d(P->G), percentile_95 d(G->P) )``: MONAI's
  ``compute_hausdorff_distance(percentile=95)``, reported beside HD95 under its own name.

Empty masks follow :data:`EMPTY_POLICY`. Units are mm when a spacing is given, pixels
otherwise; every result carries its unit.

Speed: every distance of a class is computed on the bounding box of
``P u G`` only. Pixels outside that box belong to neither mask, so the erosion (background
outside the image) and the distance to the nearest surface pixel (all surface pixels lie
inside) are the same on the box as on the whole image; the surfaces and the two directed
distance sets are computed once per class and shared by HD95, ASD and HD95_monai
(``python -m custom.tools.bench evaluate`` measures it; ``tests/test_metrics_match_full_image_reference.py`` checks the
values against the previous full-image implementation and MONAI).

The surface-distance core is written here from the definitions above (scipy's exact
Euclidean distance transform) because medpy is not a dependency, and MONAI's
``SurfaceDistanceMetric(symmetric=True)`` averages the pooled distances
(``mean(d(P->G) u d(G->P))``) rather than the two directed means, and returns inf/nan on
empty masks instead of the policy's penalty.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple, Union

import numpy as np
import torch
from ignite.metrics import Metric as IgniteMetric
from monai.handlers import IgniteMetricHandler
from monai.metrics import CumulativeIterationMetric, DiceMetric
from monai.metrics.utils import do_metric_reduction, prepare_spacing
from monai.utils import MetricReduction
from scipy import ndimage

__all__ = [
    "EMPTY_POLICY",
    "EmptyPredictions",
    "METRIC_NAMES",
    "BinaryMetrics",
    "dice_coefficient",
    "image_diagonal",
    "surface_mask",
    "directed_surface_distances",
    "surface_distances",
    "pooled_hd95",
    "average_symmetric_surface_distance",
    "bounding_box",
    "monai_hd95",
    "monai_hd95_of_distances",
    "binary_metrics",
    "evaluate_case",
    "evaluate_batch",
    "summarize",
    "summary_markdown",
    "PooledHD95Metric",
    "AverageSurfaceDistanceMetric",
    "PooledHD95",
    "AverageSurfaceDistance",
    "PolicyMeanDice",
]

Array = Union[np.ndarray, torch.Tensor]
SpacingArg = Union[float, Sequence[float], None]

METRIC_NAMES: tuple[str, ...] = ("dice", "hd95", "asd", "hd95_monai")

EMPTY_POLICY = (
    "Empty-mask policy, per image and class: "
    "empty prediction with non-empty ground truth -> Dice 0 and HD95 = ASD = HD95_monai = the image "
    "diagonal sqrt((H*sy)^2 + (W*sx)^2) in the report's unit (counted as 'empty_pred'); "
    "non-empty prediction with empty ground truth -> Dice 0 and the same diagonal penalty "
    "(counted as 'empty_gt'); both empty -> Dice 1 and distances 0. "
    "No case is dropped and no inf enters a mean."
)


# --------------------------------------------------------------------------- helpers


def _to_numpy(x: Array) -> np.ndarray:
    """A numpy view of a numpy array or (detached, CPU) torch tensor."""
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _spacing_tuple(spacing: SpacingArg, ndim: int) -> tuple[float, ...] | None:
    """``None`` (pixels), an isotropic float, or one spacing per spatial axis -> a tuple or ``None``."""
    if spacing is None:
        return None
    if isinstance(spacing, (int, float, np.floating, np.integer)):
        return (float(spacing),) * ndim
    out = tuple(float(s) for s in spacing)
    if len(out) != ndim:
        raise ValueError(f"spacing {spacing} should have {ndim} entries (one per spatial axis, e.g. (sy, sx)).")
    if any(s <= 0 for s in out):
        raise ValueError(f"spacing must be positive, got {spacing}.")
    return out


def _unit(spacing: SpacingArg) -> str:
    """``"mm"`` when a spacing is known, ``"px"`` otherwise."""
    return "px" if spacing is None else "mm"


def _label_map_2d(x: Array) -> np.ndarray:
    """An integer label map ``H x W``, ``1 x H x W`` or ``1 x 1 x H x W`` -> ``H x W`` numpy array."""
    a = _to_numpy(x)
    while a.ndim > 2 and a.shape[0] == 1:
        a = a[0]
    if a.ndim != 2:
        raise ValueError(
            f"expected one label map H x W (or 1 x 1 x H x W), got shape {tuple(_to_numpy(x).shape)}; "
            "use evaluate_batch for B x 1 x H x W."
        )
    return a


# ----------------------------------------------------------------- per-mask definitions


def dice_coefficient(pred: np.ndarray, gt: np.ndarray) -> float:
    """``Dice = 2 |P n G| / (|P| + |G|)`` of two binary masks; 1 when both are empty."""
    p, g = pred.astype(bool), gt.astype(bool)
    denominator = np.count_nonzero(p) + np.count_nonzero(g)
    if denominator == 0:
        return 1.0
    return float(2.0 * np.count_nonzero(p & g) / denominator)


def image_diagonal(shape: Sequence[int], spacing: SpacingArg = None) -> float:
    """The empty-mask penalty ``sqrt(sum_i (n_i * s_i)^2)``, e.g. ``sqrt((H*sy)^2 + (W*sx)^2)`` in 2D."""
    s = _spacing_tuple(spacing, len(shape)) or (1.0,) * len(shape)
    return float(math.sqrt(sum((n * si) ** 2 for n, si in zip(shape, s))))


_STRUCTURES: dict[int, np.ndarray] = {}


def _structure(ndim: int) -> np.ndarray:
    """The connectivity-1 structuring element (built once per dimension)."""
    if ndim not in _STRUCTURES:
        _STRUCTURES[ndim] = ndimage.generate_binary_structure(ndim, 1)
    return _STRUCTURES[ndim]


def surface_mask(mask: np.ndarray) -> np.ndarray:
    """``S(X) = X xor erode(X)``: foreground pixels with a 4-connected (connectivity-1)
    background neighbour; pixels outside the image count as background (scipy's default
    ``border_value=0``), so foreground on the image border is surface."""
    m = mask.astype(bool)
    return m ^ ndimage.binary_erosion(m, structure=_structure(m.ndim))


def bounding_box(mask: np.ndarray) -> tuple[slice, ...] | None:
    """The smallest box (one slice per axis) holding every ``True`` pixel; ``None`` if none."""
    m = np.asarray(mask, dtype=bool)
    box = []
    for axis in range(m.ndim):
        hit = np.flatnonzero(m.any(axis=tuple(a for a in range(m.ndim) if a != axis)))
        if hit.size == 0:
            return None
        box.append(slice(int(hit[0]), int(hit[-1]) + 1))
    return tuple(box)


def directed_surface_distances(
    surface_from: np.ndarray, surface_to: np.ndarray, spacing: SpacingArg = None
) -> np.ndarray:
    """``d(X->Y)``: for every pixel of ``S(X)`` the Euclidean distance (in the spacing's
    unit) to the nearest pixel of ``S(Y)``; both surfaces must be non-empty.

    Hand-written with ``scipy.ndimage.distance_transform_edt``: the exact EDT of the
    complement of ``S(Y)`` gives, at each pixel, the distance to the nearest ``S(Y)`` pixel.
    """
    if not surface_to.any() or not surface_from.any():
        raise ValueError("surface distances are undefined for an empty surface; apply the empty policy first.")
    sampling = _spacing_tuple(spacing, surface_to.ndim)
    distance_to_y = ndimage.distance_transform_edt(~surface_to.astype(bool), sampling=sampling)
    return np.asarray(distance_to_y[surface_from.astype(bool)], dtype=np.float64)


def surface_distances(pred: np.ndarray, gt: np.ndarray, spacing: SpacingArg = None) -> tuple[np.ndarray, np.ndarray]:
    """``(d(P->G), d(G->P))`` of two non-empty binary masks, each in row-major order of its
    surface pixels. Computed on the bounding box of ``P u G`` (equal to the full image's
    values, see the module docstring)."""
    p, g = np.asarray(pred, dtype=bool), np.asarray(gt, dtype=bool)
    box = bounding_box(p | g)
    if box is not None:
        p, g = p[box], g[box]
    sp, sg = surface_mask(p), surface_mask(g)
    return directed_surface_distances(sp, sg, spacing), directed_surface_distances(sg, sp, spacing)


def pooled_hd95(d_pred_to_gt: np.ndarray, d_gt_to_pred: np.ndarray) -> float:
    """``HD95 = percentile_95(d(P->G) u d(G->P))`` with numpy's linear interpolation."""
    return float(np.percentile(np.concatenate([d_pred_to_gt, d_gt_to_pred]), 95))


def average_symmetric_surface_distance(d_pred_to_gt: np.ndarray, d_gt_to_pred: np.ndarray) -> float:
    """``ASD = (mean d(P->G) + mean d(G->P)) / 2`` (not the mean of the pooled set)."""
    return float((np.mean(d_pred_to_gt) + np.mean(d_gt_to_pred)) / 2.0)


def monai_hd95_of_distances(d_pred_to_gt: np.ndarray, d_gt_to_pred: np.ndarray) -> float:
    """``max(percentile_95 d(P->G), percentile_95 d(G->P))`` exactly as MONAI's
    ``compute_hausdorff_distance(percentile=95)`` reduces its distances (float32,
    ``torch.quantile``). MONAI's edges are the same ``X xor erode(X)`` (scipy's erosion,
    spacing used for the distances only), so its value equals this one on the distances of
    :func:`surface_distances` (tested); calling it would recompute the edges and distances
    that HD95 and ASD already have, at more than half of the evaluation time."""
    values = [torch.quantile(torch.as_tensor(d, dtype=torch.float32), 0.95) for d in (d_pred_to_gt, d_gt_to_pred)]
    return float(torch.max(torch.stack(values)).item())


def monai_hd95(pred: np.ndarray, gt: np.ndarray, spacing: SpacingArg = None) -> float:
    """MONAI's ``compute_hausdorff_distance(percentile=95)`` of two non-empty binary masks
    (:func:`monai_hd95_of_distances` of their :func:`surface_distances`)."""
    return monai_hd95_of_distances(*surface_distances(pred, gt, spacing))


class BinaryMetrics(NamedTuple):
    """All per-mask values under the empty policy; distances in the spacing's unit."""

    dice: float
    hd95: float
    asd: float
    hd95_monai: float | None
    empty_pred: bool  # prediction empty, ground truth not
    empty_gt: bool  # ground truth empty, prediction not


def binary_metrics(
    pred: np.ndarray, gt: np.ndarray, spacing: SpacingArg = None, with_monai: bool = True
) -> BinaryMetrics:
    """Dice, pooled HD95, ASD (and MONAI's HD95 when ``with_monai``) of two binary masks,
    applying :data:`EMPTY_POLICY` (penalty: :func:`image_diagonal`)."""
    p, g = np.asarray(pred).astype(bool), np.asarray(gt).astype(bool)
    if p.shape != g.shape:
        raise ValueError(f"pred and gt should have the same shape, got {p.shape} and {g.shape}.")
    has_p, has_g = bool(p.any()), bool(g.any())
    if not has_p and not has_g:
        return BinaryMetrics(1.0, 0.0, 0.0, 0.0 if with_monai else None, False, False)
    if not has_p or not has_g:
        penalty = image_diagonal(p.shape, spacing)
        return BinaryMetrics(0.0, penalty, penalty, penalty if with_monai else None, not has_p, not has_g)
    d_pg, d_gp = surface_distances(p, g, spacing)  # once, shared by HD95, ASD and HD95_monai
    return BinaryMetrics(
        dice=dice_coefficient(p, g),
        hd95=pooled_hd95(d_pg, d_gp),
        asd=average_symmetric_surface_distance(d_pg, d_gp),
        hd95_monai=monai_hd95_of_distances(d_pg, d_gp) if with_monai else None,
        empty_pred=False,
        empty_gt=False,
    )


# ------------------------------------------------------------------ per image, per class


def evaluate_case(pred: Array, gt: Array, num_classes: int, spacing: SpacingArg = None) -> dict[str, Any]:
    """Per-class metrics of one image from integer label maps ``H x W`` (or ``1 x 1 x H x W``).

    Classes ``c = 1 .. num_classes - 1`` (0 is background). Returns
    ``{"dice_c", "hd95_c", "asd_c", "hd95_monai_c", "empty_pred_c", "empty_gt_c"}`` per
    class, the means over foreground classes ``"dice", "hd95", "asd", "hd95_monai"``
    (``mean_c value_c``), ``"n_empty_pred"``, ``"n_empty_gt"`` and ``"unit"`` ("mm" when
    ``spacing=(sy, sx)`` in mm is given, else "px"). Empty masks: :data:`EMPTY_POLICY`.
    """
    p, g = _label_map_2d(pred), _label_map_2d(gt)
    if p.shape != g.shape:
        raise ValueError(f"pred and gt should have the same shape, got {p.shape} and {g.shape}.")
    if num_classes < 2:
        raise ValueError("num_classes counts the background too and must be >= 2.")
    row: dict[str, Any] = {}
    for c in range(1, num_classes):
        m = binary_metrics(p == c, g == c, spacing)
        row.update(
            {
                f"dice_{c}": m.dice,
                f"hd95_{c}": m.hd95,
                f"asd_{c}": m.asd,
                f"hd95_monai_{c}": m.hd95_monai,
                f"empty_pred_{c}": m.empty_pred,
                f"empty_gt_{c}": m.empty_gt,
            }
        )
    classes = range(1, num_classes)
    for name in METRIC_NAMES:
        row[name] = float(np.mean([row[f"{name}_{c}"] for c in classes]))
    row["n_empty_pred"] = sum(row[f"empty_pred_{c}"] for c in classes)
    row["n_empty_gt"] = sum(row[f"empty_gt_{c}"] for c in classes)
    row["unit"] = _unit(spacing)
    return row


def evaluate_batch(
    pred: Array, gt: Array, num_classes: int, spacing: SpacingArg | Sequence[SpacingArg] = None
) -> list[dict[str, Any]]:
    """:func:`evaluate_case` for each image of ``B x 1 x H x W`` label maps; ``spacing`` is
    one ``(sy, sx)`` for all images or a sequence with one entry per image."""
    p, g = _to_numpy(pred), _to_numpy(gt)
    if p.ndim != 4 or p.shape[1] != 1 or p.shape != g.shape:
        raise ValueError(f"expected B x 1 x H x W label maps of equal shapes, got {p.shape} and {g.shape}.")
    if spacing is not None and not isinstance(spacing, (int, float)) and isinstance(spacing[0], (Sequence, np.ndarray)):
        per_image = list(spacing)  # type: ignore[arg-type]
        if len(per_image) != p.shape[0]:
            raise ValueError(f"got {len(per_image)} spacings for a batch of {p.shape[0]}.")
    else:
        per_image = [spacing] * p.shape[0]
    return [evaluate_case(p[b, 0], g[b, 0], num_classes, per_image[b]) for b in range(p.shape[0])]


# --------------------------------------------------------------------------- aggregation


def _class_labels(class_names: Mapping[int, str] | Sequence[str]) -> dict[int, str]:
    """``{label: name}`` from a mapping or from the names of the foreground classes 1, 2, ..."""
    if isinstance(class_names, Mapping):
        return {int(k): str(v) for k, v in class_names.items()}
    return {i + 1: str(n) for i, n in enumerate(class_names)}


def _mean_std(values: Sequence[float], ddof: int) -> tuple[float, float]:
    """``(mean, std)`` over images; std with ``ddof`` (0 when a single value and ddof=1)."""
    v = np.asarray(values, dtype=np.float64)
    std = float(np.std(v, ddof=ddof)) if v.size > ddof else 0.0
    return float(np.mean(v)), std


def summarize(
    rows: Sequence[Mapping[str, Any]], class_names: Mapping[int, str] | Sequence[str], ddof: int = 0
) -> dict[str, Any]:
    """Mean and standard deviation over images of the :func:`evaluate_case` rows.

    Per class ``c``: ``mean_i v_ic`` and ``std_i v_ic``; over classes (``"overall"``): the
    mean and std over images of the per-image class mean ``v_i = mean_c v_ic`` (the mean
    equals the mean of the class means). ``std`` uses ``ddof`` (default 0, numpy's
    population std; the value is recorded). Counts of empty predictions / empty ground
    truths per class and in total. All rows must share one unit (mm and px never mix).

    ``class_names``: ``{label: name}`` or the names of foreground labels 1, 2, ... in order.
    """
    if not rows:
        raise ValueError("no rows to summarize.")
    units = sorted({str(r["unit"]) for r in rows})
    if len(units) != 1:
        raise ValueError(f"rows mix units {units}; summarize mm and px results separately.")
    labels = _class_labels(class_names)
    for c in labels:
        if f"dice_{c}" not in rows[0]:
            raise KeyError(f"class label {c} ({labels[c]}) not in the rows; class_names lists foreground classes.")
    per_class: dict[str, dict[str, Any]] = {}
    for c, name in labels.items():
        entry: dict[str, Any] = {"label": c}
        for metric in METRIC_NAMES:
            entry[f"{metric}_mean"], entry[f"{metric}_std"] = _mean_std([r[f"{metric}_{c}"] for r in rows], ddof)
        entry["n_empty_pred"] = int(sum(bool(r[f"empty_pred_{c}"]) for r in rows))
        entry["n_empty_gt"] = int(sum(bool(r[f"empty_gt_{c}"]) for r in rows))
        per_class[name] = entry
    overall: dict[str, Any] = {}
    for metric in METRIC_NAMES:
        image_means = [float(np.mean([r[f"{metric}_{c}"] for c in labels])) for r in rows]
        overall[f"{metric}_mean"], overall[f"{metric}_std"] = _mean_std(image_means, ddof)
    overall["n_empty_pred"] = sum(e["n_empty_pred"] for e in per_class.values())
    overall["n_empty_gt"] = sum(e["n_empty_gt"] for e in per_class.values())
    return {
        "n_images": len(rows),
        "unit": units[0],
        "std_ddof": ddof,
        "classes": per_class,
        "overall": overall,
        "policy": EMPTY_POLICY,
    }


def summary_markdown(summary: Mapping[str, Any], digits: int = 3) -> str:
    """A Markdown table ``mean ± std`` per class and over classes, with unit, counts and policy."""
    unit = summary["unit"]
    header = f"| Class | Dice | HD95 ({unit}) | ASD ({unit}) | HD95 MONAI ({unit}) | Empty pred. | Empty GT |"
    lines = [header, "|---|---|---|---|---|---|---|"]

    def fmt(entry: Mapping[str, Any], metric: str) -> str:
        return f"{entry[f'{metric}_mean']:.{digits}f} ± {entry[f'{metric}_std']:.{digits}f}"

    rows = list(summary["classes"].items()) + [("Mean over classes", summary["overall"])]
    for name, entry in rows:
        cells = [fmt(entry, m) for m in METRIC_NAMES] + [str(entry["n_empty_pred"]), str(entry["n_empty_gt"])]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(
        f"{summary['n_images']} images; mean ± std over images (ddof={summary['std_ddof']}); distances in {unit}. "
        "HD95: 95th percentile of the pooled surface distances of both directions (medpy); "
        "HD95 MONAI: the larger of the two directed 95th percentiles; "
        "ASD: mean of the two directed mean surface distances."
    )
    lines.append("")
    lines.append(summary["policy"])
    return "\n".join(lines) + "\n"


# ------------------------------------------------------- MONAI / Ignite validation metrics


class _EmptyPolicySurfaceMetric(CumulativeIterationMetric):
    """Base: one value per (image, class) of one-hot ``B x C x H x W`` inputs by
    :func:`binary_metrics`, reduced like MONAI's ``HausdorffDistanceMetric``."""

    field: str = ""

    def __init__(
        self,
        include_background: bool = False,
        spacing: SpacingArg | Sequence[SpacingArg] = None,
        reduction: MetricReduction | str = MetricReduction.MEAN,
        get_not_nans: bool = False,
    ) -> None:
        super().__init__()
        self.include_background = include_background
        self.spacing = spacing
        self.reduction = reduction
        self.get_not_nans = get_not_nans

    def _compute_tensor(  # type: ignore[override]
        self, y_pred: torch.Tensor, y: torch.Tensor, **kwargs: Any
    ) -> torch.Tensor:
        """``y_pred``, ``y``: binarised one-hot ``B x C x spatial`` (values > 0.5 are
        foreground); ``spacing`` in kwargs overrides the constructor's. Returns ``B x C'``."""
        if y_pred.ndim < 3:
            raise ValueError("y_pred should have at least three dimensions (B x C x spatial).")
        if y_pred.shape != y.shape:
            raise ValueError(f"y_pred and y should have the same shape, got {y_pred.shape} and {y.shape}.")
        first = 0 if self.include_background else 1
        p = _to_numpy(y_pred[:, first:]) > 0.5
        g = _to_numpy(y[:, first:]) > 0.5
        batch, channels = p.shape[:2]
        spacings = prepare_spacing(spacing=kwargs.get("spacing", self.spacing), batch_size=batch, img_dim=p.ndim - 2)
        out = torch.empty((batch, channels), dtype=torch.float32)
        for b, c in np.ndindex(batch, channels):
            out[b, c] = getattr(binary_metrics(p[b, c], g[b, c], spacings[b], with_monai=False), self.field)
        return out.to(y_pred.device)

    def aggregate(
        self, reduction: MetricReduction | str | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Reduce the buffered ``N x C`` values (``reduction`` as in MONAI)."""
        data = self.get_buffer()
        if not isinstance(data, torch.Tensor):
            raise ValueError("the data to aggregate must be a PyTorch Tensor.")
        f, not_nans = do_metric_reduction(data, reduction or self.reduction)
        return (f, not_nans) if self.get_not_nans else f


class PooledHD95Metric(_EmptyPolicySurfaceMetric):
    """Pooled HD95 ``percentile_95(d(P->G) u d(G->P))`` per image and class, with
    :data:`EMPTY_POLICY` (image-diagonal penalty, never inf/nan). Inputs like MONAI's
    ``HausdorffDistanceMetric``: binarised one-hot ``B x C x H x W``; mm when ``spacing`` is
    given (one ``(sy, sx)``, an isotropic float, or one per image), pixels otherwise."""

    field = "hd95"


class AverageSurfaceDistanceMetric(_EmptyPolicySurfaceMetric):
    """ASD ``(mean d(P->G) + mean d(G->P)) / 2`` per image and class, with
    :data:`EMPTY_POLICY`. Written here because MONAI's ``SurfaceDistanceMetric(symmetric=True)``
    is ``mean(d(P->G) u d(G->P))`` (different when the surfaces differ in size) and gives
    inf/nan for empty masks. Inputs as :class:`PooledHD95Metric`."""

    field = "asd"


class _SurfaceMetricHandler(IgniteMetricHandler):
    """Ignite handler of a :class:`_EmptyPolicySurfaceMetric` (as MONAI's ``HausdorffDistance``
    handler wraps its metric), for ``val_handlers`` / ``key_val_metric`` of a bundle config."""

    metric_class: type[_EmptyPolicySurfaceMetric]

    def __init__(
        self,
        include_background: bool = False,
        spacing: SpacingArg | Sequence[SpacingArg] = None,
        reduction: MetricReduction | str = MetricReduction.MEAN,
        output_transform: Callable = lambda x: x,
        save_details: bool = True,
    ) -> None:
        metric_fn = self.metric_class(include_background=include_background, spacing=spacing, reduction=reduction)
        super().__init__(metric_fn=metric_fn, output_transform=output_transform, save_details=save_details)


class PooledHD95(_SurfaceMetricHandler):
    """Ignite handler of :class:`PooledHD95Metric`."""

    metric_class = PooledHD95Metric


class AverageSurfaceDistance(_SurfaceMetricHandler):
    """Ignite handler of :class:`AverageSurfaceDistanceMetric`."""

    metric_class = AverageSurfaceDistanceMetric


class PolicyMeanDice(IgniteMetricHandler):
    """Mean Dice under :data:`EMPTY_POLICY`: MONAI's ``DiceMetric`` with ``ignore_empty=False``.

    ``DiceMetric(ignore_empty=False)`` gives 1 when prediction and ground truth are both
    empty and 0 when only one is (tested). ``monai.handlers.MeanDice`` does not expose
    ``ignore_empty`` and keeps ``DiceMetric``'s default ``ignore_empty=True``, which makes
    images with an empty ground truth NaN and drops them from the mean (an empty-GT false
    positive then goes unpunished); use this handler where that matters. Where every
    validation image contains every class the two agree.
    """

    def __init__(
        self,
        include_background: bool = False,
        reduction: MetricReduction | str = MetricReduction.MEAN,
        num_classes: int | None = None,
        output_transform: Callable = lambda x: x,
        save_details: bool = True,
    ) -> None:
        metric_fn = DiceMetric(
            include_background=include_background, reduction=reduction, num_classes=num_classes, ignore_empty=False
        )
        super().__init__(metric_fn=metric_fn, output_transform=output_transform, save_details=save_details)


class EmptyPredictions(IgniteMetric):
    """Per foreground class, how many images get an EMPTY prediction of a class their reference
    contains (the structure missed entirely; :data:`EMPTY_POLICY`'s ``empty_pred``), logged beside
    the validation Dice as ``<prefix>_<class name>`` (and ``<prefix>`` for their sum).

    A small structure that the pseudo-labels erase shows here first: its Dice falls a little,
    while its count of missed images rises. Inputs as MONAI's metric handlers: one-hot
    ``(y_pred, y)`` lists of ``C x H x W`` (or batches ``B x C x H x W``). Hand-written as an
    ignite ``Metric`` because MONAI's metric handlers report one number, and this reports one per
    class (ignite flattens the returned mapping into ``engine.state.metrics``).
    """

    def __init__(
        self,
        num_classes: int,
        class_names: Mapping[str, int] | None = None,
        prefix: str = "val_empty_pred",
        output_transform: Callable = lambda x: x,
    ) -> None:
        named = {int(v): str(k) for k, v in (class_names or {}).items()}
        self.keys = {c: f"{prefix}_{named.get(c, f'class_{c}')}" for c in range(1, int(num_classes))}
        self.prefix = prefix
        super().__init__(output_transform=output_transform, metrics_result_mode="flatten")

    def reset(self) -> None:
        self.counts = {c: 0 for c in self.keys}

    def update(self, output: Sequence[Any]) -> None:
        y_pred, y = output
        for pred, ref in zip(_images(y_pred), _images(y)):
            for c in self.counts:
                self.counts[c] += int(bool(ref[c].any()) and not bool(pred[c].any()))

    def compute(self) -> dict[str, int]:
        out = {self.keys[c]: n for c, n in self.counts.items()}
        out[self.prefix] = sum(self.counts.values())
        return out


def _images(x: Any) -> list[torch.Tensor]:
    """The ``C x H x W`` one-hot images of a batch tensor or a list of them."""
    return [torch.as_tensor(t) for t in (x if isinstance(x, (list, tuple)) else torch.as_tensor(x))]
