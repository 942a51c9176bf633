"""Training: the semi-supervised trainer, its handlers, the term interface and the shared terms'
losses, EMA teachers, mixup, schedules, checkpoints and multi-GPU helpers.
"""

from custom.utils.lazy import lazy_submodules

__getattr__ = lazy_submodules(__name__, __path__)
