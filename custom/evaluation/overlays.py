"""Pictures of the outputs: overlays with one colour per class and a legend, and per-pixel maps
brought back from the network's input size to the frame's size."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["CLASS_COLOURS", "class_colour", "overlay_image", "at_frame_size"]

# one colour per foreground class (label 1, 2, ...), distinguishable on a grey ultrasound frame
CLASS_COLOURS = ((255, 215, 0), (0, 200, 255), (255, 64, 160), (120, 255, 60), (255, 140, 0), (170, 110, 255))
FILL_ALPHA = 0.35


def class_colour(label: int) -> tuple[int, int, int]:
    """The RGB colour of foreground ``label`` (1-based; the palette repeats after six classes)."""
    return CLASS_COLOURS[(int(label) - 1) % len(CLASS_COLOURS)]


def _names(class_names: Mapping[int, str] | Sequence[str] | None, labels: Sequence[int]) -> dict[int, str]:
    if isinstance(class_names, Mapping):
        given = {int(k): str(v) for k, v in class_names.items()}
    else:
        given = {i + 1: str(n) for i, n in enumerate(class_names or ())}
    return {c: given.get(c, f"class {c}") for c in labels}


def overlay_image(
    image_rc: np.ndarray,
    gt_rc: np.ndarray | None,
    pred_rc: np.ndarray,
    class_names: Mapping[int, str] | Sequence[str] | None = None,
    legend: bool = True,
) -> np.ndarray:
    """RGB uint8 of the frame's size: the image in grey, each class's prediction filled
    translucent in the class's colour, its reference outlined in the same colour, and (with
    ``legend``) a key in the top-left corner naming each class's colour and what fill and
    outline mean. ``gt_rc`` None or empty: prediction only (inference)."""
    from skimage.segmentation import find_boundaries

    img = np.asarray(image_rc, dtype=np.float32)
    lo, hi = float(img.min()), float(img.max())
    grey = ((img - lo) / (hi - lo + 1e-8) * 255).astype(np.uint8)
    rgb = np.stack([grey] * 3, axis=-1).astype(np.float32)
    pred = np.asarray(pred_rc)
    gt = np.zeros_like(pred) if gt_rc is None else np.asarray(gt_rc)
    labels = sorted(int(c) for c in set(np.unique(pred)) | set(np.unique(gt)) if c > 0)
    for c in labels:
        colour = np.asarray(class_colour(c), np.float32)
        fill = pred == c
        rgb[fill] = (1 - FILL_ALPHA) * rgb[fill] + FILL_ALPHA * colour
    for c in labels:
        rgb[find_boundaries(gt == c, mode="inner") & (gt == c)] = class_colour(c)
    out = np.clip(rgb, 0, 255).astype(np.uint8)
    if legend and labels:
        out = _draw_legend(out, _names(class_names, labels), with_reference=bool((gt > 0).any()))
    return out


def _draw_legend(rgb: np.ndarray, names: Mapping[int, str], with_reference: bool) -> np.ndarray:
    from PIL import Image, ImageDraw, ImageFont

    picture = Image.fromarray(rgb)
    draw = ImageDraw.Draw(picture, "RGBA")
    font = ImageFont.load_default()
    lines = [(c, name) for c, name in names.items()]
    key = "fill: prediction, outline: reference" if with_reference else "fill: prediction"
    line_h = 12
    width = max([draw.textlength(key, font=font)] + [draw.textlength(n, font=font) + 14 for _, n in lines]) + 6
    draw.rectangle([0, 0, width, line_h * (len(lines) + 1) + 4], fill=(0, 0, 0, 160))
    for i, (c, name) in enumerate(lines):
        y = 2 + i * line_h
        draw.rectangle([3, y + 1, 11, y + 9], fill=class_colour(c))
        draw.text((15, y), name, fill=(255, 255, 255), font=font)
    draw.text((3, 2 + len(lines) * line_h), key, fill=(255, 255, 255), font=font)
    return np.asarray(picture)


def _frame_shapes(image: Any, n: int) -> list[tuple[int, ...] | None]:
    """Each batch item's spatial shape as its reader loaded it (``spatial_shape`` of the meta)."""
    import torch

    meta = getattr(image, "meta", None)
    value = meta.get("spatial_shape") if isinstance(meta, Mapping) else None
    if value is None:
        return [None] * n
    if isinstance(value, (list, tuple)) and value and isinstance(value[0], torch.Tensor):
        value = torch.stack([torch.as_tensor(v) for v in value], -1)  # list of per-dimension batches
    shapes = np.asarray(torch.as_tensor(value)).astype(np.int64).reshape(-1 if n > 1 else 1, -1)
    if len(shapes) != n:
        return [None] * n
    return [tuple(int(d) for d in s) for s in shapes]


def at_frame_size(maps: Any, image: Any) -> list[np.ndarray]:
    """Per-pixel maps ``(B, *network size)`` resized (bilinear) to each frame's own size, read
    from the batch image's ``spatial_shape`` meta; a map whose frame size is unknown stays."""
    import torch
    import torch.nn.functional as F

    maps = torch.as_tensor(maps).detach().float().cpu()
    out = []
    for m, shape in zip(maps, _frame_shapes(image, len(maps))):
        if shape is not None:
            shape = tuple(shape[: m.ndim]) if len(shape) >= m.ndim and all(d == 1 for d in shape[m.ndim :]) else None
        if shape is not None and shape != tuple(m.shape):
            m = F.interpolate(m[None, None], size=shape, mode="bilinear", align_corners=False)[0, 0]
        out.append(m.numpy())
    return out
