"""A small synthetic fetal-head-like ultrasound set for the embedded demo.

Each image shows a fan-shaped field of view of speckled tissue; inside it an elliptical
head (darker brain, bright skull rim, a midline echo) at a random position, size and
angle, with acoustic shadows cast below bright structures. The mask is the filled ellipse
(1 = head). Generated deterministically from a seed, written once as PNG plus a
``datalist.json`` with ``training``, ``unlabeled`` and ``validation`` lists.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage
from custom.utils.jsonio import load_json

__all__ = ["synthetic_head_image", "ensure_demo_dataset"]


def _fan_mask(size: int, rng: np.random.Generator) -> np.ndarray:
    """Sector of a circle with its apex above the top edge (a curvilinear probe's view)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    apex_y, apex_x = -0.25 * size, size / 2 + rng.uniform(-0.05, 0.05) * size
    r = np.hypot(yy - apex_y, xx - apex_x)
    theta = np.arctan2(xx - apex_x, yy - apex_y)
    half_angle = np.deg2rad(rng.uniform(32, 40))
    return (np.abs(theta) < half_angle) & (r > 0.3 * size) & (r < 1.22 * size)


def synthetic_head_image(size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One ``size x size`` uint8 image and its uint8 mask (0 background, 1 head)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    fan = _fan_mask(size, rng)
    cy, cx = rng.uniform(0.42, 0.62) * size, rng.uniform(0.35, 0.65) * size
    a, b = rng.uniform(0.18, 0.28) * size, rng.uniform(0.13, 0.2) * size
    angle = rng.uniform(0, np.pi)
    cos, sin = np.cos(angle), np.sin(angle)
    u = ((xx - cx) * cos + (yy - cy) * sin) / a
    v = (-(xx - cx) * sin + (yy - cy) * cos) / b
    rho = np.sqrt(u**2 + v**2)
    head = rho <= 1.0

    tissue = 0.35 + 0.08 * ndimage.gaussian_filter(rng.standard_normal((size, size)), 3)
    img = tissue.copy()
    img[head] = 0.18 + 0.05 * rng.random()  # fluid-filled brain is darker
    rim = np.exp(-(((rho - 1.0) / 0.07) ** 2))  # bright skull
    img += (0.55 + 0.2 * rng.random()) * rim
    midline = (np.abs(v) < 0.05) & (np.abs(u) < 0.8)
    img[midline] += 0.25
    # acoustic shadow below the lower part of the skull: attenuation along the beam
    shadow = np.cumsum(rim * (yy > cy), axis=0) * 0.04
    img *= np.exp(-shadow)
    # multiplicative speckle (Rayleigh-like) and a slight blur, as a scanner shows it
    speckle = rng.rayleigh(scale=0.8, size=(size, size))
    img = ndimage.gaussian_filter(img * speckle, 0.6)
    img = np.where(fan, img, 0.0)
    image = np.clip(img * 255.0, 0, 255).astype(np.uint8)
    mask = (head & fan).astype(np.uint8)
    return image, mask


def _spec_hash(spec: dict) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


DEMO_MARKER = ".fetal_us_demo_dataset"
DEMO_DESCRIPTION = "synthetic fetal-head-like ultrasound demo set"


def _made_by_demo(out: Path) -> bool:
    """Whether ``out`` is a folder this module wrote: its marker file, or (sets written before the
    marker existed) a ``datalist.json`` describing the demo set with a spec hash."""
    if (out / DEMO_MARKER).is_file():
        return True
    try:
        doc = load_json(out / "datalist.json")
    except (OSError, ValueError):
        return False
    return isinstance(doc, dict) and doc.get("description") == DEMO_DESCRIPTION and "spec_hash" in doc


def ensure_demo_dataset(
    out_dir: str, n_labeled: int = 8, n_unlabeled: int = 64, n_validation: int = 16, size: int = 64, seed: int = 2025
) -> str:
    """Write the demo set to ``out_dir`` unless an identical one is already there; returns
    the datalist path. Written to a temporary folder first and moved into place, so an
    interrupted generation never leaves a half-written set.

    ``out_dir`` must be new, empty, or a demo set this function wrote (it carries the marker
    file ``.fetal_us_demo_dataset``); anything else (a prepared dataset, say) is refused with a
    ``FileExistsError`` naming it, and nothing there is touched.
    """
    from custom.utils.atomic import atomic_write_text

    spec = dict(
        n_labeled=n_labeled, n_unlabeled=n_unlabeled, n_validation=n_validation, size=size, seed=seed, version=2
    )
    out = Path(out_dir)
    datalist = out / "datalist.json"
    if out.exists() and not out.is_dir():
        raise FileExistsError(
            f"dataset_dir {out}: exists and is not a folder; the demo writes its synthetic set into "
            "a new or empty folder"
        )
    if out.is_dir() and any(out.iterdir()) and not _made_by_demo(out):
        raise FileExistsError(
            f"dataset_dir {out}: not empty and not a demo set (no {DEMO_MARKER}); the demo refuses to "
            "replace it: point dataset_dir at a new or empty folder"
        )
    if datalist.is_file():
        try:
            if load_json(datalist).get("spec_hash") == _spec_hash(spec):
                return str(datalist)
        except (OSError, ValueError, AttributeError):
            pass
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".demo_tmp_", dir=out.parent))
    previous = None
    try:
        (tmp / "images").mkdir()
        (tmp / "labels").mkdir()
        rng = np.random.default_rng(seed)
        lists: dict[str, list] = {"training": [], "unlabeled": [], "validation": []}
        counts = {"training": n_labeled, "unlabeled": n_unlabeled, "validation": n_validation}
        for split, n in counts.items():
            for i in range(n):
                name = f"{split}_{i:03d}.png"
                image, mask = synthetic_head_image(size, rng)
                Image.fromarray(image).save(tmp / "images" / name)
                Image.fromarray(mask).save(tmp / "labels" / name)
                entry = {"image": f"images/{name}", "label": f"labels/{name}", "group": f"{split}_{i:03d}"}
                lists[split].append(entry)
        doc = {
            "description": DEMO_DESCRIPTION,
            "labels": {"background": 0, "fetal head": 1},
            "num_classes": 2,
            "spec": spec,
            "spec_hash": _spec_hash(spec),
            **lists,
        }
        atomic_write_text(tmp / "datalist.json", json.dumps(doc, indent=1))
        atomic_write_text(
            tmp / DEMO_MARKER,
            "written by custom.data.demo.ensure_demo_dataset; the demo may replace this folder\n",
        )
        if out.exists():  # an empty folder or an older demo set: moved aside, removed once the new one is in place
            previous = Path(tempfile.mkdtemp(prefix=".demo_old_", dir=out.parent))
            os.replace(out, previous / "set")
        os.replace(tmp, out)
    except BaseException:
        if previous is not None and not out.exists():
            os.replace(previous / "set", out)  # put the old set back
        raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
        if previous is not None:
            shutil.rmtree(previous, ignore_errors=True)
    return str(datalist)
