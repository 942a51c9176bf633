"""Further named test lists of a prepared dataset, to measure robustness to a change of acquisition.

``datalist.json`` may hold, beside ``test``, any number of lists named ``test_<name>``; the
comparison (``custom.tools.compare``) scores every one of them. Two commands add them:

* ``add-test``: the frames of another site or setting, with masks, read like ``prepare`` reads a
  source (any kind, optionally only some numeric ids), checked (readable, sizes, classes of this
  dataset) and refused by name when one of them is already in a training, unlabelled or validation
  list (compared by pixel content, not by name);
* ``shift``: synthetic acquisition changes of an existing list (``test`` by default), each written
  as its own list ``test_<kind>``: :data:`SHIFTS`.

Images and masks go under ``<dataset>/lists/<name>/`` (written into a temporary folder and moved
into place when complete) and the datalist is rewritten atomically. An existing list is kept
unless ``overwrite``.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from custom.utils.atomic import atomic_write_json
from custom.utils.cli import parse_bool
from custom.utils.options import check_option
from .datalist import DATALIST_NAME, load_datalist, read_datalist_file
from .errors import DataValidationError, Problem
from .options import frame_id, parse_id_ranges
from .readers import read_image_plane, read_mask_plane

__all__ = ["SHIFTS", "TRAINING_LISTS", "shift_frame", "add_test_list", "add_shifted_lists", "content_hash"]

# lists whose frames a test list must not share
TRAINING_LISTS = ("training", "unlabeled", "validation")
LISTS_DIR = "lists"


# ------------------------------------------------------------------------------ the shifts


def _zoom(image: np.ndarray, label: np.ndarray, factor: float) -> tuple[np.ndarray, np.ndarray]:
    """MONAI's ``Zoom`` about the centre, the frame kept at its size (zoom < 1: padded with black)."""
    from monai.transforms import Zoom

    def zoom(a: np.ndarray, mode: str) -> np.ndarray:
        out = Zoom(factor, mode=mode, padding_mode="constant", keep_size=True)(a[None].astype(np.float32))
        return np.asarray(out)[0]

    return np.clip(np.rint(zoom(image, "bilinear")), 0, 255).astype(np.uint8), zoom(label, "nearest").astype(
        label.dtype
    )


def _zoom_out(image, label, rng):
    """A wider field of view (a deeper setting): the anatomy shrunk to 0.7 of its size, the frame
    padded with black, as on the second PSFHS acquisition (head ~12 % of the frame against ~22 %)."""
    return (*_zoom(image, label, 0.7), 1 / 0.7)


def _depth_crop(image, label, rng):
    """A shallower setting: the top 75 % of the rows (and the middle 75 % of the columns, to keep
    the aspect) magnified back to the frame's size; what lay below is cut off."""
    from monai.transforms import Resize

    h, w = image.shape
    ch, cw = int(round(0.75 * h)), int(round(0.75 * w))
    x0 = (w - cw) // 2
    crop_i, crop_l = image[:ch, x0 : x0 + cw], label[:ch, x0 : x0 + cw]
    img = np.asarray(Resize((h, w), mode="bilinear")(crop_i[None].astype(np.float32)))[0]
    lab = np.asarray(Resize((h, w), mode="nearest")(crop_l[None].astype(np.float32)))[0]
    return np.clip(np.rint(img), 0, 255).astype(np.uint8), lab.astype(label.dtype), 0.75


def _gain_gamma(image, label, rng):
    """Another gain and dynamic range: ``255 * min(1, 1.3 (x / 255) ** 0.7)`` (brighter, flatter)."""
    x = image.astype(np.float32) / 255.0
    return np.clip(np.rint(255.0 * np.minimum(1.0, 1.3 * x**0.7)), 0, 255).astype(np.uint8), label, 1.0


def _low_res(image, label, rng):
    """A coarser probe or a smaller stored frame: area down-sampling to 0.4 of each side, bilinear back."""
    from monai.transforms import Resize

    h, w = image.shape
    small = Resize((max(1, int(0.4 * h)), max(1, int(0.4 * w))), mode="area")(image[None].astype(np.float32))
    back = np.asarray(Resize((h, w), mode="bilinear")(small))[0]
    return np.clip(np.rint(back), 0, 255).astype(np.uint8), label, 1.0


def _speckle(image, label, rng):
    """Stronger speckle: multiplicative noise ``x (1 + 0.35 n)``, ``n`` unit Gaussian noise smoothed
    over about one pixel (grains rather than independent pixels), seeded per frame."""
    from scipy import ndimage

    n = ndimage.gaussian_filter(rng.standard_normal(image.shape), 1.0)
    n /= max(float(n.std()), 1e-6)
    x = image.astype(np.float32) * (1.0 + 0.35 * n)
    return np.clip(np.rint(x), 0, 255).astype(np.uint8), label, 1.0


# kind -> function(image uint8, label, rng) -> (image, label, spacing factor: new pixel size / old)
SHIFTS: dict[str, Callable[..., tuple[np.ndarray, np.ndarray, float]]] = {
    "zoom_out": _zoom_out,
    "depth_crop": _depth_crop,
    "gain_gamma": _gain_gamma,
    "low_res": _low_res,
    "speckle": _speckle,
}


def shift_frame(image: np.ndarray, label: np.ndarray, kind: str, seed: int = 0) -> tuple[np.ndarray, np.ndarray, float]:
    """One frame under the acquisition change ``kind`` (:data:`SHIFTS`); the mask moves with the
    image (nearest neighbour). Returns the image, the mask and how much larger a pixel is now."""
    if kind not in SHIFTS:
        raise ValueError(f"unknown shift {kind!r}; choose from {', '.join(SHIFTS)}")
    return SHIFTS[kind](image, label, np.random.default_rng(seed))


# ------------------------------------------------------------------------------ helpers


def content_hash(array: np.ndarray) -> str:
    """A digest of a frame's pixels (and shape): the same frame under another name or format matches."""
    a = np.ascontiguousarray(array)
    return hashlib.sha256(str(a.shape).encode() + a.tobytes()).hexdigest()


def _datalist_file(dataset_dir: str | Path) -> Path:
    path = Path(dataset_dir).expanduser()
    file = path / DATALIST_NAME if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(f"{file}: no prepared datalist (run `python -m custom.data prepare` first)")
    return file


def _list_name(name: str) -> str:
    name = str(name).strip()
    if not name or not all(ch.isalnum() or ch in "_-" for ch in name):
        raise ValueError(f"--name {name!r}: use letters, digits, '_' and '-' only")
    return name if name.startswith("test_") else f"test_{name}"


def _training_hashes(datalist: Mapping[str, Any]) -> dict[str, str]:
    """Pixel digest -> ``list: image`` of every frame of the training, unlabelled and validation lists."""
    hashes = {}
    for split in TRAINING_LISTS:
        for entry in datalist.get(split) or []:
            hashes[content_hash(read_image_plane(Path(entry["image"])).array)] = f"{split}: {entry['image']}"
    return hashes


def _write_list(file: Path, list_name: str, frames: Sequence[dict[str, Any]], overwrite: bool) -> list[dict[str, Any]]:
    """Write ``frames`` (``name``, ``image``/``label`` arrays, extra entry fields) under
    ``lists/<list>/`` and add the list to the datalist; both replace what was there only when complete."""
    from .writers import write_png

    root = file.parent
    doc = read_datalist_file(file)
    if list_name in doc and not overwrite:
        raise FileExistsError(f"{file}: already has a list '{list_name}'; pass --overwrite true to replace it")
    target = root / LISTS_DIR / list_name
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{list_name}.partial-", dir=target.parent))
    entries = []
    try:
        (staging / "images").mkdir()
        (staging / "labels").mkdir()
        for frame in frames:
            rel = f"{frame['name']}.png"
            write_png(frame["image"], staging / "images" / rel)
            write_png(frame["label"].astype(np.uint8), staging / "labels" / rel)
            prefix = f"{LISTS_DIR}/{list_name}"
            entries.append({"image": f"{prefix}/images/{rel}", "label": f"{prefix}/labels/{rel}", **frame["entry"]})
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    doc[list_name] = entries
    atomic_write_json(file, doc, indent=1)
    return entries


# ------------------------------------------------------------------------------ commands


def add_shifted_lists(
    dataset_dir: str | Path,
    kinds: str | Sequence[str] = tuple(SHIFTS),
    source_list: str = "test",
    seed: int = 0,
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, int]:
    """Write ``test_<kind>`` for every shift ``kind``: each frame of ``source_list`` under that
    acquisition change (:func:`shift_frame`, seeded by ``seed`` and the frame's position), its
    mask moved with it and its pixel spacing (where known) scaled with the zoom. A reference head
    circumference is kept where the whole head stays in the frame's scale (not for ``depth_crop``,
    which may cut it). Returns ``{list name: frames}``."""
    from tqdm.auto import tqdm

    overwrite, progress = parse_bool(overwrite, "overwrite"), parse_bool(progress, "progress")
    seed = check_option("seed", seed, flag="--seed")
    kinds_l = [k.strip() for k in (kinds.split(",") if isinstance(kinds, str) else kinds) if str(k).strip()]
    unknown = [k for k in kinds_l if k not in SHIFTS]
    if unknown or not kinds_l:
        raise ValueError(f"--kinds {','.join(kinds_l) or '(none)'}: choose from {', '.join(SHIFTS)}")
    repeated = sorted({k for k in kinds_l if kinds_l.count(k) > 1})
    if repeated:
        raise ValueError(f"--kinds {','.join(kinds_l)}: {', '.join(repeated)} given twice; name each kind once")
    file = _datalist_file(dataset_dir)
    datalist = load_datalist(file)
    entries = datalist.get(source_list)
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"{file}: no '{source_list}' list to shift")
    unlabelled = [e["image"] for e in entries if not e.get("label")]
    if unlabelled:
        raise ValueError(f"{file}: '{source_list}' entry {unlabelled[0]} has no mask; a test list needs masks")
    written = {}
    for kind in kinds_l:
        frames = []
        for i, entry in enumerate(tqdm(entries, desc=kind, unit="image", disable=not progress)):
            image = read_image_plane(Path(entry["image"])).array
            label = read_mask_plane(Path(entry["label"])).array
            img, lab, factor = shift_frame(image, label, kind, seed=int(seed) * 1_000_003 + i)
            extra = {k: v for k, v in entry.items() if k not in ("image", "label")}
            if "spacing" in extra:
                extra["spacing"] = [float(s) * factor for s in extra["spacing"]]
            if kind == "depth_crop":
                extra.pop("hc_mm", None)
            extra["shift"] = kind
            name = Path(entry["image"]).name.split(".")[0]
            frames.append({"name": name, "image": img, "label": lab, "entry": extra})
        name = f"test_{kind}" if source_list == "test" else f"test_{source_list.removeprefix('test_')}_{kind}"
        written[name] = len(_write_list(file, name, frames, overwrite))
    return written


def add_test_list(
    dataset_dir: str | Path,
    name: str,
    source: str | Path,
    kind: str = "folder",
    ids: str | None = None,
    overwrite: bool = False,
    progress: bool = True,
    **source_options: Any,
) -> int:
    """Add the frames of ``source`` (read as dataset ``kind``, like ``prepare``; ``ids`` keeps the
    file names whose leading number is in those ranges, e.g. ``4950-4999``; HC18: the subject, ``650-699``) as the test list ``test_<name>``. Every pair
    is checked first (readable, same size, classes of this dataset); a frame already in a
    training, unlabelled or validation list (same pixels) is refused by name. Returns the count."""
    from .sources import discover, kind_options
    from .validate import validate_samples

    overwrite, progress = parse_bool(overwrite, "overwrite"), parse_bool(progress, "progress")
    file = _datalist_file(dataset_dir)
    list_name = _list_name(name)
    datalist = load_datalist(file)
    num_classes = int(datalist.get("num_classes", 2))
    kind = str(kind).lower()
    discovery = discover(kind, Path(source).expanduser(), kind_options(kind, source_options, progress=progress))
    if discovery.num_classes != num_classes:
        raise ValueError(f"{source}: {discovery.num_classes} classes, but {file} has {num_classes}")
    samples = sorted(discovery.samples, key=lambda s: s.name)
    if ids is not None and str(ids) != "":
        wanted = parse_id_ranges(ids, "--ids")
        samples = [s for s in samples if frame_id(s.name) in wanted]
        if not samples:
            raise ValueError(f"--ids {ids}: no frame of {source} has an id in this range")
    checked, problems = validate_samples(samples, num_classes, progress=progress)
    problems = discovery.problems + problems
    if problems:
        raise DataValidationError(problems, context=str(source), hint="")
    if not checked:
        raise DataValidationError([Problem(str(source), "no image/mask pair found")], context="nothing to add", hint="")
    seen = _training_hashes(datalist)
    frames, overlap = [], []
    for c in checked:
        image = c.sample.load_image().array
        where = seen.get(content_hash(image))
        if where:
            overlap.append(Problem(c.sample.image_file, f"the same frame is in {where}; a test frame must be unseen"))
        entry = {
            "group": c.sample.group,
            "name": c.sample.name,
            "source": str(Path(source).resolve()),
            **c.sample.extra,
        }  # e.g. HC18's reference head circumference (hc_mm)
        if c.spacing is not None:
            entry["spacing"] = [float(s) for s in c.spacing]
        frames.append({"name": c.sample.name, "image": image, "label": c.sample.load_label().array, "entry": entry})
    if overlap:
        raise DataValidationError(overlap, context="frames already used for training or validation", hint="")
    return len(_write_list(file, list_name, frames, overwrite))


def describe(dataset_dir: str | Path) -> str:
    """One line per list of the datalist with its frame count (for the commands' output)."""
    doc = json.loads(_datalist_file(dataset_dir).read_text(encoding="utf-8"))
    return "\n".join(f"  {k:<22} {len(v):>5} images" for k, v in doc.items() if isinstance(v, list))
