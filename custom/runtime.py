"""Process defaults applied when ``custom`` is imported (it imports nothing heavy, so this runs
before torch wherever the project starts Python itself).

- ``OMP_WAIT_POLICY`` becomes ``PASSIVE`` unless it is already set: idle OpenMP threads then
  yield the cores instead of spinning (2.6x faster training iterations on a loaded 2-core
  machine). ``OMP_WAIT_POLICY=ACTIVE`` (or any value) in the environment overrides it. OpenMP
  reads it when torch loads, so it takes effect where ``custom`` is imported before torch:
  ``python -m custom.compare``, ``custom.bench``, ``custom.data``, ``custom.package`` and the
  training subprocesses they start (which inherit the environment). ``python -m monai.bundle``
  imports torch before any config, so the README's bundle commands set it on the command line.
- warnings that MONAI repeats for every image reader it builds (``nvImageCodec is not
  available``, 50-315 times a run) are shown once per process.
"""

from __future__ import annotations

import logging
import os
import warnings

__all__ = ["OMP_DEFAULT", "apply_defaults", "OnceFilter"]

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


def apply_defaults() -> None:
    """Set ``OMP_WAIT_POLICY`` (unless set) and show repeated library warnings once; idempotent."""
    os.environ.setdefault("OMP_WAIT_POLICY", OMP_DEFAULT)
    for name in _ONCE_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, OnceFilter) for f in logger.filters):
            logger.addFilter(OnceFilter())
    for message in _ONCE_WARNINGS:
        warnings.filterwarnings("once", message=message)
