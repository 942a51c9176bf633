"""Writing checked samples as files (PNG, or NIfTI for NIfTI inputs) and their datalist entries."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np

from .readers import Plane
from .validate import CheckedSample

__all__ = ["PNG_COMPRESS_LEVEL", "write_png", "write_nifti", "write_plane", "write_sample"]

# zlib level 3: files within a few per cent of level 6, encoded several times faster.
PNG_COMPRESS_LEVEL = 3


def write_png(array: np.ndarray, path: Path) -> None:
    """Write a 2-D uint8 array as a one-channel 8-bit PNG."""
    from PIL import Image

    Image.fromarray(np.ascontiguousarray(array, dtype=np.uint8), mode="L").save(
        path, format="PNG", compress_level=PNG_COMPRESS_LEVEL
    )


def write_nifti(array: np.ndarray, spacing: tuple[float, float] | None, path: Path) -> None:
    """Write a 2-D uint8 array as NIfTI with its (x, y) spacing in mm (1 mm where unknown)."""
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(np.ascontiguousarray(array, dtype=np.uint8))
    image.SetSpacing(tuple(float(s) for s in (spacing or (1.0, 1.0))))
    sitk.WriteImage(image, str(path), True)


def write_plane(plane: Plane, path: Path, spacing: tuple[float, float] | None) -> None:
    """Write one plane to ``path`` (format by suffix), copying the source file when it is identical."""
    if path.suffix == ".png" and plane.copy_from is not None:
        shutil.copyfile(plane.copy_from, path)
    elif path.suffix == ".png":
        write_png(plane.array, path)
    else:
        write_nifti(plane.array, spacing, path)


def _write_part(copy_from: Path | None, loader, path: Path, spacing: tuple[float, float] | None) -> None:
    """Copy the file when validation found it can be copied as is, else read and encode it."""
    if copy_from is not None and path.suffix == ".png":
        shutil.copyfile(copy_from, path)
    else:
        write_plane(loader(), path, spacing)


def write_sample(checked: CheckedSample, out_dir: Path, *, with_label: bool) -> dict[str, Any]:
    """Write the image (and mask if ``with_label``) under ``out_dir``; return the datalist entry."""
    sample = checked.sample
    file_name = f"{sample.name}{sample.output_suffix}"
    entry: dict[str, Any] = {"image": f"images/{file_name}"}
    _write_part(checked.image_copy_from, sample.load_image, out_dir / entry["image"], checked.spacing)
    if with_label:
        entry["label"] = f"labels/{file_name}"
        _write_part(checked.label_copy_from, sample.load_label, out_dir / entry["label"], checked.spacing)
    entry["group"] = sample.group
    if checked.spacing is not None:
        entry["spacing"] = [float(s) for s in checked.spacing]
    entry["name"] = sample.name
    entry.update(sample.extra)
    return entry
