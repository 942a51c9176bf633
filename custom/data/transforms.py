"""Small MONAI-style transforms that MONAI does not provide."""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform

__all__ = ["ToGreyscaled"]


class ToGreyscaled(MapTransform):
    """Channel-first image to one channel: RGB/RGBA -> mean of R, G, B (alpha dropped);
    a trailing singleton depth (2D NIfTI saved as H x W x 1) is squeezed.

    MONAI has no dictionary RGB-to-grey transform; ultrasound exports are often RGB copies
    of a grey image, so the plain channel mean keeps their values.
    """

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            img = d[key]
            if img.ndim == 4 and img.shape[-1] == 1:
                img = img[..., 0]
            if img.ndim != 3:
                raise ValueError(
                    f"{key}: expected a 2D image (C x H x W after loading), got shape {tuple(img.shape)}"
                    f" from {getattr(img, 'meta', {}).get('filename_or_obj', 'unknown file')}"
                )
            if img.shape[0] in (3, 4):
                img = img[:3].float().mean(dim=0, keepdim=True)
            elif img.shape[0] != 1:
                raise ValueError(
                    f"{key}: cannot make {img.shape[0]} channels greyscale"
                    f" ({getattr(img, 'meta', {}).get('filename_or_obj', 'unknown file')})"
                )
            d[key] = img
        return d
