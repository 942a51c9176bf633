"""Small MONAI-style transforms that MONAI does not provide."""

from __future__ import annotations

import threading
import warnings
from collections.abc import Hashable, Mapping

import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, RandomizableTransform

__all__ = ["ToGreyscaled", "RandAcousticShadowd", "DisplayPILReader", "load_image"]


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


class RandAcousticShadowd(RandomizableTransform, MapTransform):
    """An acoustic shadow: below a strong reflector (the skull's near arc, a bone) the beam is
    blocked and the frame darkens from that depth to the bottom. With probability ``prob`` a band of
    columns (a ``width`` share of the frame's width) is darkened from a random ``depth`` share of the
    frame downwards by a factor drawn from ``strength``, with ramps of a tenth of the band at its
    sides; the mask is left as it is: the head goes on under the shadow, which is what a model must
    learn for late-pregnancy frames where only the skull's arcs show.

    Images are MONAI-ordered ``C x W x H`` (the reader puts the width first; depth is the last axis).
    Written by hand: MONAI's ``RandCoarseDropoutd`` fills boxes, not a band that runs to the bottom
    of the frame with a partial darkening.
    """

    def __init__(
        self,
        keys: KeysCollection,
        prob: float = 0.3,
        width: tuple[float, float] = (0.1, 0.35),
        depth: tuple[float, float] = (0.15, 0.6),
        strength: tuple[float, float] = (0.1, 0.5),
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)
        self.width, self.depth, self.strength = tuple(width), tuple(depth), tuple(strength)
        self._draw: tuple[float, float, float, float] | None = None

    def randomize(self, data: object = None) -> None:
        super().randomize(None)
        if self._do_transform:
            w = self.R.uniform(*self.width)
            self._draw = (self.R.uniform(0.0, 1.0 - w), w, self.R.uniform(*self.depth), self.R.uniform(*self.strength))

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        self.randomize()
        if not self._do_transform:
            return d
        start, width, depth, strength = self._draw
        for key in self.key_iterator(d):
            img = d[key]
            n_x, n_y = img.shape[-2], img.shape[-1]
            x = torch.arange(n_x, dtype=torch.float32, device=img.device) / max(1, n_x - 1)
            ramp = max(width / 10, 1.0 / max(1, n_x))
            # 1 inside the band, falling linearly to 0 over `ramp` on each side
            across = torch.clamp(torch.minimum(x - start, start + width - x) / ramp + 0.5, 0.0, 1.0)
            y = torch.arange(n_y, dtype=torch.float32, device=img.device) / max(1, n_y - 1)
            below = (y >= depth).float()
            factor = 1.0 - (1.0 - strength) * across[:, None] * below[None, :]
            d[key] = img * factor.to(img.dtype)
        return d


def _display_pil_reader_class():
    from monai.data import PILReader

    return PILReader


class DisplayPILReader(_display_pil_reader_class()):
    """MONAI's ``PILReader`` reading files as they are displayed, through the same conversion as
    ``python -m custom.data prepare`` (:func:`custom.data.readers.display_form`): EXIF orientation
    applied, palette / 1-bit images as their grey levels (a mask, ``for_mask=True``, keeps its
    palette indices: they are the class ids). ``LoadImage(reader=DisplayPILReader())`` tries it
    first for PNG/JPEG/BMP and keeps MONAI's own readers for every other format."""

    def __init__(self, for_mask: bool = False, **kwargs) -> None:
        from functools import partial

        from custom.data.readers import display_form

        kwargs.pop("converter", None)
        super().__init__(converter=partial(display_form, for_mask=bool(for_mask)), **kwargs)
        self.for_mask = bool(for_mask)


def load_image(path: str, *, for_mask: bool = False, **kwargs):
    """``monai.transforms.LoadImage(image_only=True, reader=DisplayPILReader(for_mask), **kwargs)(path)``:
    every place outside the configs that reads an input image or a reference mask reads it so."""
    from monai.transforms import LoadImage

    kwargs.setdefault("image_only", True)
    if kwargs == {"image_only": True}:  # one loader per thread and kind: MONAI builds (and warns about)
        loaders = _LOADERS.__dict__.setdefault("by_kind", {})  # every reader for each LoadImage
        if for_mask not in loaders:
            with warnings.catch_warnings():  # MONAI's GPU DICOM decoder, absent here, warns on every build
                warnings.filterwarnings("ignore", message="NvImgCodecPydicomReader")
                loaders[for_mask] = LoadImage(reader=DisplayPILReader(for_mask=for_mask), image_only=True)
        return loaders[for_mask](path)
    return LoadImage(reader=DisplayPILReader(for_mask=for_mask), **kwargs)(path)


_LOADERS = threading.local()
