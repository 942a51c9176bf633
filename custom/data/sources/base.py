"""What every dataset kind produces: samples (one image/mask pair each, read lazily) with their
group, plus the problems found while pairing files and the class labels of the kind."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from custom.utils.cli import OptionError
from ..errors import Problem
from ..readers import SUPPORTED_SUFFIXES, Plane, full_suffix, strip_suffix

__all__ = [
    "Sample",
    "Discovery",
    "KindOptions",
    "option",
    "relative",
    "list_files",
    "is_mask_name",
    "pair_by_name",
]

# the endings of a file stem that name a mask, not an image (``X_mask.png`` beside ``X.png``;
# HC18's ``NNN_HC_Annotation.png``): such files are never taken for images
MASK_STEM_ENDINGS = ("_mask", "_masks", "_seg", "_segmentation", "_label", "_labels", "_annotation", "_gt")


@dataclass(frozen=True)
class Sample:
    """One image/mask pair; ``load_image``/``load_label`` read it when called (validation, writing)."""

    name: str  # output file stem, unique in the dataset
    group: str  # subject / case / block: splits never separate a group
    image_file: str  # where the image comes from, relative to the source (for messages)
    label_file: str  # where the mask comes from, relative to the source (for messages)
    load_image: Callable[[], Plane]
    load_label: Callable[[], Plane]
    extra: Mapping[str, Any] = field(default_factory=dict)  # further datalist fields (e.g. hc_mm)
    output_suffix: str = ".png"  # ".png", or ".nii.gz" for NIfTI inputs


@dataclass
class Discovery:
    """The result of scanning a source folder."""

    samples: list[Sample]
    problems: list[Problem]
    labels: dict[str, int]  # class name -> class id, background included
    notes: list[str] = field(default_factory=list)  # facts for the summary (e.g. layout found)

    @property
    def num_classes(self) -> int:
        """Number of classes including background."""
        return max(self.labels.values()) + 1


@dataclass(frozen=True)
class KindOptions:
    """What every kind's scan receives. A kind with options of its own subclasses this with fields
    made by :func:`option` (``PsfhsOptions.block_size``); only that kind accepts them, so a new kind
    brings its options with it and ``prepare`` stays as it is."""

    seed: int = 0
    progress: bool = True

    @classmethod
    def from_given(cls, kind: str, given: Mapping[str, Any], *, seed: int = 0, progress: bool = True) -> KindOptions:
        """The options of ``kind`` from the values given by name (strings from the command line
        parsed); an option of another kind, or none, is refused in one line naming it."""
        own = {f.name: f for f in fields(cls) if "parse" in f.metadata}
        for name in given:
            if name not in own:
                accepted = ", ".join(_flag(n) for n in own) or "none"
                raise OptionError(f"{_flag(name)}: not an option of kind {kind} (its options: {accepted})")
        parsed = {name: own[name].metadata["parse"](value) for name, value in given.items()}
        return cls(seed=seed, progress=progress, **parsed)

    def given(self) -> dict[str, Any]:
        """This kind's own options and their values (for the datalist's record)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if "parse" in f.metadata}


def option(default: Any, parse: Callable[[Any], Any]) -> Any:
    """A field of a kind's options: its default, and how a given value (a string from the command
    line, or a Python value from code) becomes the field's value or a one-line ``OptionError``."""
    return field(default=default, metadata={"parse": parse})


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def relative(path: Path, root: Path) -> str:
    """``path`` relative to ``root`` in POSIX form (for messages), or as given if outside it."""
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()


def list_files(directory: Path, suffixes: Iterable[str] = SUPPORTED_SUFFIXES) -> list[Path]:
    """Sorted non-hidden files of ``directory`` (not recursive) with one of ``suffixes``."""
    wanted = set(suffixes)
    return sorted(
        path
        for path in directory.iterdir()
        if path.is_file() and not path.name.startswith(".") and full_suffix(path) in wanted
    )


def is_mask_name(path: Path | str) -> bool:
    """Whether a file's name says it holds a mask (its stem ends in one of ``MASK_STEM_ENDINGS``)."""
    return strip_suffix(Path(path)).lower().endswith(MASK_STEM_ENDINGS)


def unusable_entries(directory: Path, root: Path, suffixes: Iterable[str] = SUPPORTED_SUFFIXES) -> list[Problem]:
    """Entries of ``directory`` named like an image (``x.png``) that :func:`list_files` leaves out
    because they are not regular files: a folder, a dangling symbolic link, a symbolic-link loop."""
    wanted = set(suffixes)
    problems = []
    for path in sorted(directory.iterdir()):
        if path.name.startswith(".") or full_suffix(path) not in wanted or path.is_file():
            continue
        if path.is_symlink():
            try:
                path.resolve(strict=True)
                why = "symbolic link to something that is not a file"
            except RuntimeError:
                why = "symbolic-link loop"
            except OSError as e:
                why = "symbolic-link loop" if "loop" in str(e).lower() or getattr(e, "errno", None) == 40 else "dangling symbolic link (its target does not exist)"
        elif path.is_dir():
            why = "a folder, not an image file"
        else:
            why = "not a regular file"
        problems.append(Problem(relative(path, root), f"{why}; skipped"))
    return problems


def pair_by_name(
    images: list[Path],
    masks: list[Path],
    root: Path,
    *,
    mask_key: Callable[[Path], str] = strip_suffix,
    image_key: Callable[[Path], str] = strip_suffix,
    expected_mask: Callable[[Path], str] | None = None,
) -> tuple[list[tuple[Path, Path]], list[Problem]]:
    """Match images to masks by key (file stem by default).

    Returns the pairs and a problem for every image without a mask, every image with several
    candidate masks and every mask without an image. Images sharing a stem are all paired (the
    duplicate-name check reports them).
    """
    masks_by_key: dict[str, list[Path]] = defaultdict(list)
    for mask in masks:
        masks_by_key[mask_key(mask)].append(mask)
    pairs: list[tuple[Path, Path]] = []
    problems: list[Problem] = []
    used: set[str] = set()
    for image in images:
        key = image_key(image)
        candidates = masks_by_key.get(key, [])
        used.add(key)
        if not candidates:
            hint = expected_mask(image) if expected_mask else f"a mask named {key}.*"
            problems.append(Problem(relative(image, root), f"no mask found (expected {hint})"))
        elif len(candidates) > 1:
            names = ", ".join(relative(c, root) for c in candidates)
            problems.append(Problem(relative(image, root), f"several masks match: {names}"))
        else:
            pairs.append((image, candidates[0]))
    for key, orphans in masks_by_key.items():
        if key not in used:
            problems.extend(Problem(relative(mask, root), "mask without an image") for mask in orphans)
    return pairs, problems
