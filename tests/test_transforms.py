"""Loading images of every kind into one greyscale channel."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from monai.transforms import Compose, LoadImaged
from PIL import Image

from custom.data.transforms import ToGreyscaled


def _load(path):
    return Compose([LoadImaged("image", image_only=True, ensure_channel_first=True), ToGreyscaled("image")])(
        {"image": str(path)}
    )["image"]


@pytest.mark.parametrize(
    "mode,suffix", [("L", ".png"), ("RGB", ".png"), ("RGBA", ".png"), ("RGB", ".jpg"), ("L", ".bmp")]
)
def test_images_become_one_channel(tmp_path, mode, suffix):
    grey = (np.arange(48 * 32).reshape(48, 32) % 251).astype(np.uint8)
    img = Image.fromarray(grey).convert(mode)
    path = tmp_path / f"x{suffix}"
    img.save(path, quality=100) if suffix == ".jpg" else img.save(path)
    out = _load(path)
    assert out.shape == (1, 32, 48)  # MONAI reads (x, y)
    tol = 3 if suffix == ".jpg" else 1e-4
    assert np.abs(np.asarray(out[0]).T - grey).max() <= tol


def test_nifti_2d_and_trailing_singleton(tmp_path):
    arr = np.random.default_rng(0).random((40, 30)).astype(np.float32)
    for i, data in enumerate((arr, arr[..., None])):
        path = tmp_path / f"x{i}.nii.gz"
        nib.save(nib.Nifti1Image(data, np.eye(4)), str(path))
        out = _load(path)
        assert out.shape == (1, 40, 30) and np.allclose(np.asarray(out[0]), arr)


def test_unsupported_channel_count_names_the_file(tmp_path):
    import torch
    from monai.data import MetaTensor

    x = MetaTensor(torch.zeros(5, 8, 8), meta={"filename_or_obj": "odd.tif"})
    with pytest.raises(ValueError, match="odd.tif"):
        ToGreyscaled("image")({"image": x})
