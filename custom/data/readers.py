"""Reading 2-D images and masks of any supported format into numpy arrays.

PNG/JPEG/BMP/TIFF are read with Pillow; NIfTI, DICOM, MetaImage (.mha/.mhd) and NRRD with
SimpleITK. Arrays are in (rows, cols) order for every format; spacing is (x, y) in mm.

Images become one-channel uint8: 3-channel greyscale keeps one channel, colour is converted
to luminance, and data outside 0..255 (16-bit, float) is rescaled per image (min to max).
Masks become integer class ids and are never interpolated or rescaled.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import ReadError

__all__ = [
    "PIL_SUFFIXES",
    "SITK_SUFFIXES",
    "NIFTI_SUFFIXES",
    "SUPPORTED_SUFFIXES",
    "RawArray",
    "Plane",
    "full_suffix",
    "strip_suffix",
    "read_raw",
    "display_form",
    "exif_orientation",
    "to_grey_uint8",
    "to_class_ids",
    "map_values",
    "present_values",
    "read_image_plane",
    "read_mask_plane",
]

PIL_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp"})
NIFTI_SUFFIXES = frozenset({".nii", ".nii.gz"})
SITK_SUFFIXES = NIFTI_SUFFIXES | {".dcm", ".dicom", ".mha", ".mhd", ".nrrd"}
SUPPORTED_SUFFIXES = PIL_SUFFIXES | SITK_SUFFIXES

NOTE_RGB = "colour image converted to greyscale (luminance)"
NOTE_CHANNELS = "multi-channel greyscale image reduced to one channel"
NOTE_RESCALED = "16-bit/float image rescaled to 8 bit (per-image min to max)"
NOTE_CONSTANT = "constant image (all pixels equal) written as zeros"
NOTE_EXIF = "EXIF orientation {orientation} applied (read as displayed)"


@dataclass(frozen=True)
class RawArray:
    """A decoded file: ``array`` is (rows, cols), (rows, cols, channels) or (slices, rows, cols)."""

    array: np.ndarray
    spacing: tuple[float, float] | None = None
    plain_png: bool = False  # an 8-bit one-channel PNG: its bytes can be copied to the output as is
    orientation: int = 1  # the EXIF orientation applied when reading (1: none)


@dataclass(frozen=True)
class Plane:
    """A 2-D image (uint8) or mask (integer class ids) ready to be checked and written."""

    array: np.ndarray
    spacing: tuple[float, float] | None = None
    notes: tuple[str, ...] = field(default=())
    copy_from: Path | None = None  # a file whose bytes are exactly the encoded output, if any


def full_suffix(path: Path | str) -> str:
    """Lower-case suffix, treating ``.nii.gz`` as one suffix."""
    name = Path(path).name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else Path(name).suffix


def strip_suffix(path: Path | str) -> str:
    """File name without its (full) suffix: ``x.nii.gz`` -> ``x``."""
    name = Path(path).name
    return name[: len(name) - len(full_suffix(name))]


# largest image accepted, checked from the header before any pixel is decoded (ultrasound frames
# are well below 1 megapixel; a corrupt or hostile header can claim gigapixels)
MAX_PIXELS = 64_000_000


def header_pixel_count(path: Path) -> int | None:
    """Pixels (times channels/slices) a file's header declares, read without decoding pixels; None if unknown."""
    suffix = full_suffix(path)
    if suffix in NIFTI_SUFFIXES:
        import nibabel as nib

        return int(np.prod(nib.load(str(path)).shape, dtype=np.int64))
    if suffix in PIL_SUFFIXES:
        from PIL import Image

        with Image.open(path) as image:
            return int(image.size[0]) * int(image.size[1])
    if suffix in (".dcm", ".dicom"):
        import pydicom

        ds = pydicom.dcmread(str(path), stop_before_pixels=True)
        return int(ds.Rows) * int(ds.Columns) * int(getattr(ds, "NumberOfFrames", 1) or 1)
    if suffix in SITK_SUFFIXES:
        import SimpleITK as sitk

        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        reader.ReadImageInformation()
        return int(np.prod(reader.GetSize(), dtype=np.int64))
    return None


def check_header_size(path: Path, max_pixels: int | None = None) -> None:
    """``ReadError`` when the header declares more than ``max_pixels`` (default :data:`MAX_PIXELS`)."""
    limit = MAX_PIXELS if max_pixels is None else int(max_pixels)
    try:
        count = header_pixel_count(Path(path))
    except Exception:  # an unreadable header is reported by the decoder with its reason
        return
    if count is not None and limit > 0 and count > limit:
        raise ReadError(f"header declares {count:,} pixels, more than the limit of {limit:,} "
                        f"({limit / 1e6:g} megapixels); not read")


def read_raw(path: Path, *, for_mask: bool = False) -> RawArray:
    """Decode one file; raises ``ReadError`` saying why when it is missing, empty or undecodable."""
    if not path.is_file():
        raise ReadError("file not found")
    if path.stat().st_size == 0:
        raise ReadError("empty file (0 bytes)")
    suffix = full_suffix(path)
    check_header_size(path)
    try:
        if suffix in PIL_SUFFIXES:
            return _read_with_pil(path, for_mask=for_mask)
        if suffix in SITK_SUFFIXES:
            return _read_with_sitk(path)
    except ReadError:
        raise
    except Exception as exc:  # any decoder failure is reported as "unreadable" with its reason
        raise ReadError(f"cannot read ({type(exc).__name__}: {exc})".replace("\n", " ")) from exc
    raise ReadError(f"unsupported file type '{suffix}'")


EXIF_ORIENTATION = 0x0112


def exif_orientation(image) -> int:
    """The EXIF ``Orientation`` tag of an open Pillow image (1, upright, when absent or unreadable)."""
    try:
        return int(image.getexif().get(EXIF_ORIENTATION, 1) or 1)
    except Exception:  # a broken EXIF block: the pixels are shown as stored
        return 1


def display_form(image, *, for_mask: bool = False):
    """A Pillow image as a viewer displays it: the one conversion every path applies (``prepare``,
    and through :class:`custom.data.transforms.DisplayPILReader` training, evaluation, inference
    and MONAI Label).

    * the EXIF orientation is applied (Pillow's ``ImageOps.exif_transpose``), so a rotated JPEG is
      read, and its mask written, the way it is displayed;
    * an image in palette (``P``) or 1-bit (``1``) mode becomes the grey levels (or colours) it
      displays, never its palette indices; a mask keeps its indices (they are the class ids);
    * CMYK/YCbCr/LAB/HSV become RGB.
    """
    from PIL import ImageOps

    if exif_orientation(image) != 1:
        image = ImageOps.exif_transpose(image)
    if image.mode == "1" and not for_mask:  # a 1-bit mask stays 0/1 (bool, cast by the caller)
        image = image.convert("L")
    elif image.mode == "P" and not for_mask:
        image = image.convert("RGB")
    elif image.mode in ("CMYK", "YCbCr", "LAB", "HSV"):
        image = image.convert("RGB")
    return image


def _read_with_pil(path: Path, *, for_mask: bool) -> RawArray:
    """Read a raster file with Pillow as displayed (:func:`display_form`)."""
    from PIL import Image

    with Image.open(path) as image:
        frames = getattr(image, "n_frames", 1)
        if frames > 1:
            raise ReadError(f"multi-frame file ({frames} frames); expected one 2-D image")
        raw_mode = image.tile[0][3] if image.tile else None  # bit depth as stored, before decoding
        image.load()
        orientation = exif_orientation(image)
        plain_png = image.format == "PNG" and image.mode == "L" and raw_mode == "L" and orientation == 1
        array = np.asarray(display_form(image, for_mask=for_mask))
    if array.dtype == bool:
        array = array.astype(np.uint8)
    return RawArray(array=array, plain_png=plain_png, orientation=orientation)


def _read_with_sitk(path: Path) -> RawArray:
    """Read a medical image with SimpleITK; a single slice of a 3-D file is squeezed to 2-D."""
    import SimpleITK as sitk

    image = sitk.ReadImage(str(path))
    array = sitk.GetArrayFromImage(image)
    if full_suffix(path) in (".nii", ".nii.gz"):
        # SimpleITK's NIfTI reader turns NaN into 0, which would hide broken data: look with nibabel
        import nibabel as nib

        raw = np.asanyarray(nib.load(str(path)).dataobj)
        if np.issubdtype(raw.dtype, np.floating) and not np.all(np.isfinite(raw)):
            raise ReadError(f"{int((~np.isfinite(raw)).sum())} non-finite values (NaN/Inf)")
    if image.GetDimension() == 3 and image.GetSize()[2] == 1:
        array = array[0]
    spacing = spacing_or_none(image.GetSpacing())
    if spacing is None and full_suffix(path) in (".dcm", ".dicom"):
        spacing = dicom_ultrasound_spacing(path)
    return RawArray(array=array, spacing=spacing)


def spacing_or_none(spacing: tuple[float, ...]) -> tuple[float, float] | None:
    """(x, y) spacing in mm, or None where the header holds the default (1, 1), meaning unknown.

    Ultrasound pixels are far below 1 mm, so a (1, 1) header is the writer's default, not a
    measurement.
    """
    x, y = float(spacing[0]), float(spacing[1])
    if abs(x - 1.0) < 1e-9 and abs(y - 1.0) < 1e-9:
        return None
    return (x, y)


def dicom_ultrasound_spacing(path: Path) -> tuple[float, float] | None:
    """Spacing from the DICOM ultrasound region calibration (PhysicalDeltaX/Y in cm), if any."""
    import pydicom

    try:
        dataset = pydicom.dcmread(str(path), stop_before_pixels=True)
        region = dataset.SequenceOfUltrasoundRegions[0]
        if int(region.PhysicalUnitsXDirection) == 3 and int(region.PhysicalUnitsYDirection) == 3:
            return (float(region.PhysicalDeltaX) * 10.0, float(region.PhysicalDeltaY) * 10.0)
    except Exception:  # no calibration: the spacing stays unknown
        return None
    return None


def _channels_last(array: np.ndarray, channels_first: bool) -> np.ndarray:
    """Move a leading channel axis (1, 3 or 4 channels) to the end when ``channels_first``."""
    if channels_first and array.ndim == 3 and array.shape[0] in (1, 3, 4) and min(array.shape[1:]) > 4:
        return np.moveaxis(array, 0, -1)
    return array


def _reduce_channels(array: np.ndarray, *, what: str) -> tuple[np.ndarray, bool]:
    """Drop alpha and collapse identical channels; returns (array, channels_were_identical)."""
    if array.ndim != 3 or array.shape[-1] not in (1, 2, 3, 4):
        return array, True
    if array.shape[-1] in (2, 4):  # greyscale+alpha or RGBA: alpha carries no image content
        array = array[..., :-1]
    if array.shape[-1] == 1 or all(np.array_equal(array[..., 0], array[..., c]) for c in range(1, array.shape[-1])):
        return array[..., 0], True
    if what == "mask":
        raise ReadError("colour mask with differing channels; expected one channel of class ids")
    return array, False


def _holds_uint8_values(array: np.ndarray) -> bool:
    """Whether every value is an integer within 0..255 (so a cast to uint8 loses nothing)."""
    if array.size == 0 or not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        return False
    if array.min() < 0 or array.max() > 255:
        return False
    return bool(np.issubdtype(array.dtype, np.integer) or np.array_equal(array, np.round(array)))


def to_grey_uint8(raw: RawArray, *, channels_first: bool = False) -> tuple[np.ndarray, tuple[str, ...]]:
    """One-channel uint8 image from a decoded file, with notes on any lossy conversion."""
    from skimage.color import rgb2gray
    from skimage.exposure import rescale_intensity

    array = _channels_last(raw.array, channels_first)
    if np.issubdtype(array.dtype, np.floating) and not np.all(np.isfinite(array)):
        raise ReadError(f"image has {int((~np.isfinite(array)).sum())} non-finite values (NaN/Inf)")
    notes: list[str] = []
    was_multichannel = array.ndim == 3 and array.shape[-1] in (2, 3, 4)
    array, identical = _reduce_channels(array, what="image")
    if not identical:
        grey = rgb2gray(array[..., :3])  # float, integer inputs scaled to 0..1 by their type's range
        array = np.round(grey * 255.0).astype(np.uint8) if array.dtype == np.uint8 else grey
        notes.append(NOTE_RGB)
    elif was_multichannel:
        notes.append(NOTE_CHANNELS)
    if array.ndim != 2:
        raise ReadError(f"expected a 2-D image, got an array of shape {tuple(raw.array.shape)}")
    if array.dtype == np.uint8:
        return array, tuple(notes)
    if _holds_uint8_values(array):
        return array.astype(np.uint8), tuple(notes)  # 8-bit values stored in a wider type: lossless
    low, high = (float(array.min()), float(array.max())) if array.size else (0.0, 0.0)
    if high <= low:
        return np.zeros(array.shape, np.uint8), tuple(notes + [NOTE_CONSTANT])
    scaled = rescale_intensity(array.astype(np.float64), in_range=(low, high), out_range=(0.0, 255.0))
    return np.round(scaled).astype(np.uint8), tuple(notes + [NOTE_RESCALED])


def present_values(array: np.ndarray) -> np.ndarray:
    """Sorted distinct values of an integer array (``bincount`` for 8/16-bit: ``np.unique`` hashes, far slower)."""
    if array.dtype in (np.uint8, np.uint16) and array.size:
        return np.flatnonzero(np.bincount(array.ravel()))
    return np.unique(array)


def map_values(array: np.ndarray, value_map: Mapping[int, int]) -> np.ndarray:
    """Replace raw mask values by class ids; values not in the map must be 0 (background)."""
    present = [int(v) for v in present_values(array)]
    unmapped = [v for v in present if v not in value_map and v != 0]
    if unmapped:
        raise ReadError(f"mask values {unmapped} not in the label map {dict(value_map)}")
    dtype = np.uint8 if max(value_map.values(), default=0) <= 255 else np.int64
    lookup = np.zeros(max(present + list(value_map)) + 1, dtype)
    for raw_value, class_id in value_map.items():
        lookup[raw_value] = class_id
    return lookup[array]


def to_class_ids(raw: RawArray, value_map: Mapping[int, int] | None = None) -> tuple[np.ndarray, bool]:
    """Integer class-id mask (not yet range-checked) and whether the values were changed."""
    array, _ = _reduce_channels(raw.array, what="mask")
    if array.ndim != 2:
        raise ReadError(f"expected a 2-D mask, got an array of shape {tuple(raw.array.shape)}")
    if np.issubdtype(array.dtype, np.floating):
        if not np.all(np.isfinite(array)):
            raise ReadError("mask has non-finite values (NaN/Inf); expected class ids")
        if not np.array_equal(array, np.round(array)):
            raise ReadError("mask has non-integer values; expected class ids")
        array = array.astype(np.int64)
    if array.size and array.min() < 0:
        raise ReadError(f"mask has negative values (min {int(array.min())}); expected class ids")
    if not value_map:
        return array, False
    mapped = map_values(array, value_map)
    return mapped, not np.array_equal(mapped, array)


def read_image_plane(
    path: Path, *, channels_first: bool = False, spacing: tuple[float, float] | None = None
) -> Plane:
    """Read a 2-D image file as one-channel uint8; ``spacing`` overrides the file's own."""
    raw = read_raw(path)
    array, notes = to_grey_uint8(raw, channels_first=channels_first)
    if raw.orientation != 1:
        notes = (*notes, NOTE_EXIF.format(orientation=raw.orientation))
    copy_from = path if raw.plain_png and not notes else None
    return Plane(array=array, spacing=spacing or raw.spacing, notes=notes, copy_from=copy_from)


def read_mask_plane(path: Path, *, value_map: Mapping[int, int] | None = None) -> Plane:
    """Read a 2-D mask file as integer class ids, mapping raw values through ``value_map``."""
    raw = read_raw(path, for_mask=True)
    array, changed = to_class_ids(raw, value_map)
    copy_from = path if raw.plain_png and not changed else None
    return Plane(array=array, spacing=raw.spacing, copy_from=copy_from)
