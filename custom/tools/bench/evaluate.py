"""``bench evaluate``: frames/s of the evaluation path on real label maps (metrics, resize
back, report, overlays), optionally beside the previous metrics implementation."""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from custom.tools.bench.timing import progress
from custom.utils.cli import OptionError, parse_bool

__all__ = ["bench_evaluate", "print_evaluate"]


def _reference_evaluate_case(path: str | os.PathLike) -> Callable:
    """``evaluate_case`` of the previous metrics implementation at ``path`` (the repository keeps it
    as ``tests/metrics_reference.py``)."""
    import importlib.util

    if not Path(path).is_file():
        raise OptionError(f"--reference: no file {path} (the previous implementation: tests/metrics_reference.py)")
    spec = importlib.util.spec_from_file_location("_metrics_reference", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module.evaluate_case


def _network_like_prediction(gt_xy, index: int, low_res: int = 64):
    """A prediction with a network's kind of errors from the reference itself: the label map at
    ``low_res`` px (an argmax at the training size) and a shift of a few pixels; brought back
    to the frame's size by :func:`_resize_back`."""
    import numpy as np

    t = torch.as_tensor(np.roll(gt_xy, (index % 5 - 2, index % 7 - 3), axis=(0, 1)), dtype=torch.float32)[None, None]
    return torch.nn.functional.interpolate(t, size=(low_res, low_res), mode="nearest")


def _resize_back(pred_low: torch.Tensor, size: Sequence[int]):
    """The nearest-neighbour resize back to the frame's size of ``custom.evaluation.evaluate.evaluate_network``."""
    import numpy as np

    return torch.nn.functional.interpolate(pred_low, size=tuple(size), mode="nearest")[0, 0].numpy().astype(np.int64)


def bench_evaluate(
    dataset_dir: str | None = None,
    frames: int = 100,
    threads: int = 1,
    num_classes: int = 3,
    n_overlays: int = 3,
    reference: str | None = None,
    quiet: bool = False,
) -> dict:
    """Frames/s of the evaluation path on real label maps (``labels/*.png`` of ``dataset_dir``,
    e.g. the PSFHS source ``../shared/data/psfhs``): reading the reference (``read_label_map``), the resize
    back of a network-like low-resolution prediction, the per-image metrics (Dice, pooled HD95,
    ASD, HD95_monai by ``case_record`` / ``evaluate_case``), the report (``write_report``:
    summary, CSV, Markdown) and the best/worst overlays. ``reference``: the file of the previous
    metrics implementation (``tests/metrics_reference.py``), scored on the same frames, interleaved."""
    import numpy as np

    from custom.evaluation.evaluate import _loader, case_record, overlay_image, read_label_map, write_report

    quiet = parse_bool(quiet, "quiet")
    torch.set_num_threads(int(threads))
    if not dataset_dir:
        raise OptionError("--dataset-dir: give a folder with images/ and labels/ (e.g. ../shared/data/psfhs)")
    root = Path(dataset_dir)
    labels = sorted((root / "labels").glob("*.png")) if (root / "labels").is_dir() else []
    if not labels:
        raise OptionError(
            f"--dataset-dir: no labels/*.png under {root} (expected a PSFHS-style folder with images/ and labels/)"
        )
    if int(frames) < 1:
        raise OptionError(f"--frames: expected a positive number of frames, got {frames!r}")
    labels = labels[: int(frames)]
    reference_case = _reference_evaluate_case(reference) if reference else None
    stage: dict[str, list[float]] = {"load": [], "resize_back": [], "score": [], "score_reference": []}
    rows, preds, shapes = [], {}, set()
    bar = progress(len(labels), "evaluate frames", quiet)
    for i, path in enumerate(labels):
        t0 = time.perf_counter()
        gt = read_label_map(str(path))
        t1 = time.perf_counter()
        pred = _resize_back(_network_like_prediction(gt, i), gt.shape)
        t2 = time.perf_counter()
        row = case_record(pred, gt, int(num_classes), None, path.stem)
        t3 = time.perf_counter()
        stage["load"].append(t1 - t0)
        stage["resize_back"].append(t2 - t1)
        stage["score"].append(t3 - t2)
        if reference_case is not None:
            t = time.perf_counter()
            reference_case(pred.T, gt.T, int(num_classes), None)
            stage["score_reference"].append(time.perf_counter() - t)
        rows.append(row)
        preds[path.stem] = pred
        shapes.add(tuple(gt.shape))
        bar.update(1)
    bar.close()
    with tempfile.TemporaryDirectory(prefix="bench_eval_") as tmp:
        t = time.perf_counter()
        write_report(rows, tmp, [f"class_{c}" for c in range(1, int(num_classes))])
        report_s = time.perf_counter() - t
    ranked = sorted(rows, key=lambda r: r["dice"])
    picks = ranked[: int(n_overlays)] + ranked[::-1][: int(n_overlays)] if n_overlays else []
    t = time.perf_counter()
    for r in picks:
        image_file = root / "images" / f"{r['name']}.png"
        image = (
            np.squeeze(np.asarray(_loader(str(image_file), for_mask=False), dtype=np.float32))
            if image_file.is_file()
            else np.zeros(preds[r["name"]].shape, np.float32)
        )
        if image.ndim == 3:
            image = image[..., :3].mean(-1) if image.shape[-1] in (3, 4) else image.mean(0)
        overlay_image(image.T, read_label_map(str(root / "labels" / f"{r['name']}.png")).T, preds[r["name"]].T)
    overlays_s = time.perf_counter() - t
    n = len(labels)
    per_frame = {k: 1000 * sum(v) / n for k, v in stage.items() if v and k != "score_reference"}
    total_s = sum(sum(stage[k]) for k in ("load", "resize_back", "score")) + report_s + overlays_s
    result: dict[str, Any] = {
        "benchmark": "evaluate",
        "frames": n,
        "frame_shapes": sorted(shapes),
        "score_frames_per_s": n / sum(stage["score"]),
        "path_frames_per_s": n / total_s,
        "ms_per_frame": per_frame,
        "report_s": report_s,
        "overlays": len(picks),
        "overlays_s": overlays_s,
        "mean_dice": float(np.mean([r["dice"] for r in rows])),
        "config": {
            "dataset_dir": str(root),
            "threads": int(threads),
            "num_classes": int(num_classes),
            "metrics": "dice, hd95 (pooled), asd, hd95_monai",
            "prediction": "reference at 64 px, shifted, resized back with nearest",
            "torch": torch.__version__,
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        },
    }
    if stage["score_reference"]:
        result["reference_score_frames_per_s"] = n / sum(stage["score_reference"])
        result["speedup_vs_reference"] = result["score_frames_per_s"] / result["reference_score_frames_per_s"]
    return result


def print_evaluate(r: dict) -> None:
    c = r["config"]
    print(
        f"evaluate: {r['frames']} frames {r['frame_shapes']} of {c['dataset_dir']}, {c['num_classes']} classes "
        f"({c['metrics']}), {c['threads']} thread(s)"
    )
    print(
        f"  scoring: {r['score_frames_per_s']:.1f} frames/s"
        + (
            f"  (previous implementation: {r['reference_score_frames_per_s']:.1f} frames/s, "
            f"x{r['speedup_vs_reference']:.1f})"
            if "reference_score_frames_per_s" in r
            else ""
        )
    )
    print(
        f"  whole path (read reference, resize back, score, report, {r['overlays']} overlays): "
        f"{r['path_frames_per_s']:.1f} frames/s"
    )
    print(
        "  ms/frame: "
        + ", ".join(f"{k} {v:.2f}" for k, v in r["ms_per_frame"].items())
        + f"; report {r['report_s']:.2f} s, overlays {r['overlays_s']:.2f} s"
    )
    print(f"  mean Dice of the synthetic predictions: {r['mean_dice']:.4f}")
