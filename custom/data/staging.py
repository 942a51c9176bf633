"""All-or-nothing output: write into a temporary sibling folder, rename it into place at the end.

On failure the temporary folder is removed and ``--out`` is left as it was; with ``overwrite``
an existing ``--out`` is replaced only once the new one is complete.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from custom.utils.atomic import remove_leftovers
from custom.utils.cli import OptionError

__all__ = ["check_output_target", "staging_directory"]


def _is_within(path: Path, folder: Path) -> bool:
    """Whether ``path`` is ``folder`` or lies inside it (both resolved)."""
    path, folder = path.resolve(), folder.resolve()
    return path == folder or folder in path.parents


def check_output_target(out: Path, source: Path, overwrite: bool) -> None:
    """Refuse an ``out`` that would destroy the source or existing data (unless ``overwrite``)."""
    if _is_within(source, out):
        raise OptionError(f"--out {out}: the output folder must not be the source or contain it (--source {source})")
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out}: output folder exists and is not empty; pass --overwrite to replace it")
    from custom.utils.outputs import check_output_folder

    check_output_folder(out, "--out", replaced_whole=True)  # read-only, full, a mount point: before the work


@contextmanager
def staging_directory(out: Path, *, overwrite: bool) -> Iterator[Path]:
    """Yield a temporary folder next to ``out``; on success it replaces ``out``, on error it is removed."""
    out.parent.mkdir(parents=True, exist_ok=True)
    # what a killed run of the same command left beside ``out`` (never a ``.previous-`` folder: it may hold the old output)
    remove_leftovers(out.parent, f".{out.name}.partial-*", "partial output folder")
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        yield staging
        _move_into_place(staging, out, overwrite=overwrite)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _move_into_place(staging: Path, out: Path, *, overwrite: bool) -> None:
    """Rename ``staging`` to ``out``, first moving an existing ``out`` aside (deleted afterwards)."""
    if not out.exists():
        staging.rename(out)
        return
    if any(out.iterdir()) and not overwrite:  # appeared while preparing
        raise FileExistsError(f"{out}: output folder exists and is not empty; pass --overwrite to replace it")
    previous = Path(tempfile.mkdtemp(prefix=f".{out.name}.previous-", dir=out.parent))
    previous.rmdir()
    out.rename(previous)
    try:
        staging.rename(out)
    except BaseException:
        previous.rename(out)  # put the old output back
        raise
    shutil.rmtree(previous, ignore_errors=True)
