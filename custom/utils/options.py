"""The one rule for the numeric options users override most (training configs and ``prepare``):
each value is checked by name, type and range before anything is built, and a bad one is refused
with one line naming the option (:class:`custom.utils.cli.OptionError`).

``fire`` and ``monai.bundle run`` hand values over as Python literals where they parse
(``--seed 3`` an int, ``--image_size "[64, 64]"`` a list) and as strings otherwise
(``--seed abc``, ``--learning_rate nan``); booleans are never numbers here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from custom.utils.cli import OptionError

__all__ = ["RULES", "check_option", "check_training_options"]

SEED_MAX = 2**32 - 1  # numpy's seeds: 0 .. 2**32 - 1
# name -> (kind, what the message says it expects)
RULES: dict[str, tuple[str, str]] = {
    "num_classes": ("int>=2", "an integer within 2..256 (background included)"),
    "image_size": ("size", 'two positive integers divisible by 32, such as "[448, 448]"'),
    "max_iterations": ("int>=1", "a positive integer"),
    "batch_size": ("int>=1", "a positive integer"),
    "labeled_bs": ("int>=1", "a positive integer"),
    "learning_rate": ("float>0", "a finite number above 0"),
    "seed": ("seed", f"an integer within 0..{SEED_MAX}"),
    "pretrain_iterations": ("int>=1", "a positive integer"),
    "pretrain_batch_size": ("int>=1", "a positive integer"),
    "pretrain_learning_rate": ("float>0", "a finite number above 0"),
    "review_rate": ("share", "a share above 0 and below 1, such as 0.1"),
    "block_size": ("int>=1", "a positive integer"),
    "background_per_case": ("int>=0", "an integer of at least 0"),
}


def _flag(name: str, dashes: bool) -> str:
    return "--" + (name.replace("_", "-") if dashes else name)


def _as_int(value: Any) -> int | None:
    """``value`` as an int when it is one exactly (``3``, ``"3"``, ``3.0``), else ``None``."""
    if isinstance(value, bool):
        return None
    if hasattr(value, "item") and getattr(value, "size", 1) == 1 and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, int):
        return value
    if isinstance(value, float) and math.isfinite(value) and value == int(value):
        return int(value)
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            return None
    return None


def _as_float(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if hasattr(value, "item") and getattr(value, "size", 1) == 1 and not isinstance(value, (str, bytes)):
        value = value.item()
    try:
        return float(value) if isinstance(value, (int, float, str)) else None
    except ValueError:
        return None


def check_option(name: str, value: Any, *, dashes: bool = False, flag: str | None = None) -> Any:
    """``value`` of option ``name`` (a key of :data:`RULES`) normalised (an int, a float, a list of
    two ints), or :class:`OptionError` naming ``--name`` (``--name-with-dashes`` for ``prepare``;
    ``flag`` where the command's option has another name, e.g. ``--seeds`` for one of a list)."""
    kind, expected = RULES[name]
    error = OptionError(f"{flag or _flag(name, dashes)}: expected {expected}, got {value!r}")
    if kind == "size":
        items = value
        if isinstance(value, str):
            items = [v for v in value.strip().strip("[]()").replace(",", " ").split() if v]
        if not isinstance(items, (list, tuple)) or len(items) != 2:
            raise error
        size = [_as_int(v) for v in items]
        if any(s is None or s <= 0 or s % 32 for s in size):
            raise error
        return size
    if kind == "float>0":
        number = _as_float(value)
        if number is None or not math.isfinite(number) or number <= 0:
            raise error
        return number
    if kind == "share":
        number = _as_float(value)
        if number is None or not 0 < number < 1:
            raise error
        return number
    number = _as_int(value)
    if number is None:
        raise error
    if (
        (kind == "int>=1" and number < 1)
        or (kind == "int>=0" and number < 0)
        or (kind == "int>=2" and not 2 <= number <= 256)
        or (kind == "seed" and not 0 <= number <= SEED_MAX)
    ):
        raise error
    return number


def check_training_options(**options: Any) -> dict[str, Any]:
    """Every given option checked by :func:`check_option` (``None`` values are skipped); returns them
    normalised. train.yaml runs it first (before any network, optimiser or data loader is built)."""
    return {name: check_option(name, value) for name, value in options.items() if value is not None}


def checked(options: Mapping[str, Any], *, dashes: bool = False) -> dict[str, Any]:
    """Like :func:`check_training_options` with ``prepare``'s dashed option names."""
    return {name: check_option(name, value, dashes=dashes) for name, value in options.items() if value is not None}
