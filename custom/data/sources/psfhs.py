"""PSFHS intrapartum ultrasound (pubic symphysis and fetal head), in either layout.

* Release: ``image_mha/NNNNN.mha`` (three-channel greyscale) + ``label_mha/NNNNN.mha`` (0/1/2).
* PNG layout: ``images/NNNNN.png`` + ``labels/NNNNN.png``.

Frames of one video have consecutive ids and are near-duplicates, so the group is a block of
``block_size`` consecutive ids (aligned to multiples of ``block_size``), e.g. ``03700-03749``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

from custom.utils.options import check_option
from ..errors import Problem, SourceLayoutError
from ..readers import read_image_plane, read_mask_plane, strip_suffix
from .base import Discovery, KindOptions, Sample, list_files, option, pair_by_name, relative

__all__ = ["LABELS", "LAYOUTS", "PsfhsOptions", "block_of", "discover_psfhs"]

LABELS = {"background": 0, "pubic symphysis": 1, "fetal head": 2}  # the names MONAI Label and metadata.json use
LAYOUTS = (("image_mha", "label_mha", ".mha"), ("images", "labels", ".png"))


@dataclass(frozen=True)
class PsfhsOptions(KindOptions):
    """``block_size``: consecutive ids per group (one video's frames stay in one split)."""

    block_size: int = option(50, lambda value: check_option("block_size", value, dashes=True))


def block_of(file_id: int, block_size: int) -> str:
    """Group name of an id: its block of ``block_size`` consecutive ids, e.g. ``03700-03749``."""
    start = file_id // block_size * block_size
    return f"{start:05d}-{start + block_size - 1:05d}"


def _layout(source: Path) -> tuple[Path, Path, str]:
    """Image folder, label folder and file suffix of the first layout present in ``source``."""
    for images, labels, suffix in LAYOUTS:
        if (source / images).is_dir() and (source / labels).is_dir():
            return source / images, source / labels, suffix
    expected = " or ".join(f"{i}/ + {l}/" for i, l, _ in LAYOUTS)
    raise SourceLayoutError(f"{source}: no PSFHS layout found: expected {expected}")


def discover_psfhs(source: Path, options: PsfhsOptions) -> Discovery:
    """Scan a PSFHS folder into samples grouped by blocks of consecutive ids."""
    image_dir, label_dir, suffix = _layout(source)
    pairs, problems = pair_by_name(
        list_files(image_dir, [suffix]),
        list_files(label_dir, [suffix]),
        source,
        expected_mask=lambda p: relative(label_dir / p.name, source),
    )
    samples: list[Sample] = []
    for image, mask in pairs:
        name = strip_suffix(image)
        if not name.isdigit():
            message = "file name is not a numeric id; cannot assign its block group"
            problems.append(Problem(relative(image, source), message))
            continue
        samples.append(
            Sample(
                name=name,
                group=block_of(int(name), options.block_size),
                image_file=relative(image, source),
                label_file=relative(mask, source),
                load_image=functools.partial(read_image_plane, image, channels_first=True),
                load_label=functools.partial(read_mask_plane, mask),
            )
        )
    notes = [
        f"layout: PSFHS {image_dir.name}/ + {label_dir.name}/",
        f"groups: blocks of {options.block_size} consecutive ids",
    ]
    return Discovery(samples=samples, problems=problems, labels=dict(LABELS), notes=notes)
