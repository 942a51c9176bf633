"""Any folder of 2-D images with masks matched by name.

``<source>/<images_subdir>/x.<ext>`` pairs with ``<source>/<labels_subdir>/x<label_suffix>.<ext>``
(PNG/JPEG/BMP/TIFF/NIfTI/DICOM/MetaImage/NRRD; image and mask formats may differ). Raw mask
values are mapped through ``label_map`` (values not in it must be 0). The class count comes from
``num_classes``, else from the label map, else 2 (binary). Group = file stem, or the first
group (else the whole match) of ``group_regex`` searched in the stem. NIfTI images are written
as NIfTI (with their spacing), everything else as PNG.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from custom.utils.cli import OptionError
from custom.utils.options import check_option
from ..errors import Problem, SourceLayoutError
from ..options import parse_label_map, parse_names
from ..readers import NIFTI_SUFFIXES, full_suffix, read_image_plane, read_mask_plane, strip_suffix
from .base import Discovery, KindOptions, Sample, list_files, option, pair_by_name, relative, unusable_entries

__all__ = ["FolderOptions", "class_labels", "discover_folder"]


def _text_or_none(value: object) -> str | None:
    return None if value is None or value == "" else str(value)


@dataclass(frozen=True)
class FolderOptions(KindOptions):
    """Where images and masks are (``images_subdir``, ``labels_subdir``; a mask's stem is the image's
    plus ``label_suffix``), what the mask values mean (``label_map``, ``num_classes``,
    ``class_names``) and how files are grouped (``group_regex``)."""

    images_subdir: str = option("images", str)
    labels_subdir: str = option("labels", str)
    label_suffix: str = option("", lambda value: str(value or ""))
    label_map: Mapping[int, int] | None = option(None, parse_label_map)
    num_classes: int | None = option(
        None, lambda value: None if value is None else check_option("num_classes", value, dashes=True))
    class_names: tuple[str, ...] | None = option(None, parse_names)
    group_regex: str | None = option(None, _text_or_none)


def class_labels(options: FolderOptions) -> dict[str, int]:
    """Class name -> id for the folder kind, from ``num_classes``/``label_map``/``class_names``."""
    if options.num_classes is not None:
        num_classes = int(options.num_classes)
    elif options.label_map:
        num_classes = max(options.label_map.values()) + 1
    elif options.class_names:
        num_classes = len(options.class_names)
    else:
        num_classes = 2
    if not 2 <= num_classes <= 256:
        from custom.utils.cli import OptionError

        raise OptionError(f"--num-classes {num_classes}: must be within 2..256 (background included)")
    if options.label_map and max(options.label_map.values()) >= num_classes:
        raise ValueError(f"--label-map {dict(options.label_map)} maps to class ids beyond --num-classes {num_classes}")
    names = options.class_names or ("background",) + tuple(f"class_{i}" for i in range(1, num_classes))
    if len(names) != num_classes:
        raise ValueError(f"--class-names {','.join(names)}: {len(names)} names for {num_classes} classes")
    return {name: class_id for class_id, name in enumerate(names)}


def _group_of(stem: str, pattern: re.Pattern[str] | None) -> str | None:
    """Group of a file stem: the regex's first group (or whole match), the stem without a regex."""
    if pattern is None:
        return stem
    match = pattern.search(stem)
    if match is None:
        return None
    return match.group(1) if match.groups() else match.group(0)


def discover_folder(source: Path, options: FolderOptions) -> Discovery:
    """Scan ``images_subdir``/``labels_subdir`` of ``source`` into samples."""
    image_dir, label_dir = source / options.images_subdir, source / options.labels_subdir
    missing = [d for d in (image_dir, label_dir) if not d.is_dir()]
    if missing:
        folders = ", ".join(map(str, missing))
        raise SourceLayoutError(f"{folders}: folder not found (see --images-subdir/--labels-subdir)")
    labels = class_labels(options)
    suffix = options.label_suffix
    pairs, problems = pair_by_name(
        list_files(image_dir),
        list_files(label_dir),
        source,
        image_key=lambda p: strip_suffix(p) + suffix,
        expected_mask=lambda p: f"{relative(label_dir, source)}/{strip_suffix(p)}{suffix}.*",
    )
    try:
        pattern = re.compile(options.group_regex) if options.group_regex else None
    except re.error as e:
        raise OptionError(f"--group-regex {options.group_regex!r}: not a valid regular expression ({e})") from e
    problems = unusable_entries(image_dir, source) + unusable_entries(label_dir, source) + problems
    samples: list[Sample] = []
    for image, mask in pairs:
        group = _group_of(strip_suffix(image), pattern)
        if group is None:
            message = f"name does not match --group-regex {options.group_regex!r}"
            problems.append(Problem(relative(image, source), message))
            continue
        samples.append(
            Sample(
                name=strip_suffix(image),
                group=group,
                image_file=relative(image, source),
                label_file=relative(mask, source),
                load_image=functools.partial(read_image_plane, image),
                load_label=functools.partial(read_mask_plane, mask, value_map=options.label_map),
                output_suffix=".nii.gz" if full_suffix(image) in NIFTI_SUFFIXES else ".png",
            )
        )
    notes = [f"layout: folder {relative(image_dir, source)}/ + {relative(label_dir, source)}/"]
    if options.label_map:
        notes.append(f"label map (raw value -> class): {dict(options.label_map)}")
    return Discovery(samples=samples, problems=problems, labels=labels, notes=notes)
