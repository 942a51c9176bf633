"""Batch perturbations of the self-ensembling terms, on the images' device, drawn from a seeded
CPU generator (reproducible on any device).

They act on whole training batches between the two streams of one iteration, where MONAI's
dictionary transforms (one sample at a time, on the data loader's side) cannot reach: a box
shared by an image and its pseudo-label map, and an intensity change of images already on the
device. The blur itself is torchvision's ``gaussian_blur``.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
from torch import nn
from torchvision.transforms.functional import gaussian_blur as _tv_gaussian_blur

__all__ = ["perturb_intensity", "random_boxes", "cutmix", "gaussian_blur", "strong_intensity", "frozen_norm_statistics"]


def perturb_intensity(
    x: torch.Tensor,
    gamma: tuple[float, float] = (0.5, 1.5),
    scale: tuple[float, float] = (0.8, 1.2),
    noise_std: float = 0.05,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """A strongly perturbed copy of images in [0, 1]: per image ``clip(s * x ** g + n, 0, 1)``
    with ``g ~ U(gamma)``, ``s ~ U(scale)`` (drawn from ``generator``) and Gaussian noise ``n``
    of std ``noise_std``; the same intensity changes as the labelled augmentation, applied to
    a whole batch on its device (no geometry, so the pseudo-labels stay aligned)."""
    n = x.shape[0]
    u = torch.rand(2, n, generator=generator).to(x.device, x.dtype).view(2, n, *([1] * (x.ndim - 1)))
    g = gamma[0] + (gamma[1] - gamma[0]) * u[0]
    s = scale[0] + (scale[1] - scale[0]) * u[1]
    out = s * x.clamp_min(0).pow(g)
    if noise_std > 0:
        out = out + noise_std * torch.randn_like(x)
    return out.clamp(0.0, 1.0)


def _uniform(n: int, low: float, high: float, generator: torch.Generator | None) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=generator, dtype=torch.float64)


def random_boxes(
    n: int,
    height: int,
    width: int,
    prob: float = 1.0,
    area: tuple[float, float] = (0.02, 0.4),
    ratio: tuple[float, float] = (0.3, 1 / 0.3),
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """``n x 1 x H x W`` float masks, 1 inside one axis-aligned box per image, 0 elsewhere.

    With probability ``prob`` an image gets a box (else its mask is all 0) covering a fraction
    ``a ~ U(area)`` of the image with aspect ``r ~ U(ratio)`` relative to the image's own:
    ``h = H sqrt(a r)``, ``w = W sqrt(a / r)`` (clipped to the image), at a uniform position
    inside the image. UniMatch's CutMix box: ``prob 0.5, area (0.02, 0.4), ratio (0.3, 1/0.3)``;
    BCP's copy-paste box: ``prob 1, area 4/9, ratio 1`` (two thirds of each side).
    """
    if not 0.0 <= prob <= 1.0:
        raise ValueError(f"box prob must be within [0, 1], got {prob}")
    if not 0.0 < area[0] <= area[1] <= 1.0 or not 0.0 < ratio[0] <= ratio[1]:
        raise ValueError(f"box area must be within (0, 1] and ratio positive, got area {area}, ratio {ratio}")
    keep = torch.rand(n, generator=generator, dtype=torch.float64) < prob
    a, r = _uniform(n, *area, generator), _uniform(n, *ratio, generator)
    pos = torch.rand(2, n, generator=generator, dtype=torch.float64)
    masks = torch.zeros(n, 1, height, width)
    for i in range(n):
        if not keep[i]:
            continue
        bh = min(height, max(1, int(round(height * math.sqrt(a[i] * r[i])))))
        bw = min(width, max(1, int(round(width * math.sqrt(a[i] / r[i])))))
        top = int(pos[0, i] * (height - bh + 1))
        left = int(pos[1, i] * (width - bw + 1))
        masks[i, :, top : top + bh, left : left + bw] = 1.0
    return masks.to(device) if device is not None else masks


def cutmix(a: torch.Tensor, b: torch.Tensor, box: torch.Tensor) -> torch.Tensor:
    """``b`` inside the box, ``a`` outside: ``a (1 - box) + b box`` (``box`` broadcasts over channels).
    The same call mixes images, probabilities or pseudo-label maps, so they stay aligned."""
    box = box.to(device=a.device, dtype=a.dtype)
    return a * (1 - box) + b.to(a.dtype) * box


def gaussian_blur(
    x: torch.Tensor,
    prob: float = 0.5,
    sigma: tuple[float, float] = (0.1, 2.0),
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Each image blurred with probability ``prob`` by a Gaussian of ``sigma ~ U(sigma)`` (kernel
    ``2 ceil(3 sigma) + 1``, reflect padding); the others unchanged."""
    n = x.shape[0]
    apply = torch.rand(n, generator=generator) < prob
    sig = _uniform(n, *sigma, generator)
    out = x.clone()
    for i in torch.nonzero(apply).flatten().tolist():
        s = float(sig[i])
        k = 2 * math.ceil(3 * s) + 1
        k = min(k, 2 * ((min(x.shape[-2:]) - 1) // 2) + 1)  # reflect padding needs a kernel within the image
        out[i] = _tv_gaussian_blur(x[i], [k, k], [s, s])
    return out


def strong_intensity(
    x: torch.Tensor,
    generator: torch.Generator | None = None,
    gamma: tuple[float, float] = (0.5, 1.5),
    scale: tuple[float, float] = (0.8, 1.2),
    noise_std: float = 0.05,
    blur_prob: float = 0.5,
    blur_sigma: tuple[float, float] = (0.1, 2.0),
) -> torch.Tensor:
    """The strong, geometry-free view of images in [0, 1]: gamma, contrast scale and Gaussian
    noise (:func:`perturb_intensity`), then a Gaussian blur with probability
    ``blur_prob``; no geometry, so pseudo-labels of the clean images stay aligned."""
    out = perturb_intensity(x, gamma=gamma, scale=scale, noise_std=noise_std, generator=generator)
    if blur_prob > 0:
        out = gaussian_blur(out, blur_prob, blur_sigma, generator).clamp(0.0, 1.0)
    return out


_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


@contextlib.contextmanager
def frozen_norm_statistics(module: nn.Module) -> Iterator[nn.Module]:
    """Within the block, batch-normalisation layers of ``module`` still normalise with the batch's
    statistics (training mode) but leave their running statistics unchanged (momentum 0).

    The running statistics are what the network normalises with at inference, so they are kept
    to the images it will see there: strongly perturbed, CutMixed or copy-pasted views would
    pull them away from clean frames (the UNeXt is sensitive to them: see bundle/docs/comparison.md,
    "the shared-batch drop"). PyTorch has no switch for this, hence the small context manager.
    """
    saved = []
    for m in module.modules():
        if isinstance(m, _BATCH_NORMS) and m.track_running_stats and m.momentum is not None:
            saved.append((m, m.momentum))
            m.momentum = 0.0
    try:
        yield module
    finally:
        for m, momentum in saved:
            m.momentum = momentum
