"""HC18 fetal head circumference data, in either layout.

* Challenge release: ``NNN_HC.png`` + ``NNN_HC_Annotation.png`` (ellipse outlines) in one folder
  (``training_set/`` or the source itself) and ``training_set_pixel_size_and_HC.csv``
  (``filename,pixel size(mm),head circumference (mm)``). Outlines are filled (``outlines.py``).
* Filled layout: ``images/NNN_HC.png``, ``labels/NNN_HC.png`` (0/1; 0/255 is accepted) and a CSV
  with the same columns (e.g. ``pixel_size_and_hc.csv``).

Group = subject id, the leading digits: ``010_2HC.png`` is the second image of subject 010.
"""

from __future__ import annotations

import csv
import functools
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..errors import Problem, SourceLayoutError
from ..outlines import fill_outline
from ..readers import Plane, read_image_plane, read_mask_plane, read_raw, strip_suffix, to_class_ids
from .base import Discovery, KindOptions, Sample, list_files, pair_by_name, relative

__all__ = ["LABELS", "subject_of", "read_pixel_size_csv", "discover_hc18", "load_filled_outline"]

LABELS = {"background": 0, "fetal head": 1}  # the name MONAI Label and metadata.json use
ANNOTATION_SUFFIX = "_Annotation"
FILLED_VALUE_MAP = {1: 1, 255: 1}  # filled masks saved as 0/255 become 0/1
NOTE_FILLED = "HC18 outline filled"
NOTE_FITTED = "HC18 outline open (e.g. cut by the border): ellipse fitted"
_SUBJECT = re.compile(r"^(\d+)_")
PixelRow = tuple[float, float | None]  # (pixel size mm, head circumference mm if given)


def subject_of(name: str) -> str:
    """Subject id of an HC18 file name: the digits before the first underscore (else the name)."""
    match = _SUBJECT.match(name)
    return match.group(1) if match else name


def _column(header: list[str], *words: str) -> str | None:
    """The header field that contains all ``words`` (case-insensitive), if any."""
    for name in header:
        if all(word in name.lower() for word in words):
            return name
    return None


def read_pixel_size_csv(path: Path, root: Path) -> tuple[dict[str, PixelRow], list[Problem]]:
    """``filename -> (pixel size mm, head circumference mm or None)`` from an HC18 CSV."""
    table: dict[str, PixelRow] = {}
    problems: list[Problem] = []
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        header = list(reader.fieldnames or [])
        size_column, hc_column = _column(header, "pixel size"), _column(header, "circumference")
        name_column = _column(header, "filename") or (header[0] if header else None)
        if size_column is None or name_column is None:
            return {}, [Problem(relative(path, root), f"no 'filename' and 'pixel size' columns in header {header}")]
        for line, row in enumerate(reader, start=2):
            try:
                size = float(row[size_column])
                hc = float(row[hc_column]) if hc_column and row.get(hc_column) not in (None, "") else None
            except (TypeError, ValueError):
                message = f"line {line}: cannot parse pixel size / circumference {row}"
                problems.append(Problem(relative(path, root), message))
                continue
            table[row[name_column].strip()] = (size, hc)
    return table, problems


def _pixel_size_tables(folders: list[Path], root: Path) -> tuple[dict[str, PixelRow], list[Problem], list[str]]:
    """Merge every CSV with a 'pixel size' column found in ``folders``."""
    table: dict[str, PixelRow] = {}
    problems: list[Problem] = []
    used: list[str] = []
    for folder in dict.fromkeys(folders):
        for path in sorted(folder.glob("*.csv")):
            with path.open(encoding="utf-8-sig") as handle:
                if "pixel size" not in handle.readline().lower():
                    continue
            rows, row_problems = read_pixel_size_csv(path, root)
            table.update(rows)
            problems.extend(row_problems)
            used.append(relative(path, root))
    return table, problems, used


def load_filled_outline(path: Path) -> Plane:
    """Read an HC18 annotation (ellipse outline) and fill it into a 0/1 head mask."""
    outline, _ = to_class_ids(read_raw(path, for_mask=True))
    filled, fitted = fill_outline(outline)
    return Plane(array=filled.astype(np.uint8), notes=(NOTE_FITTED if fitted else NOTE_FILLED,))


def _load_filled_mask(path: Path) -> Plane:
    """Read an already filled HC18 mask (0/1 or 0/255) as 0/1."""
    return read_mask_plane(path, value_map=FILLED_VALUE_MAP)


def _outline_folder(source: Path) -> Path:
    """The folder holding ``*_Annotation.png``: ``training_set/`` or the source itself."""
    for folder in (source / "training_set", source):
        if folder.is_dir() and any(folder.glob(f"*{ANNOTATION_SUFFIX}.png")):
            return folder
    raise SourceLayoutError(
        f"{source}: no HC18 layout found: expected images/ + labels/ (filled masks) or "
        f"NNN_HC.png + NNN_HC{ANNOTATION_SUFFIX}.png (outlines) in it or in training_set/"
    )


def discover_hc18(source: Path, options: KindOptions) -> Discovery:
    """Scan an HC18 folder (challenge release or filled layout) into samples."""
    filled_layout = (source / "images").is_dir() and (source / "labels").is_dir()
    if filled_layout:
        images = list_files(source / "images", [".png"])
        masks = list_files(source / "labels", [".png"])
        pairs, problems = pair_by_name(images, masks, source, expected_mask=lambda p: f"labels/{p.name}")
        csv_folders = [source]
        load_label = _load_filled_mask
        layout = "HC18 filled masks (images/ + labels/)"
    else:
        folder = _outline_folder(source)
        files = list_files(folder, [".png"])
        annotations = [p for p in files if strip_suffix(p).endswith(ANNOTATION_SUFFIX)]
        images = [p for p in files if not strip_suffix(p).endswith(ANNOTATION_SUFFIX)]
        pairs, problems = pair_by_name(
            images,
            annotations,
            source,
            mask_key=lambda p: strip_suffix(p)[: -len(ANNOTATION_SUFFIX)],
            expected_mask=lambda p: relative(p.with_name(f"{strip_suffix(p)}{ANNOTATION_SUFFIX}.png"), source),
        )
        csv_folders = [source, folder]
        load_label = load_filled_outline
        layout = "HC18 challenge release (ellipse outlines, filled here)"
    table, csv_problems, csv_files = _pixel_size_tables(csv_folders, source)
    problems.extend(csv_problems)
    samples = [_sample(image, mask, source, table, load_label) for image, mask in pairs]
    notes = [f"layout: {layout}"]
    if csv_files:
        notes.append(f"pixel sizes from {', '.join(csv_files)}")
    else:
        notes.append("no pixel-size CSV found: spacing unknown")
    return Discovery(samples=samples, problems=problems, labels=dict(LABELS), notes=notes)


def _sample(
    image: Path, mask: Path, source: Path, table: dict[str, PixelRow], load_label: Callable[[Path], Plane]
) -> Sample:
    """One HC18 sample with its subject group, pixel size and reference circumference."""
    size, hc = table.get(image.name, (None, None))
    spacing = (size, size) if size else None
    extra = {"hc_mm": hc} if hc is not None else {}
    return Sample(
        name=strip_suffix(image),
        group=subject_of(image.name),
        image_file=relative(image, source),
        label_file=relative(mask, source),
        load_image=functools.partial(read_image_plane, image, spacing=spacing),
        load_label=functools.partial(load_label, mask),
        extra=extra,
    )
