"""Pre-flight checks of the files a run is about to read, as MONAI's ``LoadImage`` reads them.

Training (the labelled and validation lists of ``train.yaml``) and batch inference
(``custom.deploy.inference.InputScreen``) read every listed file once before any work starts, so a
bad file is reported with its name and the problem instead of failing deep inside a data
loader, hours later:

* unreadable, truncated or empty (0-byte) files, unsupported formats;
* images that are not 2-D (one channel, RGB/RGBA, or a 2-D NIfTI saved as ``H x W x 1``);
* non-finite values (NaN/Inf) and values outside ``intensity_range`` (16-bit or float data
  that the bundle's ``[0, 255] -> [0, 1]`` scaling would clip);
* masks (training/validation) of another size than their image, with several channels, or
  with values that are not class ids ``0..num_classes-1``.

Images smaller (or larger) than the network input are fine (down to ``MIN_SIDE`` pixels a side): ``Resized`` brings every image
to ``image_size`` and inference maps the mask back to the original size.

:func:`checked_split` raises :class:`PreflightError` (a ``ValueError``) listing every problem,
one per line, each naming its file.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .datalist import load_split

__all__ = ["PreflightError", "time_limit", "load_channel_first", "image_problem", "label_problems", "check_entries",
           "checked_split", "LABEL_SCAN_LIMIT"]

# lists longer than this skip the label-value scan (reading and size checks still run)
LABEL_SCAN_LIMIT = 5000
# smallest image side accepted: smaller images are resized up like any other, but a side of
# 1 pixel is degenerate (and MONAI's writers cannot write its mask back)
MIN_SIDE = 2


class PreflightError(ValueError):
    """Files that fail the pre-flight check; ``problems`` is a list of ``(file, problem)``."""

    def __init__(self, problems: Sequence[tuple[str, str]], context: str = "") -> None:
        self.problems = [(str(f), str(m)) for f, m in problems]
        head = f"{len(self.problems)} bad input file(s)" + (f" in {context}" if context else "")
        super().__init__("\n".join([head + ":"] + [f"  {f}: {m}" for f, m in self.problems]))


@contextlib.contextmanager
def time_limit(seconds: float | None, what: str = "") -> Iterator[None]:
    """Raise ``TimeoutError`` when the block runs longer than ``seconds`` (``signal.alarm``;
    only in the main thread of a POSIX process, elsewhere the block runs unbounded)."""
    usable = seconds and seconds > 0 and hasattr(signal, "SIGALRM") and threading.current_thread() is threading.main_thread()
    if not usable:
        yield
        return

    def _raise(signum, frame):  # noqa: ARG001
        raise TimeoutError(f"{what or 'reading'} took longer than {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, _raise)
    signal.setitimer(signal.ITIMER_REAL, float(seconds))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _reason(error: BaseException) -> str:
    text = " ".join(str(error).split())
    if len(text) > 300:
        text = text[:300] + "..."
    return f"cannot read ({type(error).__name__}: {text})" if not isinstance(error, TimeoutError) else text


def load_channel_first(path: str | Path, *, for_mask: bool = False) -> np.ndarray:
    """The file as the bundle's ``LoadImaged(image_only=True, ensure_channel_first=True)`` reads it.

    Raises ``ValueError`` saying why (missing, empty, undecodable) without the file name (the
    caller adds it); ``TimeoutError`` passes through.
    """
    from monai.transforms import LoadImage

    from .transforms import DisplayPILReader

    path = str(path)
    if not os.path.isfile(path):
        raise FileNotFoundError("file not found")
    if os.path.getsize(path) == 0:
        raise ValueError("empty file (0 bytes)")
    from .errors import ReadError
    from .readers import check_header_size

    try:
        check_header_size(Path(path))  # the same limit as `prepare`, before any pixel is decoded
    except ReadError as e:
        raise ValueError(str(e)) from e
    try:
        with np.errstate(all="ignore"):
            data = LoadImage(
                image_only=True, ensure_channel_first=True, reader=DisplayPILReader(for_mask=for_mask)
            )(path)
    except TimeoutError:
        raise
    except MemoryError as e:
        raise ValueError(f"cannot read (declared size too large for memory: {e})") from e
    except Exception as e:  # any decoder failure: corrupt, truncated, wrong format
        hint = ""
        if path.lower().endswith((".tif", ".tiff")):
            hint = " (MONAI's default LoadImage readers do not take TIFF: convert it to PNG)"
        raise ValueError(_reason(e) + hint) from e
    return np.asarray(data.detach().cpu().numpy() if hasattr(data, "detach") else data)


def _spatial(array: np.ndarray) -> tuple[int, ...]:
    """(X, Y) of a channel-first 2-D array (``C x X x Y`` or ``C x X x Y x 1``)."""
    return tuple(array.shape[1:3])


def _size(shape: Sequence[int]) -> str:
    return "x".join(str(int(s)) for s in shape)


def image_problem(array: np.ndarray, intensity_range: Sequence[float] | None = None) -> str | None:
    """Why a channel-first image array cannot be segmented, or ``None`` when it can."""
    shape = tuple(array.shape)
    two_d = array.ndim == 3 or (array.ndim == 4 and shape[-1] == 1)
    if not two_d:
        return f"not a 2-D image: array of shape {shape} after loading (channel first)"
    if shape[0] not in (1, 3, 4):
        return f"{shape[0]} channels; expected 1 (grey), 3 (RGB) or 4 (RGBA)"
    if min(_spatial(array)) < MIN_SIDE:
        return f"image of {_size(_spatial(array))} pixels: too small (each side needs at least {MIN_SIDE} pixels)"
    if not (np.issubdtype(array.dtype, np.number) or array.dtype == bool):
        return f"unsupported pixel type {array.dtype}"
    values = array[:3] if shape[0] == 4 else array  # alpha is dropped by the pipeline
    if np.issubdtype(values.dtype, np.floating) and not np.all(np.isfinite(values)):
        n = int(np.size(values) - np.count_nonzero(np.isfinite(values)))
        return f"{n} non-finite pixel value(s) (NaN/Inf)"
    if intensity_range is not None and values.size:
        low, high = float(np.min(values)), float(np.max(values))
        lo, hi = float(intensity_range[0]), float(intensity_range[1])
        if low < lo or high > hi:
            return (f"pixel values {low:g}..{high:g} outside intensity_range [{lo:g}, {hi:g}] "
                    "(16-bit or float image?): convert it to 8 bit or set intensity_range")
    return None


def label_problems(label: np.ndarray, image_spatial: Sequence[int] | None, num_classes: int,
                   scan_values: bool = True) -> list[str]:
    """Why a channel-first mask cannot train/evaluate against its image (empty list: fine)."""
    shape = tuple(label.shape)
    if not (label.ndim == 3 or (label.ndim == 4 and shape[-1] == 1)):
        return [f"mask is not 2-D: array of shape {shape} after loading (channel first)"]
    problems = []
    if shape[0] != 1:
        problems.append(f"mask has {shape[0]} channels; expected one channel of class ids")
    if image_spatial is not None and tuple(_spatial(label)) != tuple(image_spatial):
        problems.append(f"mask size {_size(_spatial(label))} differs from its image {_size(image_spatial)}")
    if scan_values and label.size:
        if np.issubdtype(label.dtype, np.floating):
            if not np.all(np.isfinite(label)):
                return problems + ["mask has non-finite values (NaN/Inf)"]
            if not np.array_equal(label, np.round(label)):
                return problems + ["mask has non-integer values; expected class ids"]
        flat = label.astype(np.int64, copy=False).ravel()
        if flat.min() < 0 or flat.max() >= num_classes:
            values = np.unique(flat)
            outside = [int(v) for v in values if v < 0 or v >= num_classes]
            shown = outside[:10] + (["..."] if len(outside) > 10 else [])
            problems.append(f"label values {shown} outside the classes 0..{num_classes - 1} (num_classes {num_classes})")
    return problems


def check_entries(entries: Sequence[Mapping[str, Any]], num_classes: int | None = None,
                  intensity_range: Sequence[float] | None = None, require_labels: bool = True,
                  label_scan_limit: int | None = LABEL_SCAN_LIMIT, timeout_s: float | None = None) -> list[tuple[str, str]]:
    """Read every ``image`` (and ``label``) of ``entries`` once; returns ``[(file, problem)]``.

    Label values are scanned only for lists of at most ``label_scan_limit`` entries (``None``:
    always); reading, dimensionality and size checks always run.
    """
    scan = label_scan_limit is None or len(entries) <= label_scan_limit
    problems: list[tuple[str, str]] = []
    for entry in entries:
        image_file = str(entry["image"])
        image_spatial = None
        try:
            with time_limit(timeout_s, f"reading {image_file}"):
                image = load_channel_first(image_file)
            problem = image_problem(image, intensity_range)
            if problem:
                problems.append((image_file, problem))
            elif image.ndim in (3, 4):
                image_spatial = _spatial(image)
        except (ValueError, OSError, TimeoutError) as e:
            problems.append((image_file, str(e)))
        label_file = entry.get("label")
        if label_file is None:
            if require_labels:
                problems.append((image_file, "no label given"))
            continue
        try:
            with time_limit(timeout_s, f"reading {label_file}"):
                label = load_channel_first(str(label_file), for_mask=True)
            for problem in label_problems(label, image_spatial, int(num_classes or 2), scan_values=scan and num_classes is not None):
                problems.append((str(label_file), problem))
        except (ValueError, OSError, TimeoutError) as e:
            problems.append((str(label_file), str(e)))
    return problems


def checked_split(datalist_file: str | Path, split: str, num_classes: int, intensity_range: Sequence[float] | None = None,
                  require_labels: bool = True, label_scan_limit: int | None = LABEL_SCAN_LIMIT,
                  batched: bool = False) -> list[dict[str, Any]]:
    """``custom.data.datalist.load_split`` (``batched``: only the keys every entry has) plus
    :func:`check_entries`: one list of a datalist, every file read once; raises
    :class:`PreflightError` listing every bad file."""
    entries = load_split(datalist_file, split, require_labels=require_labels, batched=batched)
    problems = check_entries(entries, num_classes, intensity_range, require_labels=require_labels,
                             label_scan_limit=label_scan_limit)
    if problems:
        raise PreflightError(problems, context=f"the '{split}' list of {datalist_file}")
    return entries
