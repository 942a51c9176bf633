"""Output folders checked before the work, and what the system refuses said in one line.

:func:`check_output_folder` runs before a command does its work (``prepare``'s ``--out``, the
evaluation and inference output folders, training's ``--ckpt_dir``): the folder, or the nearest
existing folder above it, must accept a file (a read-only folder or file system is refused at
once, not after the work), must have some free space, and a folder that is replaced as a whole
at the end (``prepare``, evaluation) must not be a mount point (its rename fails with ``EBUSY``
after all the work). :func:`os_error_line` turns what the system refuses during the work
(``ENOSPC``, ``EROFS``, ``EACCES``, ``EBUSY``, ``EDQUOT``...) into one line naming the path;
the writers are atomic (:mod:`custom.utils.atomic`), so nothing partial is left.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile

__all__ = [
    "OutputFolderError",
    "OUTPUT_ERRNOS",
    "FOLDER_ERRNOS",
    "MIN_FREE_BYTES",
    "check_output_folder",
    "os_error_line",
]

# the errors of a path the system will not write to (not bugs): said in one line
OUTPUT_ERRNOS = frozenset(
    getattr(errno, name)
    for name in ("ENOSPC", "EDQUOT", "EROFS", "EACCES", "EPERM", "EBUSY", "EXDEV", "ENAMETOOLONG", "ENOTDIR", "EISDIR")
    if hasattr(errno, name)
)
# of those, the ones about the whole folder or device (not one file's name): no later file fares better
FOLDER_ERRNOS = frozenset(
    getattr(errno, name) for name in ("ENOSPC", "EDQUOT", "EROFS", "EACCES", "EPERM", "EBUSY") if hasattr(errno, name)
)
MIN_FREE_BYTES = 1 << 20  # below 1 MiB free nothing useful can be written


class OutputFolderError(ValueError):
    """An output folder that cannot take the outputs; the message names the option and the path."""


def _existing_folder(path: str) -> str:
    """``path`` if it is a folder, else the nearest existing folder above it."""
    current = path
    while not os.path.isdir(current):
        parent = os.path.dirname(current)
        if parent == current:
            break
        current = parent
    return current


def check_output_folder(path: str | os.PathLike, option: str, *, replaced_whole: bool = False) -> None:
    """Refuse, before any work, an output folder that cannot take the outputs (see the module
    docstring). ``replaced_whole``: the command writes a sibling folder and renames it over
    ``path`` at the end, so the parent must accept a folder too and ``path`` must not be a mount point."""
    path = os.path.abspath(os.fspath(path))
    name = f"{option} {path}"
    if os.path.exists(path) and not os.path.isdir(path):
        raise OutputFolderError(f"{name}: is an existing file, not a folder")
    if replaced_whole and os.path.isdir(path) and os.path.ismount(path):
        raise OutputFolderError(
            f"{name}: is a mount point, which cannot be replaced as a whole (the output is written beside it "
            "and renamed into place); choose a folder inside it"
        )
    probes = [_existing_folder(path)]
    if replaced_whole:
        probes.append(_existing_folder(os.path.dirname(path)))
    for folder in dict.fromkeys(probes):
        try:
            fd, probe = tempfile.mkstemp(prefix=".tmp_probe_", dir=folder)
        except OSError as e:
            where = "" if folder == path else f" (in {folder})"
            raise OutputFolderError(f"{name}: cannot write there{where}: {e.strerror or e}") from None
        os.close(fd)
        with contextlib.suppress(OSError):
            os.remove(probe)
        with contextlib.suppress(OSError):
            free = shutil.disk_usage(folder).free
            if free < MIN_FREE_BYTES:
                raise OutputFolderError(f"{name}: no space left on the device ({free} bytes free in {folder})")


def os_error_line(error: BaseException) -> str | None:
    """One line for the first ``OSError`` in ``error``'s chain that the system raised about a path
    it will not write to (:data:`OUTPUT_ERRNOS`), else ``None``."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in OUTPUT_ERRNOS:
            what = current.strerror or os.strerror(current.errno)
            where = current.filename if current.filename is not None else None
            extra = f" (-> {current.filename2})" if getattr(current, "filename2", None) else ""
            hint = (
                " (nothing partial was left: free some space and run again)"
                if current.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))
                else ""
            )
            return f"{where}{extra}: {what}{hint}" if where else f"{what}{hint}"
        current = current.__cause__ or current.__context__
    return None
