"""Data preparation: turn a dataset folder (HC18, PSFHS, ACOUSLIC-AI or any image/mask folder)
into ``images/``, ``labels/`` and ``datalist.json`` with group-wise splits for the bundle.

Command line: ``python -m custom.data prepare KIND --source PATH --out DIR [options]``.
From code: ``custom.data.prepare.prepare(kind, source, out, **options) -> summary dict`` and
``custom.data.load_datalist(path)`` (paths made absolute). The package binds ``prepare`` to the
module, not the function, so that ``custom.data.prepare.prepare`` resolves either way.
"""

from __future__ import annotations

from . import prepare
from .datalist import load_datalist
from .errors import DataValidationError, Problem, SourceLayoutError, SplitError

__all__ = ["prepare", "load_datalist", "DataValidationError", "SplitError", "SourceLayoutError", "Problem"]

from custom.utils.lazy import lazy_submodules  # noqa: E402

# the other modules (e.g. custom.data.demo, custom.data.transforms) load on first access
__getattr__ = lazy_submodules(__name__, __path__)
