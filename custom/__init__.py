"""Components of the fetal-ultrasound semi-supervised bundle, referenced by its configs.

Submodules load on first attribute access (PEP 562), so a config's ``$import custom``
makes expressions such as ``$custom.trainer.logged_terms`` resolve (MONAI binds
``$import a.b`` to the name ``a.b``, not ``a``), while ``python -m custom.data`` does not
pay for importing torch-heavy modules it does not use.
"""

import importlib
import pkgutil

from . import runtime as _runtime

# OMP_WAIT_POLICY=PASSIVE unless set, repeated library warnings once (see custom/runtime.py)
_runtime.apply_defaults()

# every module and package of this folder (found on disk, so none is forgotten)
_SUBMODULES = {m.name for m in pkgutil.iter_modules(__path__)}


def __getattr__(name: str):
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
