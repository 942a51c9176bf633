"""Lazy submodules for the packages of ``custom`` (PEP 562): a config's ``$import custom`` makes
``custom.training.trainer.X`` resolve without importing every torch-heavy module up front."""

import importlib
import pkgutil

__all__ = ["lazy_submodules"]


def lazy_submodules(package: str, path):
    """A module ``__getattr__`` importing the package's submodules (found on disk) on first access."""
    names = {m.name for m in pkgutil.iter_modules(path)}

    def __getattr__(name: str):
        if name in names:
            return importlib.import_module(f"{package}.{name}")
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
