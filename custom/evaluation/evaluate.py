"""Honest evaluation at the original image size: per-image metrics, summaries, overlays, HC.

:class:`SegmentationReport` is an Ignite handler attached to a MONAI ``SupervisedEvaluator``
whose post-processing has already turned the prediction into a label map at the original
size (``AsDiscreted`` + ``Invertd``). For every image it reads the reference mask from its
original file, computes Dice, pooled HD95, ASD and MONAI's HD95 (``custom.evaluation.metrics``) in mm
when the datalist gives the pixel spacing, optionally the head circumference, and at the
end writes ``per_image.csv``, ``summary.json``, ``summary.md`` and overlay PNGs of the
best and worst cases. :func:`evaluate_network` does the same without an engine, for the
comparison command.
"""

from __future__ import annotations

import csv
import logging
import math
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from custom.evaluation.biometry import head_circumference_mm
from custom.evaluation.metrics import evaluate_case, summarize, summary_markdown
from custom.utils.atomic import atomic_open, atomic_write, atomic_write_json, atomic_write_text

__all__ = ["SegmentationReport", "case_record", "write_report", "overlay_image", "evaluate_network"]

logger = logging.getLogger(__name__)


def _as_list(v: Any) -> list:
    if v is None:
        return []
    if isinstance(v, torch.Tensor):
        return v.detach().cpu().reshape(-1).tolist()
    if isinstance(v, (list, tuple)):
        out = []
        for x in v:
            out.extend(_as_list(x))
        return out
    return [v]


def _spacing_of(entry: Mapping) -> tuple[float, float] | None:
    """(row, column) spacing in mm from a datalist entry, whose ``spacing`` is (x, y) as
    ``custom.data prepare`` records it from the image header."""
    values = [float(x) for x in _as_list(entry.get("spacing"))]
    return (values[1], values[0]) if len(values) >= 2 else None


def _filename(x: Any) -> str | None:
    meta = getattr(x, "meta", None)
    if isinstance(meta, Mapping):
        name = meta.get("filename_or_obj")
        return str(name[0] if isinstance(name, (list, tuple)) else name) if name is not None else None
    return x if isinstance(x, str) else None


def _loader(path: str, *, for_mask: bool = True):
    """A reference mask (or, ``for_mask=False``, an image) read as the configs read it
    (:class:`custom.data.transforms.DisplayPILReader`: EXIF orientation applied, palettes resolved)."""
    from custom.data.transforms import load_image

    return load_image(path, for_mask=for_mask)


def _grey(image: np.ndarray) -> np.ndarray:
    """A 2-D grey image (in the reader's (x, y) order) from a grey, RGB(A) or channel-first read."""
    image = np.squeeze(image)
    if image.ndim == 3:
        image = image[..., :3].mean(-1) if image.shape[-1] in (3, 4) else image.mean(0)
    return image


def read_label_map(path: str) -> np.ndarray:
    """A label file as a 2-D integer array in MONAI's (x, y) reading order (as the prediction)."""
    arr = np.asarray(_loader(path))
    arr = np.squeeze(arr)
    if arr.ndim != 2:
        raise ValueError(f"{path}: reference mask is not 2-D (shape {arr.shape})")
    return arr.astype(np.int64)


def case_record(
    pred_xy: np.ndarray,
    gt_xy: np.ndarray,
    num_classes: int,
    spacing_rc: tuple[float, float] | None,
    name: str,
    head_class: int | None = None,
    reference_hc_mm: float | None = None,
) -> dict[str, Any]:
    """Metrics of one image. Arrays are in MONAI's (x, y) order; they are transposed to
    (row, column) so that ``spacing_rc`` (row, column spacing in mm) applies as written."""
    pred, gt = np.asarray(pred_xy).T, np.asarray(gt_xy).T
    if pred.shape != gt.shape:
        raise ValueError(f"{name}: prediction {pred.shape} and reference {gt.shape} differ in size")
    row = {"name": name, **evaluate_case(pred, gt, num_classes, spacing_rc)}
    if head_class is not None:
        px = tuple(spacing_rc) if spacing_rc else 1.0  # (row, column) mm: anisotropic pixels stay so
        hc = head_circumference_mm(pred == head_class, px)
        ref = float(reference_hc_mm) if reference_hc_mm is not None else head_circumference_mm(gt == head_class, px)
        row.update(
            hc=hc,
            hc_ref=ref,
            hc_diff=hc - ref if not (math.isnan(hc) or math.isnan(ref)) else float("nan"),  # < 0: short
            hc_abs_diff=abs(hc - ref) if not (math.isnan(hc) or math.isnan(ref)) else float("nan"),
            hc_unit="mm" if spacing_rc else "px",
            hc_ref_source="csv" if reference_hc_mm is not None else "reference mask",
        )
    return row


def overlay_image(
    image_rc: np.ndarray,
    gt_rc: np.ndarray | None,
    pred_rc: np.ndarray,
    class_names: Mapping[int, str] | Sequence[str] | None = None,
) -> np.ndarray:
    """RGB uint8 of the frame's size: one colour per class, prediction filled, reference
    outlined, and a legend naming the classes (:func:`custom.evaluation.overlays.overlay_image`)."""
    from custom.evaluation.overlays import overlay_image as draw

    return draw(image_rc, gt_rc, pred_rc, class_names)


def head_circumference_summary(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    """The head-circumference error over ``rows`` (those with ``hc_abs_diff``): its mean and
    standard deviation over the images with a head ellipse, their unit, counts and the reference's
    source; ``None`` when no row has one (HC18's challenge score, ``summary["head_circumference"]``)."""
    hc_rows = [r for r in rows if "hc_abs_diff" in r]
    if not hc_rows:
        return None
    diffs = np.array([r["hc_abs_diff"] for r in hc_rows], dtype=float)
    signed = np.array([r.get("hc_diff", float("nan")) for r in hc_rows], dtype=float)
    valid, valid_signed = diffs[~np.isnan(diffs)], signed[~np.isnan(signed)]

    def stat(values: np.ndarray, f) -> float:
        return float(f(values)) if len(values) else float("nan")

    return {
        "unit": hc_rows[0]["hc_unit"],
        "n": int(len(hc_rows)),
        "n_no_ellipse": int(np.isnan(diffs).sum()),
        "abs_diff_mean": stat(valid, np.mean),
        "abs_diff_std": stat(valid, np.std),
        "abs_diff_median": stat(valid, np.median),
        "abs_diff_p90": stat(valid, lambda v: np.percentile(v, 90)),
        "abs_diff_max": stat(valid, np.max),
        # mean signed error (prediction - reference): negative where the heads are drawn too small
        "bias": stat(valid_signed, np.mean),
        "reference": hc_rows[0].get("hc_ref_source"),
        **review_summary(hc_rows),
    }


def review_summary(rows: Sequence[Mapping[str, Any]], limit_mm: float = 10.0) -> dict[str, Any]:
    """How many ``rows`` are marked for review and the HC error of those left unmarked (the
    figures a clinician trusts without a look): ``{}`` when the rows carry no ``review``."""
    flagged = [r for r in rows if "review" in r]
    if not flagged:
        return {}
    marked = np.array([bool(r["review"]) for r in flagged])
    diffs = np.array([r.get("hc_abs_diff", float("nan")) for r in flagged], dtype=float)
    unmarked = diffs[~marked & ~np.isnan(diffs)]
    return {
        "n_marked": int(marked.sum()),
        "share_marked": float(marked.mean()),
        "unmarked_abs_diff_mean": float(unmarked.mean()) if len(unmarked) else float("nan"),
        "unmarked_abs_diff_max": float(unmarked.max()) if len(unmarked) else float("nan"),
        f"unmarked_over_{limit_mm:g}mm": int((unmarked > limit_mm).sum()),
        f"marked_of_over_{limit_mm:g}mm": int((marked & (diffs > limit_mm)).sum()),
    }


def write_report(
    rows: Sequence[Mapping[str, Any]],
    output_dir: str,
    class_names: Mapping[int, str] | Sequence[str],
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """``per_image.csv``, ``summary.json`` and ``summary.md`` in ``output_dir``; returns the summary."""
    if not rows:
        raise ValueError("no image was evaluated: the evaluation list is empty")
    os.makedirs(output_dir, exist_ok=True)
    summary = summarize(list(rows), class_names)
    hc = head_circumference_summary(rows)
    if hc is not None:
        summary["head_circumference"] = hc
    if extra:
        summary.update(extra)
    keys: list[str] = []
    for r in rows:
        keys.extend(k for k in r if k not in keys)
    with atomic_open(os.path.join(output_dir, "per_image.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)
    atomic_write_json(os.path.join(output_dir, "summary.json"), summary, default=float)
    md = summary_markdown(summary)
    if hc is not None:
        h = summary["head_circumference"]
        md += (
            f"\n\nHead circumference absolute difference ({h['unit']}, reference: {h['reference']}): "
            f"{h['abs_diff_mean']:.2f} ± {h['abs_diff_std']:.2f} over {h['n']} images "
            f"({h['n_no_ellipse']} without a head ellipse)\n"
        )
        if "n_marked" in h:
            md += (
                f"Marked for review: {h['n_marked']} of {h['n']} images; head circumference error of the "
                f"unmarked: mean {h['unmarked_abs_diff_mean']:.2f}, max {h['unmarked_abs_diff_max']:.2f} "
                f"({h['unmarked_over_10mm']} unmarked above 10 {h['unit']})\n"
            )
    atomic_write_text(os.path.join(output_dir, "summary.md"), md)
    return summary


class SegmentationReport:
    """Collects per-image metrics (:meth:`add`) and writes the report (:meth:`write`): the per-image
    CSV, summary JSON and Markdown, and overlays of the best and worst cases.

    Args:
        output_dir: where the CSV, JSON, Markdown and ``overlays/`` go.
        num_classes: classes incl. background.
        class_names: foreground names in order, or ``{label: name}``.
        head_class: label of the fetal head for head-circumference biometry (None: off).
            The reference HC is the datalist entry's ``hc_mm`` (HC18's CSV) when present,
            otherwise the ellipse fitted to the reference mask.
        n_overlays: how many best and how many worst cases get an overlay PNG.
        review: thresholds of :func:`custom.evaluation.review.calibrate` (set on the validation list):
            every row with a head gets ``review`` (true/false) and ``review_reason``; without them
            the rows still carry the review scores (what :func:`~custom.evaluation.review.calibrate`
            reads).
        overwrite: replace an existing non-empty ``output_dir``. Without it such a folder is
            refused before the evaluation starts; with it the whole report is written into a
            temporary sibling folder that replaces ``output_dir`` at the end (never a mix of old
            and new files).
    """

    def __init__(
        self,
        output_dir: str,
        num_classes: int,
        class_names: Mapping[int, str] | Sequence[str] | None = None,
        head_class: int | None = None,
        n_overlays: int = 3,
        pred_key: str = "pred",
        image_key: str = "image",
        label_key: str = "label",
        overwrite: bool = False,
        review: Mapping[str, Any] | None = None,
    ) -> None:
        from custom.utils.cli import parse_bool

        self.output_dir, self.num_classes = output_dir, int(num_classes)
        self.overwrite = parse_bool(overwrite, "overwrite")
        self.class_names = class_names or [f"class_{c}" for c in range(1, self.num_classes)]
        self.head_class, self.n_overlays = head_class, int(n_overlays)
        self.pred_key, self.image_key, self.label_key = pred_key, image_key, label_key
        self.rows: list[dict[str, Any]] = []
        self.cases: dict[str, tuple[str, str]] = {}
        self._last_pred: dict[str, np.ndarray] = {}
        self.summary: dict[str, Any] | None = None
        self.review = review

    def add(
        self, pred: np.ndarray, entry: Mapping[str, Any], gt: np.ndarray | None = None, second: np.ndarray | None = None
    ) -> dict[str, Any]:
        """Score one prediction (a label map at the reference mask's size) against the entry's
        ``label`` (:func:`case_record`: in mm where the entry has a ``spacing``; head circumference
        for ``head_class``, the reference being the entry's ``hc_mm`` when present); ``gt``: the
        reference mask when already read; ``second``: the second network's label map (the review's
        ``disagreement``)."""
        image_file, label_file = _filename(entry.get(self.image_key)), _filename(entry.get(self.label_key))
        if label_file is None:
            raise ValueError(f"{image_file}: no reference label to evaluate against")
        name = str(entry.get("name") or os.path.splitext(os.path.basename(image_file or label_file))[0])
        gt = read_label_map(label_file) if gt is None else gt
        hc_ref = _as_list(entry.get("hc_mm"))
        row = case_record(
            pred, gt, self.num_classes, _spacing_of(entry), name, self.head_class, float(hc_ref[0]) if hc_ref else None
        )
        if self.head_class is not None:
            row.update(self._review(pred, second, image_file, row.get("hc") if row.get("hc_unit") == "mm" else None))
        self.rows.append(row)
        self.cases[name] = (image_file, label_file)
        self._last_pred[name] = pred.astype(np.uint8)
        return row

    def _review(
        self, pred: np.ndarray, second: np.ndarray | None, image_file: str | None, hc_mm: float | None
    ) -> dict[str, Any]:
        """The review scores of the predicted head (and ``review``/``review_reason`` with thresholds)."""
        from custom.evaluation.review import review, review_scores, with_size

        image = None
        if image_file is not None and os.path.isfile(image_file):  # skull_outside reads the frame itself
            image = _grey(np.asarray(_loader(image_file, for_mask=False), dtype=np.float32))
            image = image if image.shape == pred.shape else None
        scores = review_scores(
            pred.T == self.head_class,
            None if second is None else second.T == self.head_class,
            None if image is None else image.T,
        )
        if self.review is None:
            return scores
        scores = with_size(scores, hc_mm, self.review)
        marked, reason = review(scores, self.review["thresholds"])
        return {**scores, "review": marked, "review_reason": reason}

    def check_output_dir(self) -> None:
        """Refuse an existing non-empty ``output_dir`` (unless ``overwrite``) or one that is a file."""
        if os.path.exists(self.output_dir) and not os.path.isdir(self.output_dir):
            raise FileExistsError(f"{self.output_dir}: the evaluation output folder is an existing file")
        if os.path.isdir(self.output_dir) and os.listdir(self.output_dir) and not self.overwrite:
            raise FileExistsError(
                f"{self.output_dir}: the evaluation output folder exists and is not empty; "
                "pass --overwrite true to replace it (or choose another --eval_output_dir)"
            )
        from custom.utils.outputs import check_output_folder

        check_output_folder(self.output_dir, "--eval_output_dir", replaced_whole=True)

    def write(self) -> None:
        from pathlib import Path

        from custom.data.staging import staging_directory

        self.check_output_dir()
        final = self.output_dir
        with staging_directory(Path(final), overwrite=self.overwrite) as staging:
            self.output_dir = str(staging)
            try:
                self.summary = write_report(self.rows, self.output_dir, self.class_names)
                self._write_overlays()
            finally:
                self.output_dir = final
        logger.info(
            "evaluation of %d images written to %s: mean Dice %.4f",
            len(self.rows),
            self.output_dir,
            self.summary["overall"]["dice_mean"],
        )

    def _write_overlays(self) -> None:
        from PIL import Image

        if not self.n_overlays or not self.rows:
            return
        folder = os.path.join(self.output_dir, "overlays")
        os.makedirs(folder, exist_ok=True)
        ranked = sorted(self.rows, key=lambda r: r["dice"])
        picks = [("worst", r) for r in ranked[: self.n_overlays]] + [
            ("best", r) for r in ranked[::-1][: self.n_overlays]
        ]
        for tag, row in picks:
            image_file, label_file = self.cases[row["name"]]
            image = _grey(np.asarray(_loader(image_file, for_mask=False), dtype=np.float32))
            rgb = overlay_image(image.T, read_label_map(label_file).T, self._last_pred[row["name"]].T, self.class_names)
            atomic_write(
                os.path.join(folder, f"{tag}_{row['name']}_dice{row['dice']:.3f}.png"),
                lambda tmp: Image.fromarray(rgb).save(tmp, format="PNG"),
            )


def _label_map(logits: torch.Tensor, shape: Sequence[int]) -> np.ndarray:
    """Argmax over the classes (hard labels), resized to ``shape`` with nearest neighbour."""
    pred = logits.max(1, keepdim=True).indices.float()
    return torch.nn.functional.interpolate(pred, size=tuple(shape), mode="nearest")[0, 0].cpu().numpy().astype(np.int64)


def calibrate_review(
    network: torch.nn.Module,
    entries: Sequence[Mapping[str, Any]],
    preprocessing: Callable,
    num_classes: int,
    head_class: int,
    transformer: torch.nn.Module | None = None,
    rate: float = 0.1,
    device: str | torch.device = "cpu",
) -> dict[str, Any]:
    """Review thresholds set on ``entries`` (the validation list, never a test list): the networks'
    review scores there (:func:`evaluate_network`) through :func:`custom.evaluation.review.calibrate`."""
    from custom.evaluation.review import calibrate

    rows, _ = evaluate_network(
        network, entries, preprocessing, num_classes, head_class=head_class, device=device, transformer=transformer
    )
    return calibrate(rows, rate)


def set_review_thresholds(
    ckpt_dir: str,
    network: torch.nn.Module,
    entries: Sequence[Mapping[str, Any]],
    preprocessing: Callable,
    num_classes: int,
    labels: Mapping[str, int] | None,
    transformer: torch.nn.Module | None = None,
    rate: float = 0.1,
    device: str | torch.device = "cpu",
    enabled: bool = True,
) -> str | None:
    """After training: the review thresholds of ``ckpt_dir/model.pt`` set on the validation
    ``entries`` and written beside it (``review.json``, :func:`custom.evaluation.review.write_review_file`).

    ``network`` is a network of the deployed architecture (its weights are replaced by a copy
    loaded from ``model.pt``); ``transformer``: the second network as trained (``disagreement``).
    Nothing is written when no class of ``labels`` names the head, when there is no ``model.pt``,
    or when not ``enabled`` (another rank than 0); returns the path written or ``None``.
    """
    import copy

    from custom.evaluation.review import REVIEW_FILE, head_label, write_review_file
    from custom.training.checkpoint import load_network_weights

    head = head_label(labels)
    weights = os.path.join(ckpt_dir, "model.pt")
    if not enabled or head is None or not os.path.isfile(weights) or not entries:
        return None

    def unwrapped(n: torch.nn.Module | None) -> torch.nn.Module | None:  # DistributedDataParallel's .module
        inner = getattr(n, "module", None)
        return inner if isinstance(inner, torch.nn.Module) else n

    deployed = load_network_weights(copy.deepcopy(unwrapped(network)), weights)
    transformer = unwrapped(transformer)
    try:
        calibration = calibrate_review(
            deployed, entries, preprocessing, num_classes, head, transformer=transformer, rate=rate, device=device
        )
    except ValueError as e:  # no head on any validation frame: nothing to set thresholds on
        stale = os.path.join(ckpt_dir, REVIEW_FILE)
        if os.path.exists(stale):
            os.remove(stale)  # thresholds of earlier weights must not stay beside these
        logger.warning("no review thresholds for %s: %s", weights, e)
        return None
    path = write_review_file(ckpt_dir, calibration, head)
    logger.info(
        "review thresholds set on %d validation images (about %.0f%% of such frames marked): %s",
        len(entries),
        100 * calibration["rate"],
        path,
    )
    return path


@torch.no_grad()
def evaluate_network(
    network: torch.nn.Module,
    entries: Sequence[Mapping[str, Any]],
    preprocessing: Callable,
    num_classes: int,
    output_dir: str | None = None,
    class_names=None,
    head_class: int | None = None,
    device: str | torch.device = "cpu",
    n_overlays: int = 0,
    overwrite: bool = False,
    progress: bool = False,
    transformer: torch.nn.Module | None = None,
    review: Mapping[str, Any] | None = None,
) -> tuple[list[dict], dict | None]:
    """Evaluate ``network`` on datalist ``entries`` at the original size: the one evaluation path
    (``evaluate.yaml``, ``custom.tools.compare``, the GPU check).

    ``preprocessing`` is the bundle config's own deterministic transforms
    (``Compose(%deterministic_transforms)``: load, grey, scale, resize to the training size),
    applied to ``{"image": path}``; the prediction (argmax at the training size) is resized back
    to the reference mask's size with nearest neighbour and scored by :func:`case_record`
    (in mm where the entry has a ``spacing``; head circumference error for ``head_class``).
    With ``output_dir`` the report is written there (:class:`SegmentationReport`; an existing
    non-empty folder is refused before anything is computed unless ``overwrite``).
    With ``head_class`` every row carries the review scores of :mod:`custom.evaluation.review`
    (``transformer``: the second network of a two-network method, for ``disagreement``) and, with
    ``review`` thresholds (:func:`calibrate_review`), the ``review`` flag and its reason.
    """
    report = SegmentationReport(
        output_dir or "",
        num_classes,
        class_names,
        head_class,
        n_overlays=n_overlays,
        overwrite=overwrite,
        review=review,
    )
    if output_dir:
        report.check_output_dir()
    network = network.to(device).eval()
    networks = [network] if transformer is None or head_class is None else [network, transformer.to(device).eval()]
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(entries), desc="evaluating", unit="image", leave=False, dynamic_ncols=True)
    for entry in entries:
        x = torch.as_tensor(preprocessing({"image": entry["image"]})["image"]).float()[None].to(device)
        gt = read_label_map(entry["label"])
        preds = [_label_map(n(x), gt.shape) for n in networks]
        report.add(preds[0], entry, gt, preds[1] if len(preds) > 1 else None)
        if bar is not None:
            bar.update()
    if bar is not None:
        bar.close()
    if output_dir:
        report.write()
    return report.rows, report.summary
