"""Parsing of the option values that arrive as strings from the command line (via fire) or as
Python values from code: label maps, id ranges, name lists."""

from __future__ import annotations

import ast
from collections.abc import Iterable
from typing import Any

from custom.utils.cli import OptionError

__all__ = ["parse_label_map", "parse_id_ranges", "parse_names", "parse_group_list"]


def _items(value: Any) -> list[Any]:
    """A comma-separated string or an iterable as a flat list of non-empty items."""
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    if isinstance(value, Iterable):
        return [item for part in value for item in _items(part)] if not isinstance(value, dict) else [value]
    return [value]


def parse_label_map(value: Any) -> dict[int, int] | None:
    """Raw mask value -> class id, from a dict, ``"255:1"``, ``"0:0,255:1"`` or ``"{255: 1}"``."""
    if value is None or value == "" or value == {}:
        return None
    error = OptionError(f"--label-map {value!r}: expected RAW:CLASS pairs like '255:1' or '0:0,128:1,255:2', or a dict")
    if isinstance(value, str) and value.strip().startswith("{"):
        try:
            value = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError) as exc:
            raise error from exc
    try:
        if isinstance(value, dict):
            pairs = value.items()
        else:
            pairs = [str(item).split(":") for item in _items(value)]
        mapping = {int(raw): int(class_id) for raw, class_id in pairs}
    except (ValueError, TypeError) as exc:
        raise error from exc
    if any(class_id < 0 or class_id > 255 for class_id in mapping.values()):
        raise OptionError(f"--label-map {value!r}: class ids must be within 0..255")
    return mapping


def frame_id(name: str) -> int | None:
    """The id an id range selects a frame by: the leading number of its file name (PSFHS ``04900``
    is 4900; HC18 ``650_HC`` and ``650_2HC`` are subject 650); ``None`` without one."""
    digits = len(name) - len(name.lstrip("0123456789"))
    return int(name[:digits]) if digits else None


def parse_id_ranges(value: Any, option: str = "--test-ids") -> set[int]:
    """Integer ids from ``"4500-4799"``, ``"4500-4799,4900"``, an int or a list of those; a bad value
    is refused naming ``option``."""
    ids: set[int] = set()
    for item in _items(value):
        text = str(item).strip()
        try:
            if "-" in text.lstrip("-"):
                start, end = (int(part) for part in text.split("-", 1))
                if end < start:
                    raise ValueError
                ids.update(range(start, end + 1))
            else:
                ids.add(int(text))
        except ValueError as exc:
            raise OptionError(f"{option} {value!r}: '{text}' is not an id or an id range like 4500-4799") from exc
    return ids


def parse_names(value: Any) -> tuple[str, ...] | None:
    """Class names from ``"background,head"`` or a list; None when not given."""
    if value is None or value == "":
        return None
    return tuple(str(item) for item in _items(value))


def parse_group_list(value: Any) -> list[str | int]:
    """Group ids from ``"010,012"`` or a list; ints stay ints (fire turns ``10`` into an int)."""
    if value is None or value == "":
        return []
    return [item if isinstance(item, int) else str(item) for item in _items(value)]
