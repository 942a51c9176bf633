"""Deployment: inference on files and folders, the model record beside the weights, packaging of
the shipped bundle, export.
"""

from custom.utils.lazy import lazy_submodules

__getattr__ = lazy_submodules(__name__, __path__)
