"""Per-image acquisition scores of the bundle's two networks, free of MONAI Label.

:func:`divergence_scores` is THE disagreement score of the MONAI Label app's next-sample strategy
(``custom/monailabel_app/lib/activelearning/divergence.py`` calls it) and of the simulated
active-learning study (:mod:`custom.tools.active_learning`): per image, the method's information
divergence between the CNN (UNeXt) and the Transformer (Swin-Unet) averaged over the pixels,

    score(x) = mean over pixels of KL(p_cnn || p_transformer) + MIG(p_cnn, p_transformer)

(:class:`custom.training.losses.InformationDivergenceLoss` with ``reduction="image"``).
:func:`entropy_scores` (mean per-pixel entropy of one network) and :func:`cnn_features` (the
UNeXt's pooled bottleneck, to spread a batch over clusters) are the study's other scores.
Every function takes preprocessed images (``C x H x W`` tensors at the training size) and
returns one value per image, in order.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch

__all__ = ["divergence_scores", "entropy_scores", "cnn_features"]


def _batches(images: Iterable[torch.Tensor], batch_size: int, device: torch.device | str) -> Iterator[torch.Tensor]:
    """``B x C x H x W`` plain tensors on ``device``, ``batch_size`` images at a time."""
    chunk: list[torch.Tensor] = []
    for image in images:
        chunk.append(torch.as_tensor(image))
        if len(chunk) == max(1, int(batch_size)):
            yield _stack(chunk, device)
            chunk = []
    if chunk:
        yield _stack(chunk, device)


def _stack(chunk: list[torch.Tensor], device: torch.device | str) -> torch.Tensor:
    x = torch.stack(chunk).to(device)
    return x.as_tensor() if hasattr(x, "as_tensor") else x  # a MetaTensor batch as a plain tensor


@torch.no_grad()
def divergence_scores(
    cnn: torch.nn.Module,
    transformer: torch.nn.Module,
    images: Iterable[torch.Tensor],
    batch_size: int = 4,
    device: torch.device | str = "cpu",
) -> list[float]:
    """Per image, the mean over pixels of ``KL(p_cnn || p_transformer) + MIG(p_cnn, p_transformer)``,
    ``p = softmax(logits)`` in float32 (both networks in eval mode, as the caller sets them)."""
    from custom.training.losses import InformationDivergenceLoss

    divergence = InformationDivergenceLoss(reduction="image")
    out: list[float] = []
    for x in _batches(images, batch_size, device):
        p_cnn = torch.softmax(cnn(x).float(), dim=1)
        p_transformer = torch.softmax(transformer(x).float(), dim=1)
        out.extend(float(s) for s in divergence(p_cnn, p_transformer).cpu())
    return out


@torch.no_grad()
def entropy_scores(
    network: torch.nn.Module, images: Iterable[torch.Tensor], batch_size: int = 4, device: torch.device | str = "cpu"
) -> list[float]:
    """Per image, the mean over pixels of ``H(p) = -sum_c p log(p + eps)``, ``p = softmax(logits)``
    (the method's entropy, :func:`custom.training.losses.entropy`)."""
    from custom.training.losses import entropy

    out: list[float] = []
    for x in _batches(images, batch_size, device):
        per_pixel = entropy(torch.softmax(network(x).float(), dim=1))
        out.extend(float(s) for s in per_pixel.flatten(1).mean(dim=1).cpu())
    return out


@torch.no_grad()
def cnn_features(
    network: torch.nn.Module,
    images: Iterable[torch.Tensor],
    layer: str = "stage5",
    batch_size: int = 4,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """``N x C``: the output of ``network.<layer>`` (the UNeXt's bottleneck by default), averaged
    over its spatial positions, one row per image."""
    module = getattr(network, layer, None)
    if not isinstance(module, torch.nn.Module):
        raise ValueError(f"{type(network).__name__} has no layer {layer!r} to take features from")
    captured: list[torch.Tensor] = []
    handle = module.register_forward_hook(lambda _m, _i, output: captured.append(output.detach()))
    rows: list[torch.Tensor] = []
    try:
        for x in _batches(images, batch_size, device):
            captured.clear()
            network(x)
            feature = captured[-1].float()
            rows.append(feature.flatten(2).mean(dim=2).cpu() if feature.ndim > 2 else feature.cpu())
    finally:
        handle.remove()
    return torch.cat(rows) if rows else torch.zeros(0, 0)
