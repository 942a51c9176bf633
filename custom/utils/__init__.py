"""Small shared utilities: command-line option parsing, atomic file writes, runtime defaults."""

from custom.utils.lazy import lazy_submodules

__getattr__ = lazy_submodules(__name__, __path__)
