"""Measurement helpers shared by the benchmarks (:mod:`.train`, :mod:`.infer`, :mod:`.evaluate`)
and the GPU check (:mod:`custom.tools.bench.gpu_check`): medians, device synchronisation, progress bars
on stderr, the resident-memory peak and glibc's mmap threshold."""

from __future__ import annotations

import resource
import statistics
import sys
from collections.abc import Sequence

import torch

__all__ = ["median", "sync", "progress", "peak_rss_mb", "set_mmap_threshold", "mmap_threshold"]

_MMAP_THRESHOLD: dict[str, str] = {}  # what set_mmap_threshold set, for the results' config


def set_mmap_threshold(kib: int) -> None:
    """glibc's ``mallopt(M_MMAP_THRESHOLD, kib KiB)``: allocations from that size up are mmapped
    and go back to the system when freed, instead of staying in the heap (where freed activation
    buffers of one iteration inflate the resident peak of the next). Same effect as starting
    Python with ``MALLOC_MMAP_THRESHOLD_=<bytes>``; no Python API exposes it, hence ctypes."""
    import ctypes
    import ctypes.util

    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    if not hasattr(libc, "mallopt") or libc.mallopt(-3, int(kib) * 1024) != 1:  # M_MMAP_THRESHOLD = -3
        raise OSError("mallopt(M_MMAP_THRESHOLD) is not available here (glibc only)")
    _MMAP_THRESHOLD["kib"] = f"{int(kib)} KiB"


def mmap_threshold() -> str | None:
    """The threshold :func:`set_mmap_threshold` set in this process (``"N KiB"``), else ``None``."""
    return _MMAP_THRESHOLD.get("kib")


def peak_rss_mb() -> float:
    """The process's resident-memory peak in MiB (``ru_maxrss``: KiB on Linux, bytes on macOS)."""
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / (1024 * 1024) if sys.platform == "darwin" else r / 1024


def median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs)) if xs else float("nan")


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA); a no-op on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def progress(total: int, desc: str, quiet: bool = False):
    """A tqdm bar on stderr (stdout stays for ``--json``)."""
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, file=sys.stderr, disable=quiet, leave=False, dynamic_ncols=True)
