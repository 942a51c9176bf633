"""Adversarial learning on the UNeXt: the deep adversarial network (DAN, Zhang et al. 2017).

The discriminator's own optimiser step is taken by the trainer in the iteration, before the
losses (the term's ``before_loss`` hook: :meth:`AdversarialTerm.discriminator_step`), as MONAI's
GAN trainer does; the term's loss is the
segmenter's adversarial part only.

Symbols: ``x_u`` the unlabelled images, ``p_r = softmax(f_r(x))`` the trainer's forward of role
``r`` (``p_r,u`` its unlabelled part), ``f_t`` the EMA teacher of ``r`` (the trainer's ``teachers[r]``),
``K`` the number of classes. Defaults follow the public SSL4MIS baselines (HiLab-git/SSL4MIS, 2D
scripts) that the semi-supervised tables of the field, the reference's included, are run with.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from monai.networks.blocks import Convolution
from torch import nn

from custom.training.terms import IterationContext, UnsupervisedTerm

__all__ = ["ConvDiscriminator", "AdversarialTerm"]


class ConvDiscriminator(nn.Module):
    """Image-level discriminator of (segmentation, image) pairs, the layout of the DAN
    reference (SSL4MIS ``FCDiscriminator``): the probabilities ``p`` (``K`` channels) and the
    image (``C`` channels) are concatenated (one convolution of the concatenation equals the
    reference's sum of two convolutions), then 4x4 stride-2 convolutions with
    ``ndf, 2 ndf, 4 ndf, 8 ndf`` channels, LeakyReLU(0.2) and Dropout(0.5) (none after the
    last), global average pooling and a linear layer to 2 logits (0: an unlabelled image's
    prediction, 1: a labelled one's). Any input size divisible by 16.
    """

    def __init__(self, num_classes: int, in_channels: int = 1, ndf: int = 64, dropout: float = 0.5) -> None:
        super().__init__()
        widths = (ndf, 2 * ndf, 4 * ndf, 8 * ndf)
        layers, c_in = [], num_classes + in_channels
        for i, c_out in enumerate(widths):
            layers.append(
                Convolution(
                    2,
                    c_in,
                    c_out,
                    strides=2,
                    kernel_size=4,
                    padding=1,
                    adn_ordering="AD",
                    norm=None,
                    act=("leakyrelu", {"negative_slope": 0.2}),
                    dropout=dropout if i < len(widths) - 1 else None,
                )
            )
            c_in = c_out
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(c_in, 2)

    def forward(self, probs: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        x = self.features(torch.cat([probs, image.to(probs.dtype)], dim=1))
        return self.classifier(x.mean(dim=(2, 3)))


@contextlib.contextmanager
def frozen(module: nn.Module) -> Iterator[nn.Module]:
    """Parameters of ``module`` excluded from autograd graphs built inside the block (no
    gradient reaches them), restored afterwards."""
    flags = [p.requires_grad for p in module.parameters()]
    for p in module.parameters():
        p.requires_grad_(False)
    try:
        yield module
    finally:
        for p, flag in zip(module.parameters(), flags):
            p.requires_grad_(flag)


class AdversarialTerm(UnsupervisedTerm):
    """Deep adversarial network (DAN, Zhang et al., MICCAI 2017), as in the 2D reference.

    A discriminator ``D(p, x)`` (:class:`ConvDiscriminator`) with its own optimiser (Adam,
    lr 1e-4, betas 0.9/0.99) tells labelled from unlabelled images by the segmenter's output.
    Each iteration, in order:

    1. :meth:`discriminator_step`, called by the trainer before the losses (:meth:`before_loss`), on detached
       predictions of the whole batch, ``D`` in train mode:
       ``L_D = CE(D(p_l.detach(), x_l), 1) + ... = mean_i CE(D(p_i.detach(), x_i), d_i)`` with
       ``d_i = 1`` for labelled and ``0`` for unlabelled images; ``D``'s optimiser steps.
    2. the segmenter's adversarial loss with ``D`` in eval mode and frozen (no gradient into
       ``D``): ``L_dan = mean_u CE(D(p_u, x_u), 1)``: unlabelled predictions should look
       like labelled ones (:meth:`loss`); the trainer adds ``w(t) L_dan`` to the total.

    The reference steps the segmenter first and then trains ``D`` on the updated segmenter's
    predictions (eval mode); here ``D`` steps first on this iteration's training-mode
    predictions, so one forward of the segmenter serves both. ``last_discriminator_loss``
    holds ``L_D`` of the latest step (also logged as ``loss_dan_discriminator``).
    """

    name = "dan"

    def __init__(
        self,
        discriminator: nn.Module,
        optimizer: torch.optim.Optimizer,
        role: str = "cnn",
        weight: Callable[[int], float] | float = 1.0,
        name: str | None = None,
    ) -> None:
        super().__init__(weight, name)
        self.discriminator, self.optimizer, self.role = discriminator, optimizer, role
        self.last_discriminator_loss = float("nan")

    def before_loss(self, ctx: IterationContext) -> dict[str, torch.Tensor]:
        """The discriminator's step, logged as ``loss_<name>_discriminator``."""
        return {f"loss_{self.name}_discriminator": self.discriminator_step(ctx)}

    def discriminator_step(self, ctx: IterationContext) -> torch.Tensor:
        """One optimiser step of ``D`` on ``L_D``; returns ``L_D`` (detached)."""
        p = ctx.probs[self.role].detach()
        d = torch.zeros(p.shape[0], dtype=torch.long, device=p.device)
        d[: ctx.labeled_bs] = 1
        self.discriminator.train()
        with torch.enable_grad():
            loss = F.cross_entropy(self.discriminator(p, ctx.images), d)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        loss = loss.detach()
        self.last_discriminator_loss = float(loss)
        return loss

    def loss(self, ctx: IterationContext) -> torch.Tensor:
        p_u = ctx.unlabeled_probs(self.role)
        self.discriminator.eval()
        with frozen(self.discriminator):
            logits = self.discriminator(p_u, ctx.unlabeled_images)
        target = torch.ones(p_u.shape[0], dtype=torch.long, device=p_u.device)
        return F.cross_entropy(logits, target)
