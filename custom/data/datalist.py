"""Reading a prepared ``datalist.json`` with its file paths made absolute."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .splits import SPLITS

__all__ = ["DATALIST_NAME", "PATH_KEYS", "load_datalist"]

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
