"""Dataset kinds: each turns a source folder into samples (see ``base.Sample``)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from .acouslic import discover_acouslic
from .base import Discovery, Sample, SourceOptions
from .folder import discover_folder
from .hc18 import discover_hc18
from .psfhs import discover_psfhs

__all__ = ["KINDS", "Discovery", "Sample", "SourceOptions", "discover"]

KINDS: dict[str, Callable[[Path, SourceOptions], Discovery]] = {
    "hc18": discover_hc18,
    "psfhs": discover_psfhs,
    "acouslic": discover_acouslic,
    "folder": discover_folder,
}


def discover(kind: str, source: Path, options: SourceOptions) -> Discovery:
    """Scan ``source`` as dataset ``kind`` (one of ``KINDS``)."""
    if kind not in KINDS:
        from custom.utils.cli import OptionError

        raise OptionError(f"unknown source kind {kind!r}; choose one of {', '.join(KINDS)}")
    if not source.is_dir():
        raise FileNotFoundError(f"{source}: source folder not found")
    return KINDS[kind](source, options)
