"""The summary of a preparation: counts per split, class pixel fractions, sizes, spacing range."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .errors import Problem
from .validate import CheckedSample

__all__ = ["build_summary", "format_summary"]


def _class_fractions(members: Sequence[CheckedSample], labels: Mapping[str, int]) -> dict[str, float]:
    """Share of the pixels of each class over ``members``."""
    counts = np.zeros(max(labels.values()) + 1, np.int64)
    for checked in members:
        counts += np.asarray(checked.class_pixels, np.int64)
    total = max(int(counts.sum()), 1)
    return {name: round(float(counts[class_id]) / total, 6) for name, class_id in labels.items()}


def _spacing_range(members: Sequence[CheckedSample]) -> dict[str, Any]:
    """Min/max of the x and y spacing (mm) and how many images have none."""
    known = np.array([c.spacing for c in members if c.spacing is not None], float).reshape(-1, 2)
    result: dict[str, Any] = {"known": int(len(known)), "unknown": len(members) - int(len(known))}
    if len(known):
        result["x_min_max"] = [float(known[:, 0].min()), float(known[:, 0].max())]
        result["y_min_max"] = [float(known[:, 1].min()), float(known[:, 1].max())]
    return result


def build_summary(
    *,
    kind: str,
    splits: Mapping[str, Sequence[CheckedSample]],
    with_masks: Mapping[str, bool],
    labels: Mapping[str, int],
    skipped: Sequence[Problem],
    notes: Sequence[str],
    out: str,
) -> dict[str, Any]:
    """Summary of the written dataset; class fractions only over splits whose masks were written."""
    everything = [c for members in splits.values() for c in members]
    masked = [c for split, members in splits.items() if with_masks[split] for c in members]
    sizes = Counter(f"{c.width}x{c.height}" for c in everything)
    return {
        "source_kind": kind,
        "out": out,
        "total_images": len(everything),
        "splits": {
            split: {
                "images": len(members),
                "groups": len({c.sample.group for c in members}),
                "masks_written": bool(with_masks[split]),
            }
            for split, members in splits.items()
        },
        "class_pixel_fractions": {
            "all_written_masks": _class_fractions(masked, labels),
            **{split: _class_fractions(m, labels) for split, m in splits.items() if with_masks[split] and m},
        },
        # how many of the training pool's groups (subjects, video blocks, cases) the labelled set spans
        "labeled_groups": {
            "groups": len({c.sample.group for c in splits.get("training", ())}),
            "pool_groups": len({c.sample.group for s in ("training", "unlabeled") for c in splits.get(s, ())}),
        },
        "image_sizes_wxh": dict(sizes.most_common()),
        "spacing_mm": _spacing_range(everything),
        "conversions": dict(Counter(note for c in everything for note in c.notes).most_common()),
        "skipped": len(skipped),
        "notes": list(notes),
    }


def format_summary(summary: Mapping[str, Any]) -> str:
    """Human-readable form of ``build_summary``'s result."""
    lines = [f"Prepared {summary['total_images']} images ({summary['source_kind']}) in {summary['out']}"]
    for split, counts in summary["splits"].items():
        masks = "" if counts["masks_written"] or not counts["images"] else ", masks hidden"
        lines.append(f"  {split:<11}{counts['images']:>7} images {counts['groups']:>6} groups{masks}")
    span = summary.get("labeled_groups")
    if span and span["pool_groups"]:
        lines.append(f"  labelled images span {span['groups']} of the training pool's {span['pool_groups']} groups")
    fractions = summary["class_pixel_fractions"]["all_written_masks"]
    lines.append("  class pixel fractions: " + ", ".join(f"{k} {v:.4f}" for k, v in fractions.items()))
    sizes = summary["image_sizes_wxh"]
    shown = ", ".join(f"{size} ({n})" for size, n in list(sizes.items())[:5])
    lines.append(f"  image sizes (WxH): {shown}{', ...' if len(sizes) > 5 else ''}")
    spacing = summary["spacing_mm"]
    if spacing["known"]:
        x, y = spacing["x_min_max"], spacing["y_min_max"]
        ranges = f"x {x[0]:.4g}..{x[1]:.4g}, y {y[0]:.4g}..{y[1]:.4g}"
        lines.append(f"  spacing (mm): {ranges}; unknown for {spacing['unknown']}")
    else:
        lines.append("  spacing (mm): unknown")
    for note, count in summary["conversions"].items():
        lines.append(f"  {note}: {count}")
    for note in summary["notes"]:
        lines.append(f"  {note}")
    if summary["skipped"]:
        lines.append(f"  skipped: {summary['skipped']} problem(s), see skipped.json")
    return "\n".join(lines)
