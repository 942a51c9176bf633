"""The sha256 of a file, the one digest the project writes into its records (the weights record
``model_config.json``, the pretrained encoder's record, the package's ``large_files.yml``)."""

from __future__ import annotations

import hashlib
import os

__all__ = ["file_sha256"]

_CACHE: dict[tuple[str, int, int], str] = {}


def file_sha256(path: str | os.PathLike) -> str:
    """The sha256 (hex) of the file at ``path`` (cached by path, size and modification time)."""
    path = os.path.abspath(os.fspath(path))
    st = os.stat(path)
    key = (path, st.st_size, st.st_mtime_ns)
    if key not in _CACHE:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        _CACHE[key] = digest.hexdigest()
    return _CACHE[key]
