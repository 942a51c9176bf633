"""``prepare --unlabeled-extra DIR``: a folder of images without masks (a new site's frames) added to
the unlabelled pool as their own group, never to a labelled, validation or test list."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import DataValidationError, Problem, ReadError
from .options import frame_id, parse_id_ranges
from .readers import read_image_plane, strip_suffix
from .sources.base import is_mask_name, list_files
from .held_out_lists import content_hash
from .validate import CheckedSample

__all__ = ["EXTRA_DIR", "ExtraImages", "read_extra_images"]

# where the extra images are written inside the prepared folder (apart from the dataset's own names)
EXTRA_DIR = "images/unlabeled_extra"


@dataclass
class ExtraImages:
    """The readable extra images (name -> 8-bit array), the problems found and where they came from."""

    source: Path
    images: dict[str, Any] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    masks_left_out: list[str] = field(default_factory=list)

    @property
    def group(self) -> str:
        folder = self.source.parent if self.source.name.lower() == "images" else self.source
        return f"extra:{folder.name}"

    @property
    def note(self) -> str:
        note = f"unlabelled extra: {len(self.images)} images from {self.source} (group {self.group}, no masks)"
        if self.masks_left_out:
            shown = ", ".join(self.masks_left_out[:3]) + (", ..." if len(self.masks_left_out) > 3 else "")
            note += f"; {len(self.masks_left_out)} files named as masks left out ({shown})"
        return note

    def write(self, out_dir: Path) -> list[dict[str, Any]]:
        """Write the images as PNG under ``EXTRA_DIR``; their ``unlabeled`` entries (no ``label``)."""
        from .writers import write_png

        (out_dir / EXTRA_DIR).mkdir(parents=True, exist_ok=True)
        entries = []
        for name, array in self.images.items():
            rel = f"{EXTRA_DIR}/{name}.png"
            write_png(array, out_dir / rel)
            entries.append({"image": rel, "group": self.group, "name": f"extra:{name}", "source": str(self.source)})
        return entries


def read_extra_images(
    source: Path,
    ids: Any,
    dataset: Sequence[CheckedSample],
    *,
    skip_invalid: bool = False,
    progress: bool = True,
) -> ExtraImages:
    """Read every image file of ``source`` (not its subfolders; names whose leading number is within ``ids`` when
    given). Unreadable or non-2-D files, and frames identical to one of ``dataset`` (which would
    put a test or validation frame into training), are problems naming the file: raised as one
    :class:`DataValidationError` unless ``skip_invalid`` (then reported and left out)."""
    from tqdm.auto import tqdm

    if not source.is_dir():
        raise FileNotFoundError(f"--unlabeled-extra {source}: folder not found")
    if not list_files(source) and (source / "images").is_dir():  # a data set's layout: images/ beside labels/
        source = source / "images"
    files = list_files(source)
    masks = [f for f in files if is_mask_name(f)]  # X_mask.png beside X.png: never an image of the pool
    files = [f for f in files if f not in masks]
    if ids is not None and str(ids) != "":
        wanted = parse_id_ranges(ids, "--unlabeled-extra-ids")
        files = [f for f in files if frame_id(strip_suffix(f)) in wanted]
    extra = ExtraImages(source=source.resolve(), masks_left_out=[m.name for m in masks])
    if not files:
        raise DataValidationError(
            [Problem(str(source), "no readable image file (or none within --unlabeled-extra-ids)")],
            context="--unlabeled-extra",
        )
    known = {content_hash(c.sample.load_image().array): c.sample.image_file for c in dataset}
    for path in tqdm(files, desc="extra images", unit="image", disable=not progress):
        name = strip_suffix(path)
        try:
            array = read_image_plane(path).array
        except ReadError as error:
            extra.problems.append(Problem(str(path), str(error)))
            continue
        twin = known.get(content_hash(array))
        if twin is not None:
            extra.problems.append(
                Problem(
                    str(path), f"the same frame as {twin} of the dataset; an extra unlabelled image must be a new frame"
                )
            )
        elif name in extra.images:
            extra.problems.append(Problem(str(path), f"duplicate name '{name}' in --unlabeled-extra"))
        else:
            extra.images[name] = array
    if extra.problems and not skip_invalid:
        raise DataValidationError(extra.problems, context="--unlabeled-extra")
    return extra
