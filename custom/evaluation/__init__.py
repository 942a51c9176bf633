"""Evaluation: metrics (Dice, HD95, ASD with the empty-mask policy), scoring a network on a
datalist, head circumference, overlays.
"""

from custom.utils.lazy import lazy_submodules

__getattr__ = lazy_submodules(__name__, __path__)
