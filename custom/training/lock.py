"""One training per ``ckpt_dir``: a lock file that a second concurrent training is refused by.

Two trainings writing one ``--ckpt_dir`` both ended with status 0, the folder holding one run's
``model.pt`` and the other's training state. :func:`hold_ckpt_dir` (the first item of train.yaml's
``run``, rank 0 only) takes ``<ckpt_dir>/.training.lock`` with an exclusive ``flock`` held for
the life of the process and writes the holder's pid, host and start time into it. A second
training on the folder is refused at once with one line naming the folder and the holder. The
kernel drops the ``flock`` of a process that dies (even by ``SIGKILL``), so the lock of a killed
run is taken over on the next start; where the file system has no ``flock``, a lock whose pid is
no longer alive on this host is taken over the same way (a stale lock). A process may take the
lock of a folder it already holds again (resume in the same process). Once it holds the lock it
removes the hidden temporary files a killed training left in the folder (``.tmp_*.pt``/``.json``).
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import json
import logging
import os
import socket
import time

from custom.utils.jsonio import load_json

__all__ = ["LOCK_NAME", "CkptDirLockedError", "hold_ckpt_dir", "release_ckpt_dir", "pid_alive"]

logger = logging.getLogger(__name__)

LOCK_NAME = ".training.lock"
_HELD: dict[str, int] = {}  # real path of the folder -> the open lock file's descriptor


class CkptDirLockedError(ValueError):
    """Another running training holds the ``ckpt_dir`` lock."""


def pid_alive(pid: int) -> bool:
    """Whether a process with this id runs on this host."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def _is_rank0() -> bool:
    if int(os.environ.get("RANK", "0") or 0) > 0:
        return False
    try:
        import torch.distributed as dist

        return not (dist.is_available() and dist.is_initialized() and dist.get_rank() > 0)
    except Exception:  # no torch.distributed: a single process
        return True


def _holder(path: str) -> dict:
    try:
        data = load_json(path)
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _refuse(folder: str, path: str, holder: dict) -> None:
    who = f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}"
    since = f", started {holder['started']}" if holder.get("started") else ""
    raise CkptDirLockedError(
        f"{folder}: another training ({who}{since}) is writing this ckpt_dir (lock {path}); "
        "wait for it to end, or pass another --ckpt_dir"
    )


def hold_ckpt_dir(ckpt_dir: str | os.PathLike) -> str | None:
    """Take the training lock of ``ckpt_dir`` (created if absent) for this process; returns the
    lock file's path (``None`` on ranks > 0, which write nothing there). Raises
    :class:`CkptDirLockedError` (one line) when another live process holds it."""
    if not _is_rank0():
        return None
    folder = os.path.abspath(os.fspath(ckpt_dir))
    key = os.path.realpath(folder)
    path = os.path.join(folder, LOCK_NAME)
    if key in _HELD:
        return path
    from custom.utils.outputs import OutputFolderError, check_output_folder

    check_output_folder(folder, "--ckpt_dir")  # read-only or full: refused before anything is built
    try:
        os.makedirs(folder, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise OutputFolderError(f"--ckpt_dir {folder}: cannot write there: {e.strerror or e}") from None
    try:
        import fcntl

        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                _refuse(folder, path, _holder(path))
            # no flock on this file system: the pid written in the file decides
            holder = _holder(path)
            pid, host = int(holder.get("pid", 0) or 0), holder.get("host")
            if pid and pid != os.getpid() and host == socket.gethostname() and pid_alive(pid):
                _refuse(folder, path, holder)
        previous = _holder(path)
        if previous.get("pid") and previous.get("pid") != os.getpid():
            logger.warning(
                "took over the lock %s of pid %s (no longer running: an interrupted training)",
                path,
                previous.get("pid"),
            )
        os.ftruncate(fd, 0)
        os.pwrite(
            fd,
            json.dumps(
                {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
            ).encode(),
            0,
        )
    except BaseException:
        os.close(fd)
        raise
    _HELD[key] = fd
    from custom.utils.atomic import remove_leftovers

    # what a killed training left half-written (model.pt, model_config.json): no other training
    # writes here now (the lock), and evaluation/export write other suffixes
    for pattern in (".tmp_*.pt", ".tmp_*.json", ".tmp_probe_*"):
        remove_leftovers(folder, pattern, "partial file")
    return path


def release_ckpt_dir(ckpt_dir: str | os.PathLike) -> None:
    """Drop this process's lock of ``ckpt_dir`` (also done at exit)."""
    folder = os.path.abspath(os.fspath(ckpt_dir))
    fd = _HELD.pop(os.path.realpath(folder), None)
    if fd is None:
        return
    with contextlib.suppress(OSError):
        os.remove(os.path.join(folder, LOCK_NAME))
    with contextlib.suppress(OSError):
        os.close(fd)


@atexit.register
def _release_all() -> None:
    for key in list(_HELD):
        release_ckpt_dir(key)
