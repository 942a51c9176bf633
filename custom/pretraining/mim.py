"""Masked image modelling of the Swin-Unet's encoder (SimMIM: Xie et al., CVPR 2022).

Why this objective, and not the whole Swin-Unet inpainting zeroed pixels (a first probe:
bundle/docs/measurements.md, "Pretraining"): SimMIM masks at the level of the patch tokens, with
a learned mask token, so the image the encoder sees is never altered the way no fine-tuning image
is (black squares); the encoder alone predicts the pixels of the masked cells through one linear
layer, so it cannot copy a neighbouring pixel through a skip connection and must model the
anatomy; raw pixels with an L1 loss on the masked cells were the paper's best target for Swin. The
decoder is not pretrained: as with ImageNet weights, its mirrored stages start from the encoder's
(``custom.networks.load_pretrained_swin``).

Hand-written because neither MONAI nor timm provides masked image modelling for timm's Swin (timm
has the encoder only; MONAI's ``SSLHead`` is for the 3-D SwinUNETR).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.transforms import MapTransform, Randomizable
from torch import nn

from custom.networks.swin_unet import SwinUnet

__all__ = ["MaskedImageModel", "MaskedReconstructionLoss", "RandPatchMaskd", "prepare_masked_batch", "token_grid"]

PATCH = 4  # the Swin patch embedding's stride: one token per 4 x 4 pixels


def token_grid(image_size: int) -> int:
    return int(image_size) // PATCH


class RandPatchMaskd(Randomizable, MapTransform):
    """Adds ``mask_key``: a ``(S/4) x (S/4)`` float map over the patch tokens of an ``S x S`` image,
    1 where the token is masked. ``mask_ratio`` of the ``mask_patch_size``-pixel cells are masked
    (SimMIM: 32 px cells at ratio 0.6 for 192-224 px images), chosen at random per image."""

    def __init__(
        self,
        keys: Any = "image",
        image_size: int = 128,
        mask_patch_size: int = 16,
        mask_ratio: float = 0.6,
        mask_key: str = "mask",
    ) -> None:
        MapTransform.__init__(self, keys)
        image_size, mask_patch_size = int(image_size), int(mask_patch_size)
        if mask_patch_size % PATCH or image_size % mask_patch_size:
            raise ValueError(
                f"mask_patch_size: expected a multiple of {PATCH} that divides the image size {image_size}, "
                f"got {mask_patch_size}"
            )
        if not 0.0 < float(mask_ratio) < 1.0:
            raise ValueError(f"mask_ratio: expected a number between 0 and 1 (exclusive), got {mask_ratio!r}")
        self.cells = image_size // mask_patch_size
        self.scale = mask_patch_size // PATCH
        self.count = int(np.ceil(self.cells * self.cells * float(mask_ratio)))
        self.mask_key = mask_key
        self._mask: np.ndarray | None = None

    def randomize(self, data: Any = None) -> None:
        cells = np.zeros(self.cells * self.cells, dtype=np.float32)
        cells[self.R.permutation(cells.size)[: self.count]] = 1.0
        self._mask = cells.reshape(self.cells, self.cells).repeat(self.scale, 0).repeat(self.scale, 1)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        self.randomize()
        d[self.mask_key] = torch.from_numpy(self._mask)
        return d


class MaskedImageModel(nn.Module):
    """The Swin-Unet's encoder (its own modules, shared with ``transformer``) with a learned mask
    token replacing the masked patch tokens, and SimMIM's one-layer head: a 1x1 convolution from
    the deepest stage to the pixels of each of its cells, then a pixel shuffle. ``forward(image,
    mask)`` returns the reconstructed image (``B x in_channels x S x S``)."""

    def __init__(self, transformer: SwinUnet, amp: bool = False, amp_dtype: str = "bfloat16") -> None:
        super().__init__()
        if not isinstance(transformer, SwinUnet):
            raise ValueError(f"masked image modelling pretrains a SwinUnet, got {type(transformer).__name__}")
        self.encoder = transformer.encoder
        self.in_channels, self.img_size = transformer.in_channels, transformer.img_size
        self.mask_token = nn.Parameter(torch.zeros(1, 1, 1, self.encoder.embed_dim))
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        stride = PATCH * 2 ** (transformer.num_stages - 1)
        self.head = nn.Sequential(
            nn.Conv2d(self.encoder.num_features, stride * stride * self.in_channels, kernel_size=1),
            nn.PixelShuffle(stride),
        )
        self.amp, self.amp_dtype = bool(amp), getattr(torch, str(amp_dtype))

    def forward(self, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        with torch.autocast(image.device.type, dtype=self.amp_dtype, enabled=self.amp):
            x = self.encoder.patch_embed(image)  # B, H/4, W/4, C
            w = mask.unsqueeze(-1).to(x.dtype)
            x = x * (1.0 - w) + self.mask_token.to(x.dtype) * w
            x = self.encoder.norm(self.encoder.layers(x))  # B, H/32, W/32, 8C
            return self.head(x.permute(0, 3, 1, 2)).float()


class MaskedReconstructionLoss(nn.Module):
    """Mean L1 distance between the reconstruction and the image over the masked pixels only
    (SimMIM's loss); ``target`` is the pair ``(image, token mask)``."""

    def forward(self, pred: torch.Tensor, target: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        image, mask = target
        scale = image.shape[-1] // mask.shape[-1]
        pixels = mask.repeat_interleave(scale, 1).repeat_interleave(scale, 2).unsqueeze(1).to(pred.dtype)
        l1 = F.l1_loss(pred, image.to(pred.dtype), reduction="none")
        return (l1 * pixels).sum() / (pixels.sum() * image.shape[1] + 1e-5)


def prepare_masked_batch(batchdata: Mapping[str, Any], device: Any = None, non_blocking: bool = False, **kwargs: Any):
    """MONAI ``prepare_batch`` of the pretraining engine: the network gets ``(image, mask)``, the loss
    ``(image, mask)`` as its target."""
    image = torch.as_tensor(batchdata["image"]).to(device=device, non_blocking=non_blocking)
    mask = torch.as_tensor(batchdata["mask"]).to(device=device, non_blocking=non_blocking)
    return image, (image, mask), (mask,), {}
