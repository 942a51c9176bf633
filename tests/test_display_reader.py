"""One reader for every path: palette / 1-bit PNGs and EXIF-rotated JPEGs are read as displayed by
``custom.data prepare`` and by the configs' preprocessing (training, evaluation, inference)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import CONFIGS, REPO
from PIL import Image

from custom.data.readers import read_image_plane, read_mask_plane
from custom.data.transforms import load_image


def _grey_picture(h=40, w=56) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    return ((xx * 4 + yy * 2) % 16 * 17).astype(np.uint8)  # 16 grey levels 0..255


def _palette_png(path: Path, grey: np.ndarray) -> None:
    levels = np.unique(grey)
    indices = np.searchsorted(levels, grey).astype(np.uint8)
    image = Image.fromarray(indices, mode="P")
    palette = []
    for v in levels:
        palette += [int(v)] * 3
    image.putpalette(palette)
    image.save(path)
    assert Image.open(path).mode == "P"


def _grey(x) -> np.ndarray:
    """A MONAI-read array as one grey channel (RGB copies of a grey picture: their mean)."""
    a = np.squeeze(np.asarray(x, dtype=np.float64))
    return a[..., :3].mean(-1) if a.ndim == 3 else a


def _preprocessing(image_size=(64, 64)):
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "common.yaml"))
    parser.update({"bundle_root": str(REPO / "bundle"), "image_size": list(image_size), "model_config_file": None})
    from monai.transforms import Compose

    return Compose(parser.get_parsed_content("deterministic_transforms"))


def test_palette_png_reads_as_its_grey_levels_everywhere(tmp_path):
    grey = _grey_picture()
    _palette_png(tmp_path / "p.png", grey)
    Image.fromarray(grey, mode="L").save(tmp_path / "l.png")
    # prepare's reader
    assert np.array_equal(read_image_plane(tmp_path / "p.png").array, grey)
    # MONAI's reading order is (x, y): the transpose of (rows, cols)
    assert np.array_equal(_grey(load_image(str(tmp_path / "p.png"))), grey.T)
    # the configs' preprocessing (training, evaluation, inference): the same tensor as the plain PNG
    pre = _preprocessing()
    a = pre({"image": str(tmp_path / "p.png")})["image"]
    b = pre({"image": str(tmp_path / "l.png")})["image"]
    assert float(a.max()) > 0.9 and np.allclose(np.asarray(a), np.asarray(b))


def test_palette_mask_keeps_its_indices(tmp_path):
    mask = np.zeros((30, 20), np.uint8)
    mask[5:15, 4:12] = 1
    mask[20:25, 2:6] = 2
    image = Image.fromarray(mask, mode="P")
    image.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * 759)
    image.save(tmp_path / "m.png")
    assert np.array_equal(read_mask_plane(tmp_path / "m.png").array, mask)
    assert np.array_equal(np.squeeze(np.asarray(load_image(str(tmp_path / "m.png"), for_mask=True))), mask.T)


def test_one_bit_png_reads_as_black_and_white(tmp_path):
    bits = _grey_picture() > 127
    Image.fromarray(bits).convert("1").save(tmp_path / "b.png")
    assert Image.open(tmp_path / "b.png").mode == "1"
    expected = np.where(bits, 255, 0).astype(np.uint8)
    assert np.array_equal(read_image_plane(tmp_path / "b.png").array, expected)
    assert np.array_equal(_grey(load_image(str(tmp_path / "b.png"))), expected.T)
    pre = _preprocessing()
    assert float(pre({"image": str(tmp_path / "b.png")})["image"].max()) == pytest.approx(1.0)


def _rotated_jpeg(path: Path, stored: np.ndarray, orientation: int = 6) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(stored, mode="L").save(path, quality=100, exif=exif)


def test_exif_orientation_is_applied_by_prepare_and_the_configs(tmp_path):
    stored = np.zeros((40, 64), np.uint8)  # 40 rows x 64 cols as stored
    stored[:, :8] = 255  # a bright band on the stored left edge
    _rotated_jpeg(tmp_path / "r.jpg", stored)  # Orientation 6: displayed rotated 90 degrees clockwise
    displayed = np.asarray(Image.open(tmp_path / "r.jpg").transpose(Image.Transpose.ROTATE_270))
    assert displayed.shape == (64, 40)
    plane = read_image_plane(tmp_path / "r.jpg")
    assert plane.array.shape == (64, 40) and np.abs(plane.array.astype(int) - displayed).max() <= 2
    assert plane.array[:8].mean() > 200  # the band is on top, as displayed
    monai = _grey(load_image(str(tmp_path / "r.jpg")))
    assert monai.shape == (40, 64)  # (x, y) of the displayed 64 x 40 image
    assert np.abs(monai.T - plane.array).max() <= 2
    # the inference preprocessing keeps the displayed size as the one masks are written at
    out = _preprocessing()({"image": str(tmp_path / "r.jpg")})["image"]
    assert tuple(int(v) for v in out.meta["spatial_shape"]) == (40, 64)


def test_prepare_accepts_a_mask_drawn_on_the_displayed_image(tmp_path):
    from custom.data.prepare import prepare

    src = tmp_path / "src"
    (src / "images").mkdir(parents=True)
    (src / "labels").mkdir()
    stored = np.full((40, 64), 60, np.uint8)
    for i in range(3):
        _rotated_jpeg(src / "images" / f"c{i}.jpg", stored)
        mask = np.zeros((64, 40), np.uint8)  # drawn on the displayed 64 x 40 image
        mask[10:30, 10:30] = 1
        Image.fromarray(mask).save(src / "labels" / f"c{i}.png")
    out = tmp_path / "out"
    prepare("folder", str(src), str(out), val_fraction=0.34, test_fraction=0.0, seed=0)
    written = sorted((out / "images").glob("*.png")) if (out / "images").is_dir() else []
    assert written and all(np.asarray(Image.open(p)).shape == (64, 40) for p in written)


def test_a_mask_of_the_stored_orientation_is_refused_naming_the_rotation(tmp_path):
    from custom.data.errors import DataValidationError
    from custom.data.prepare import prepare

    src = tmp_path / "src"
    (src / "images").mkdir(parents=True)
    (src / "labels").mkdir()
    _rotated_jpeg(src / "images" / "c0.jpg", np.full((40, 64), 60, np.uint8))
    Image.fromarray(np.zeros((40, 64), np.uint8)).save(src / "labels" / "c0.png")  # drawn on the stored pixels
    with pytest.raises(DataValidationError, match=r"EXIF Orientation 6 rotates it by 90 degrees"):
        prepare("folder", str(src), str(tmp_path / "out"), val_fraction=0.0, test_fraction=0.0, progress=False)
