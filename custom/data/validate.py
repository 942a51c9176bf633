"""Validation of every sample before anything is written.

Checks: each image and mask readable (not missing, not empty, decodable), same size, label values
within the declared classes, no duplicate output names; after splitting, no group in two splits.
Every problem names its file.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import Problem, ReadError
from .readers import Plane, present_values
from .sources.base import Sample

__all__ = ["CheckedSample", "check_sample", "check_names", "check_groups_disjoint", "validate_samples"]


@dataclass(frozen=True)
class CheckedSample:
    """A sample that passed validation, with what the summary and the writer need to know."""

    sample: Sample
    width: int
    height: int
    spacing: tuple[float, float] | None
    class_pixels: tuple[int, ...]  # pixel count per class id
    notes: tuple[str, ...]  # conversions applied to the image and the mask
    image_copy_from: Path | None  # source bytes equal the output: copy instead of re-encoding
    label_copy_from: Path | None


def _load(sample_file: str, loader) -> tuple[Plane | None, Problem | None]:
    """Call a loader; a ``ReadError`` becomes a problem naming the file."""
    try:
        return loader(), None
    except ReadError as error:
        return None, Problem(sample_file, str(error))


def _size(array: np.ndarray) -> str:
    """``WIDTHxHEIGHT`` of a (rows, cols) array."""
    return f"{array.shape[1]}x{array.shape[0]}" if array.ndim == 2 else "x".join(map(str, array.shape))


def _rotation_hint(notes) -> str:
    """Why an image and its mask are each other's transpose, where the image was rotated for display."""
    rotated = [n for n in notes if n.startswith("EXIF orientation") and n.split()[2] in ("5", "6", "7", "8")]
    if not rotated:
        return ""
    return (
        f" (the image's EXIF Orientation {rotated[0].split()[2]} rotates it by 90 degrees for display, and it is "
        "read as displayed: draw the mask on the displayed image)"
    )


def check_sample(sample: Sample, num_classes: int) -> tuple[CheckedSample | None, list[Problem]]:
    """Read one pair and check it; returns the checked sample or the problems found (all of them)."""
    image, image_problem = _load(sample.image_file, sample.load_image)
    label, label_problem = _load(sample.label_file, sample.load_label)
    problems = [p for p in (image_problem, label_problem) if p is not None]
    if image is None or label is None:
        return None, problems
    if image.array.shape != label.array.shape:
        message = f"size {_size(label.array)} differs from image {_size(image.array)}"
        if label.array.shape == image.array.shape[::-1]:
            message += _rotation_hint(image.notes)
        problems.append(Problem(sample.label_file, message))
    values = present_values(label.array)
    outside = [int(v) for v in values if v < 0 or v >= num_classes]
    if outside:
        message = f"label values {outside} outside the declared classes 0..{num_classes - 1}"
        if 255 in outside:
            message += " (for 0/255 masks pass --label-map 255:1)"
        problems.append(Problem(sample.label_file, message))
    if problems:
        return None, problems
    counts = np.bincount(label.array.ravel(), minlength=num_classes)
    checked = CheckedSample(
        sample=sample,
        width=int(image.array.shape[1]),
        height=int(image.array.shape[0]),
        spacing=image.spacing,
        class_pixels=tuple(int(c) for c in counts),
        notes=image.notes + label.notes,
        image_copy_from=image.copy_from,
        label_copy_from=label.copy_from,
    )
    return checked, []


def check_names(samples: Iterable[Sample]) -> list[Problem]:
    """A problem for every sample whose output name (case-insensitively) is not unique."""
    by_name: dict[str, list[Sample]] = defaultdict(list)
    for sample in samples:
        by_name[sample.name.casefold()].append(sample)
    problems = []
    for same in by_name.values():
        for sample in same if len(same) > 1 else []:
            others = ", ".join(other.image_file for other in same if other is not sample)
            problems.append(Problem(sample.image_file, f"duplicate name '{sample.name}' (also {others})"))
    return problems


def check_groups_disjoint(splits: Mapping[str, Iterable[CheckedSample]]) -> list[Problem]:
    """A problem for every group that appears in more than one split."""
    splits_of_group: dict[str, set[str]] = defaultdict(set)
    for split, members in splits.items():
        for checked in members:
            splits_of_group[checked.sample.group].add(split)
    return [
        Problem(f"group {group}", f"appears in several splits: {', '.join(sorted(names))}")
        for group, names in sorted(splits_of_group.items())
        if len(names) > 1
    ]


def validate_samples(
    samples: list[Sample], num_classes: int, *, progress: bool = True
) -> tuple[list[CheckedSample], list[Problem]]:
    """Check every sample; returns the valid ones and all problems (duplicates are all invalid)."""
    from tqdm.auto import tqdm

    problems = check_names(samples)
    duplicated = {p.file for p in problems}
    checked: list[CheckedSample] = []
    for sample in tqdm(samples, desc="checking", unit="image", disable=not progress):
        result, sample_problems = check_sample(sample, num_classes)
        problems.extend(sample_problems)
        if result is not None and sample.image_file not in duplicated:
            checked.append(result)
    return checked, problems
