"""Dataset kinds: each turns a source folder into samples (see ``base.Sample``) and declares the
options it takes (a subclass of ``base.KindOptions``). A new kind is a module here with its scan
and its options, and one entry in ``KINDS``."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

from .acouslic import AcouslicOptions, discover_acouslic
from .base import Discovery, KindOptions, Sample
from .folder import FolderOptions, discover_folder
from .hc18 import discover_hc18
from .psfhs import PsfhsOptions, discover_psfhs

__all__ = ["KINDS", "Discovery", "Kind", "KindOptions", "Sample", "discover", "kind_options"]


class Kind(NamedTuple):
    """A dataset kind: how its folder is scanned and the options it accepts."""

    scan: Callable[[Path, Any], Discovery]
    options: type[KindOptions]


KINDS: dict[str, Kind] = {
    "hc18": Kind(discover_hc18, KindOptions),
    "psfhs": Kind(discover_psfhs, PsfhsOptions),
    "acouslic": Kind(discover_acouslic, AcouslicOptions),
    "folder": Kind(discover_folder, FolderOptions),
}


def _kind(kind: str) -> Kind:
    if kind not in KINDS:
        from custom.utils.cli import OptionError

        raise OptionError(f"unknown source kind {kind!r}; choose one of {', '.join(KINDS)}")
    return KINDS[kind]


def kind_options(kind: str, given: Mapping[str, Any], *, seed: int = 0, progress: bool = True) -> KindOptions:
    """The options of ``kind`` from those given by name; one of another kind is refused in one line."""
    return _kind(kind).options.from_given(kind, given, seed=seed, progress=progress)


def discover(kind: str, source: Path, options: KindOptions) -> Discovery:
    """Scan ``source`` as dataset ``kind`` (one of ``KINDS``) with its options (:func:`kind_options`)."""
    scan = _kind(kind).scan
    if not source.is_dir():
        raise FileNotFoundError(f"{source}: source folder not found")
    return scan(source, options)
