"""Research tools (not shipped in the packaged bundle): method comparison, benchmarks, the GPU check."""

from custom.utils.lazy import lazy_submodules

__getattr__ = lazy_submodules(__name__, __path__)
