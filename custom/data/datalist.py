"""Reading a prepared ``datalist.json`` with its file paths made absolute."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .splits import SPLITS

__all__ = ["DATALIST_NAME", "PATH_KEYS", "load_datalist", "load_split", "datalist_num_classes", "datalist_class_names"]

DATALIST_NAME = "datalist.json"
PATH_KEYS = ("image", "label")


def load_datalist(path: str | Path) -> dict[str, Any]:
    """Load ``datalist.json`` (or ``<folder>/datalist.json``) with "image"/"label" made absolute.

    Paths are resolved against the folder holding the file. Hand-written rather than
    ``monai.data.load_decathlon_datalist``, which reads one key at a time and fails on an empty
    ``test`` list.
    """
    path = Path(path)
    if path.is_dir():
        path = path / DATALIST_NAME
    with path.open(encoding="utf-8") as handle:
        datalist = json.load(handle)
    base = path.resolve().parent
    for split in SPLITS:
        for entry in datalist.get(split, []):
            for key in PATH_KEYS:
                if isinstance(entry.get(key), str):
                    entry[key] = os.path.normpath(base / entry[key])
    return datalist


def load_split(path: str | Path, split: str, require_labels: bool = True, allow_empty: bool = False) -> list[dict[str, Any]]:
    """One list of a datalist, paths absolute, checked before training touches it.

    Raises ``FileNotFoundError`` for a missing datalist or a listed file that is absent, and
    ``ValueError`` naming the datalist and the list for a missing or empty list or an entry
    without a label where labels are required.
    """
    path = Path(path)
    file = path / DATALIST_NAME if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(f"datalist not found: {file} (prepare one with `python -m custom.data prepare`)")
    try:
        datalist = load_datalist(file)
    except json.JSONDecodeError as e:
        raise ValueError(f"{file}: not valid JSON ({e})") from e
    if split not in datalist:
        raise ValueError(f"{file}: no '{split}' list (it has {sorted(k for k, v in datalist.items() if isinstance(v, list))})")
    entries = datalist[split]
    if not entries and not allow_empty:
        raise ValueError(f"{file}: the '{split}' list is empty")
    for i, entry in enumerate(entries):
        if "image" not in entry:
            raise ValueError(f"{file}: entry {i} of '{split}' has no 'image'")
        keys = ("image", "label") if require_labels else ("image",)
        if require_labels and "label" not in entry:
            raise ValueError(f"{file}: entry {i} of '{split}' ({entry['image']}) has no 'label'")
        for key in keys:
            if not os.path.isfile(entry[key]):
                raise FileNotFoundError(f"{file}: '{split}' entry {i}: {key} file not found: {entry[key]}")
    return entries


def datalist_num_classes(path: str | Path, default: int = 2) -> int:
    """``num_classes`` recorded in a datalist by ``custom.data prepare`` (``default`` when absent)."""
    path = Path(path)
    file = path / DATALIST_NAME if path.is_dir() else path
    try:
        with file.open(encoding="utf-8") as handle:
            return int(json.load(handle).get("num_classes", default))
    except (OSError, ValueError):
        return default


def datalist_class_names(path: str | Path, num_classes: int) -> dict[int, str]:
    """Foreground ``{label: name}`` from a datalist's ``labels`` (``{name: label}``, written by
    ``custom.data prepare``); ``class_<label>`` for labels it does not name or when absent."""
    path = Path(path)
    file = path / DATALIST_NAME if path.is_dir() else path
    try:
        with file.open(encoding="utf-8") as handle:
            labels = json.load(handle).get("labels") or {}
        named = {int(label): str(name) for name, label in labels.items()}
    except (OSError, ValueError, TypeError, AttributeError):
        named = {}
    return {c: named.get(c, f"class_{c}") for c in range(1, int(num_classes))}
