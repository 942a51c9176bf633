"""The one way this project writes a file: all or nothing.

Every file is first written to a temporary file in the same folder (``.tmp_XXXXXXXX<suffix>``,
the suffix kept so that writers choosing the format by extension still work), flushed to disk
(``fsync``), then renamed over its final name (``os.replace``, atomic on POSIX) and the folder
entry is synced too. A crash or ``SIGKILL`` leaves either the old file, or the complete new one,
plus at most a hidden ``.tmp_*`` file (:func:`remove_leftovers` clears those on the next start).

* :func:`atomic_path` - context manager yielding the temporary path, for writers that take a
  path (PIL, SimpleITK, MONAI's image writers, ``np.save``, matplotlib);
* :func:`atomic_write` - ``atomic_write(path, writer_fn)``: ``writer_fn(tmp_path)``;
* :func:`atomic_open` - context manager yielding an open file;
* :func:`atomic_write_text`, :func:`atomic_write_json`, :func:`atomic_torch_save`, :func:`atomic_copy`.
"""

from __future__ import annotations

import contextlib
import glob
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from typing import IO, Any

__all__ = [
    "TMP_PREFIX",
    "full_suffix",
    "atomic_path",
    "atomic_write",
    "atomic_open",
    "atomic_write_text",
    "atomic_write_json",
    "atomic_torch_save",
    "atomic_copy",
    "fsync_dir",
    "remove_leftovers",
]

logger = logging.getLogger(__name__)

TMP_PREFIX = ".tmp_"


def full_suffix(path: str | os.PathLike) -> str:
    """The file's extension, with ``.nii.gz`` (and other ``.X.gz``) kept whole."""
    name = os.path.basename(os.fspath(path)).lower()
    root, ext = os.path.splitext(name)
    if ext == ".gz":
        ext = os.path.splitext(root)[1] + ext
    return ext


def fsync_dir(folder: str | os.PathLike) -> None:
    """Flush a folder's entries (a rename into it) to disk; a no-op where folders cannot be opened."""
    try:
        fd = os.open(os.fspath(folder), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync_file(path: str) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
    """Yield a temporary path next to ``path`` (same suffix); when the block succeeds the file
    there is synced and renamed to ``path``; on any error it is removed and ``path`` is untouched.

    A ``path`` that is an existing folder is refused (``IsADirectoryError``) before anything is written.
    """
    path = os.path.abspath(os.fspath(path))
    folder = os.path.dirname(path)
    if os.path.isdir(path):
        raise IsADirectoryError(f"{path}: is a folder, cannot write a file there")
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, suffix=full_suffix(path), dir=folder)
    os.close(fd)
    with contextlib.suppress(OSError):  # mkstemp makes the file private: give it the mode open() would
        os.chmod(tmp, os.stat(path).st_mode & 0o777 if os.path.exists(path) else 0o666 & ~_umask())
    try:
        yield tmp
        if not os.path.exists(tmp):
            raise FileNotFoundError(f"{path}: the writer wrote nothing")
        _fsync_file(tmp)
        os.replace(tmp, path)
        fsync_dir(folder)
    except BaseException as error:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        named = _named_write_error(error, path, folder)
        if named is not None:
            raise named from error
        raise


def _named_write_error(error: BaseException, path: str, folder: str) -> OSError | None:
    """The system's refusal to write ``path`` as an ``OSError`` that names it, where the writer's
    own error does not: an ``OSError`` without a file name, or a library's ``RuntimeError`` (torch's
    "PytorchStreamWriter failed writing file ...") on a device that is full."""
    import errno
    import shutil

    if isinstance(error, OSError) and error.errno is not None and error.filename is None:
        return OSError(error.errno, error.strerror or os.strerror(error.errno), path)
    if isinstance(error, (OSError, RuntimeError)) and not isinstance(error, NotImplementedError):
        try:
            full = shutil.disk_usage(folder).free < (1 << 20)
        except OSError:
            full = False
        if full and not (isinstance(error, OSError) and error.filename is not None):
            return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
    return None


def atomic_write(path: str | os.PathLike, writer_fn: Callable[[str], Any]) -> str:
    """``writer_fn(tmp_path)`` writes the file, which then replaces ``path`` atomically; returns ``path``."""
    with atomic_path(path) as tmp:
        writer_fn(tmp)
    return os.fspath(path)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", **kwargs: Any) -> Iterator[IO]:
    """``open(tmp, mode)`` for the block; the complete file then replaces ``path`` atomically."""
    if not any(m in mode for m in "wx"):
        raise ValueError(f"atomic_open is for writing, not mode {mode!r}")
    if "b" not in mode:
        kwargs.setdefault("encoding", "utf-8")
    with atomic_path(path) as tmp:
        with open(tmp, mode.replace("x", "w"), **kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8", newline: str | None = None) -> str:
    with atomic_open(path, "w", encoding=encoding, newline=newline) as f:
        f.write(text)
    return os.fspath(path)


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2, **dump_kwargs: Any) -> str:
    with atomic_open(path, "w") as f:
        json.dump(obj, f, indent=indent, **dump_kwargs)
        f.write("\n")
    return os.fspath(path)


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` to ``.tmp_*.pt`` in the same folder, fsync, then rename over ``path``."""
    import torch

    with atomic_open(path, "wb") as f:
        torch.save(obj, f)


def atomic_copy(source: str | os.PathLike, path: str | os.PathLike) -> str:
    """Copy ``source``'s bytes to ``path`` atomically."""
    return atomic_write(path, lambda tmp: shutil.copyfile(source, tmp))


def remove_leftovers(
    folder: str | os.PathLike, pattern: str = TMP_PREFIX + "*", what: str = "temporary file"
) -> list[str]:
    """Delete what an interrupted run left in ``folder`` (files or folders matching ``pattern``); logs each one."""
    removed = []
    for leftover in sorted(glob.glob(os.path.join(glob.escape(os.fspath(folder)), pattern))):
        try:
            if os.path.isdir(leftover) and not os.path.islink(leftover):
                shutil.rmtree(leftover)
            else:
                os.remove(leftover)
        except OSError as e:
            logger.warning("could not remove the leftover %s %s: %s", what, leftover, e)
            continue
        logger.warning("removed the leftover %s %s of an interrupted run", what, leftover)
        removed.append(leftover)
    return removed
