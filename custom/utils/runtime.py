"""The process setup of the project's entry points, called explicitly: first in the bundle
configs' ``initialize`` lists (as MONAI bundles set up their runs there) and at the start of every
command-line entry point (``python -m custom.data``, ``custom.deploy.export``,
``custom.deploy.package``, ``custom.tools.compare``, ``custom.tools.bench``,
``custom.tools.bench.reference``). Importing ``custom`` changes nothing in the process.

- ``OMP_WAIT_POLICY`` becomes ``PASSIVE`` unless it is already set: idle OpenMP threads then
  yield the cores instead of spinning (2.6x faster training iterations on a loaded 2-core
  machine). ``OMP_WAIT_POLICY=ACTIVE`` (or any value) in the environment overrides it. OpenMP
  reads it when torch loads, so it takes effect in the processes an entry point starts (the
  training subprocesses of ``custom.tools.compare``, which inherit the environment); a process
  that has loaded torch already (``python -m monai.bundle``, a tool importing torch) gets it from
  the command line, as the README's commands set it.
- warnings that MONAI repeats for every image reader it builds (``nvImageCodec is not
  available``, 50-315 times a run) are shown once per process.
- in a ``python -m monai.bundle`` run, an input error that the project's own code raises
  (``FileExistsError``, ``FileNotFoundError``, ``ValueError`` and their subclasses, raised in
  ``custom/``: an existing output, a missing checkpoint, a bad option or list) ends the run
  with ``error: <its message>`` on one line (status 1) instead of MONAI's chained
  traceback; the message itself stays where the error is raised. So does a path the system
  will not write to (``ENOSPC``, ``EROFS``, ``EACCES``, ``EBUSY``: ``custom.utils.outputs``). ``CUSTOM_TRACEBACK=1``
  shows the full traceback.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings

__all__ = ["OMP_DEFAULT", "setup", "OnceFilter"]

OMP_DEFAULT = "PASSIVE"
# loggers whose identical records are shown once per process
_ONCE_LOGGERS = ("monai.data.nvimgcodec_pydicom_plugin",)
_ONCE_WARNINGS = (r"NvImgCodecPydicomReader: nvImageCodec decoder plugin did not register",)


class OnceFilter(logging.Filter):
    """Lets each distinct message of a logger through once."""

    def __init__(self) -> None:
        super().__init__()
        self._seen: set[tuple[int, str]] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.levelno, record.getMessage())
        if key in self._seen:
            return False
        self._seen.add(key)
        return True


def setup() -> None:
    """Set ``OMP_WAIT_POLICY`` (unless set), show repeated library warnings once and, in a
    ``python -m monai.bundle`` run, end on the project's input errors with one line; idempotent."""
    os.environ.setdefault("OMP_WAIT_POLICY", OMP_DEFAULT)
    for name in _ONCE_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, OnceFilter) for f in logger.filters):
            logger.addFilter(OnceFilter())
    for message in _ONCE_WARNINGS:
        warnings.filterwarnings("once", message=message)
    if _is_bundle_run() and not isinstance(sys.excepthook, _OneLineErrors):
        sys.excepthook = _OneLineErrors(sys.excepthook)


_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # custom/
_INPUT_ERRORS = (FileExistsError, FileNotFoundError, ValueError)


def _is_bundle_run() -> bool:
    """Whether this process is ``python -m monai.bundle ...`` (also under torchrun)."""
    argv0 = os.path.normpath(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    return argv0.endswith(os.path.join("monai", "bundle", "__main__.py"))


def input_error_of(error: BaseException) -> BaseException | None:
    """The first exception in ``error``'s chain (itself, then its causes) that is an input error
    raised by the project's own code (the innermost traceback frame lies in ``custom/``)."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, _INPUT_ERRORS) and current.__traceback__ is not None:
            tb = current.__traceback__
            while tb.tb_next is not None:
                tb = tb.tb_next
            if os.path.abspath(tb.tb_frame.f_code.co_filename).startswith(_PACKAGE_DIR + os.sep):
                return current
        current = current.__cause__ or current.__context__
    return None


class _OneLineErrors:
    """``sys.excepthook`` for bundle runs: the project's input errors as one line."""

    def __init__(self, previous) -> None:
        self.previous = previous

    def __call__(self, kind, error, tb) -> None:
        found = None if os.environ.get("CUSTOM_TRACEBACK") == "1" else input_error_of(error)
        if found is None and os.environ.get("CUSTOM_TRACEBACK") != "1":
            from custom.utils.outputs import os_error_line

            found = os_error_line(error)  # a full disk, a read-only folder, ...: the path and why
        if found is None:
            self.previous(kind, error, tb)
            return
        sys.stderr.write(f"error: {found}\n")  # the interpreter then exits with status 1
