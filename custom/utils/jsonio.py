"""The one reader of the project's JSON files (datalists, weight records, locks, the demo set's
marker): any file that is not JSON the project can use (invalid, not UTF-8, or nested so deeply
that Python's parser gives up with a ``RecursionError``) is a ``ValueError`` naming the file."""

from __future__ import annotations

import json
import os
from typing import Any

__all__ = ["load_json"]


def load_json(path: str | os.PathLike) -> Any:
    """The parsed content of ``path``; ``OSError`` when it cannot be read, ``ValueError`` naming it
    when it is not usable JSON."""
    with open(path, "rb") as f:
        raw = f.read()
    try:
        return json.loads(raw.decode("utf-8-sig"))
    except UnicodeDecodeError as e:
        raise ValueError(f"{os.fspath(path)}: not UTF-8 text ({e.reason} at byte {e.start})") from e
    except json.JSONDecodeError as e:
        raise ValueError(f"{os.fspath(path)}: not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})") from e
    except RecursionError as e:
        raise ValueError(f"{os.fspath(path)}: JSON nested too deeply to read") from e
