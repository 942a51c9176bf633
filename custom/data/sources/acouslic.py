"""ACOUSLIC-AI abdominal blind sweeps: 3-D ``.mha`` stacks of 2-D frames, cut into 2-D frames.

Layout: ``images/stacked_fetal_ultrasound/<case>.mha`` + ``masks/stacked_fetal_abdomen/<case>.mha``
(same file names), or flat ``images/`` + ``masks/``. Mask values: 1 = optimal plane,
2 = suboptimal plane (``binarize``: both -> 1). Every frame with foreground is kept, plus up to
``background_per_case`` background frames drawn per case with a seeded generator.
Group = case (file stem); spacing = the volume's (x, y) spacing.
"""

from __future__ import annotations

import functools
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from custom.utils.cli import parse_bool
from custom.utils.options import check_option
from ..errors import Problem, ReadError, SourceLayoutError
from ..readers import Plane, RawArray, read_raw, spacing_or_none, strip_suffix, to_class_ids, to_grey_uint8
from .base import Discovery, KindOptions, Sample, list_files, option, pair_by_name, relative

__all__ = ["LABELS", "LABELS_BINARY", "LAYOUTS", "AcouslicOptions", "discover_acouslic", "pick_background_frames"]

LABELS = {"background": 0, "optimal_plane": 1, "suboptimal_plane": 2}
LABELS_BINARY = {"background": 0, "abdomen": 1}
LAYOUTS = (
    ("images/stacked_fetal_ultrasound", "masks/stacked_fetal_abdomen"),
    ("images", "masks"),
)


@dataclass(frozen=True)
class AcouslicOptions(KindOptions):
    """``background_per_case``: frames without anatomy sampled per case; ``binarize``: the optimal
    and suboptimal planes as one class."""

    background_per_case: int = option(10, lambda value: check_option("background_per_case", value, dashes=True))
    binarize: bool = option(False, lambda value: parse_bool(value, "binarize"))


def _layout(source: Path) -> tuple[Path, Path]:
    """Image and mask folders of the first layout present in ``source``."""
    for images, masks in LAYOUTS:
        if (source / images).is_dir() and (source / masks).is_dir() and list_files(source / images, [".mha"]):
            return source / images, source / masks
    expected = " or ".join(f"{i}/*.mha + {m}/*.mha" for i, m in LAYOUTS)
    raise SourceLayoutError(f"{source}: no ACOUSLIC-AI layout found: expected {expected}")


def _volume_size(path: Path) -> tuple[int, ...]:
    """(x, y, frames) size from the header only, without reading the pixels."""
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    return tuple(reader.GetSize())


def pick_background_frames(frames: np.ndarray, count: int, seed: int, case: str) -> list[int]:
    """Up to ``count`` of ``frames``, drawn with a generator seeded by (seed, case) so that the
    choice for one case does not depend on the other cases."""
    if count <= 0 or len(frames) == 0:
        return []
    rng = np.random.default_rng([seed, zlib.crc32(case.encode())])
    return sorted(int(f) for f in rng.choice(frames, size=min(count, len(frames)), replace=False))


class _VolumeReader:
    """Reads frames of 3-D volumes, keeping the last volume read (frames are read case by case)."""

    def __init__(self) -> None:
        self.read = functools.lru_cache(maxsize=1)(self._read)

    @staticmethod
    def _read(path: Path) -> RawArray:
        raw = read_raw(path, for_mask=True)
        if raw.array.ndim == 2:  # a one-frame stack is squeezed to 2-D by the reader
            raw = RawArray(array=raw.array[np.newaxis], spacing=raw.spacing)
        if raw.array.ndim != 3:
            raise ReadError(f"expected a 3-D stack of frames, got an array of shape {raw.array.shape}")
        return raw

    def image_frame(self, path: Path, frame: int) -> Plane:
        """Frame ``frame`` of an image volume as one-channel uint8."""
        raw = self.read(path)
        array, notes = to_grey_uint8(RawArray(array=raw.array[frame]))
        return Plane(array=array, spacing=raw.spacing, notes=notes)

    def mask_frame(self, path: Path, frame: int, value_map: dict[int, int] | None) -> Plane:
        """Frame ``frame`` of a mask volume as class ids."""
        array, _ = to_class_ids(RawArray(array=self.read(path).array[frame]), value_map)
        return Plane(array=array)


def discover_acouslic(source: Path, options: AcouslicOptions) -> Discovery:
    """Scan an ACOUSLIC-AI folder; reads each mask volume once to find its foreground frames."""
    from tqdm.auto import tqdm

    image_dir, mask_dir = _layout(source)
    pairs, problems = pair_by_name(
        list_files(image_dir, [".mha"]),
        list_files(mask_dir, [".mha"]),
        source,
        expected_mask=lambda p: relative(mask_dir / p.name, source),
    )
    images_reader, masks_reader = _VolumeReader(), _VolumeReader()
    value_map = {1: 1, 2: 1} if options.binarize else None
    samples: list[Sample] = []
    for image, mask in tqdm(pairs, desc="reading masks", unit="case", disable=not options.progress):
        case_samples, problem = _case_samples(image, mask, source, options, images_reader, masks_reader, value_map)
        samples.extend(case_samples)
        problems.extend([problem] if problem else [])
    labels = dict(LABELS_BINARY if options.binarize else LABELS)
    notes = [f"layout: ACOUSLIC-AI {relative(image_dir, source)}/ + {relative(mask_dir, source)}/"]
    notes.append(f"background frames per case: up to {options.background_per_case}")
    return Discovery(samples=samples, problems=problems, labels=labels, notes=notes)


def _case_samples(
    image: Path,
    mask: Path,
    source: Path,
    options: AcouslicOptions,
    images_reader: _VolumeReader,
    masks_reader: _VolumeReader,
    value_map: dict[int, int] | None,
) -> tuple[list[Sample], Problem | None]:
    """The frame samples of one case, or a problem naming the file that prevents them."""
    try:
        mask_raw = masks_reader.read(mask)
    except ReadError as error:
        return [], Problem(relative(mask, source), str(error))
    try:
        image_size = _volume_size(image)
    except Exception as error:  # unreadable header
        return [], Problem(relative(image, source), f"cannot read ({type(error).__name__}: {error})".replace("\n", " "))
    mask_size = tuple(reversed(mask_raw.array.shape))  # (x, y, frames) like the image header
    if image_size[:3] != mask_size[:3]:
        sizes = ("x".join(map(str, size)) for size in (mask_size, image_size))
        return [], Problem(relative(mask, source), "size {} differs from image {}".format(*sizes))
    case = strip_suffix(image)
    foreground = np.flatnonzero(mask_raw.array.reshape(mask_raw.array.shape[0], -1).any(axis=1))
    background = np.setdiff1d(np.arange(mask_raw.array.shape[0]), foreground)
    sampled = pick_background_frames(background, options.background_per_case, options.seed, case)
    frames = sorted([int(f) for f in foreground] + sampled)
    samples = [
        Sample(
            name=f"{case}_{frame:04d}",
            group=case,
            image_file=f"{relative(image, source)}[frame {frame}]",
            label_file=f"{relative(mask, source)}[frame {frame}]",
            load_image=functools.partial(images_reader.image_frame, image, frame),
            load_label=functools.partial(masks_reader.mask_frame, mask, frame, value_map),
            extra={"frame": frame},
        )
        for frame in frames
    ]
    return samples, None
