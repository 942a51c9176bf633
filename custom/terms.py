"""Unsupervised terms: the unit of variation between semi-supervised methods.

A term is a small component with one job: given what the trainer computed this iteration
(:class:`IterationContext`), return a loss. The trainer multiplies it by the term's
ramp-up weight and skips the term entirely while that weight is 0 (a warm-up), so a
method is a list of terms in a config, never a new training loop.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from .ema import EMATeacher
from .losses import CrossPseudoSupervisionLoss, InformationDivergenceLoss, InterpolationConsistencyLoss
from .mixup import interpolation_mixup

__all__ = [
    "IterationContext",
    "UnsupervisedTerm",
    "CrossPseudoSupervisionTerm",
    "InterpolationConsistencyTerm",
    "InformationDivergenceTerm",
]


@dataclass
class IterationContext:
    """What one iteration has computed, shared by all terms.

    ``logits``/``probs`` hold each network's output on the whole batch (labelled first,
    then unlabelled); ``labeled_bs`` splits them.
    """

    images: torch.Tensor
    labels: torch.Tensor
    labeled_bs: int
    networks: dict[str, nn.Module]
    logits: dict[str, torch.Tensor]
    probs: dict[str, torch.Tensor]
    teacher: EMATeacher | None
    iteration: int
    generator: torch.Generator | None = None
    autocast: Callable = contextlib.nullcontext

    @property
    def unlabeled_images(self) -> torch.Tensor:
        return self.images[self.labeled_bs:]

    def unlabeled_probs(self, role: str) -> torch.Tensor:
        return self.probs[role][self.labeled_bs:]


class UnsupervisedTerm(nn.Module):
    """Base class: ``name`` (used in logs as ``loss_<name>``), a ``weight`` schedule, ``loss(ctx)``."""

    name = "term"

    def __init__(self, weight: Callable[[int], float] | float = 1.0, name: str | None = None) -> None:
        super().__init__()
        self.schedule = weight if callable(weight) else (lambda _t, w=float(weight): w)
        if name is not None:
            self.name = name

    def weight(self, iteration: int) -> float:
        return float(self.schedule(iteration))

    def loss(self, ctx: IterationContext) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


class CrossPseudoSupervisionTerm(UnsupervisedTerm):
    """``Dice(p_a_u, argmax p_b_u) + Dice(p_b_u, argmax p_a_u)`` between two networks (method.md, 2)."""

    name = "cps"

    def __init__(self, roles: Sequence[str] = ("cnn", "transformer"), weight=1.0, name: str | None = None) -> None:
        super().__init__(weight, name)
        self.roles = tuple(roles)
        self.criterion = CrossPseudoSupervisionLoss()

    def loss(self, ctx: IterationContext) -> torch.Tensor:
        a, b = self.roles
        return self.criterion(ctx.unlabeled_probs(a), ctx.unlabeled_probs(b))


class InformationDivergenceTerm(UnsupervisedTerm):
    """``mean(MIG(p_a, p_b)) + mean(KL(p_a || p_b))`` on every image of the batch (method.md, 4)."""

    name = "id"

    def __init__(self, roles: Sequence[str] = ("cnn", "transformer"), weight=1.0, kl_weight: float = 1.0,
                 mig_weight: float = 1.0, unlabeled_only: bool = False, name: str | None = None) -> None:
        super().__init__(weight, name)
        self.roles = tuple(roles)
        self.unlabeled_only = unlabeled_only
        self.criterion = InformationDivergenceLoss(kl_weight=kl_weight, mig_weight=mig_weight)

    def loss(self, ctx: IterationContext) -> torch.Tensor:
        a, b = self.roles
        start = ctx.labeled_bs if self.unlabeled_only else 0
        return self.criterion(ctx.probs[a][start:], ctx.probs[b][start:])


class InterpolationConsistencyTerm(UnsupervisedTerm):
    """ICT: the unlabelled halves are mixed with ``lambda ~ Beta(alpha, alpha)``; each network
    in ``roles`` predicts the mixed images and is pulled (MSE) towards the mixed EMA-teacher
    probabilities (method.md, 3). The reference applies it to the Swin-Unet only."""

    name = "ict"

    def __init__(self, roles: Sequence[str] = ("transformer",), weight=1.0, alpha: float = 0.5, name: str | None = None) -> None:
        super().__init__(weight, name)
        self.roles, self.alpha = tuple(roles), float(alpha)
        self.criterion = InterpolationConsistencyLoss()

    def loss(self, ctx: IterationContext) -> torch.Tensor:
        if ctx.teacher is None:
            raise RuntimeError("InterpolationConsistencyTerm needs an EMA teacher: set the trainer's teacher")
        with ctx.autocast():
            x_mix, target, _ = interpolation_mixup(ctx.unlabeled_images, lambda x: torch.softmax(ctx.teacher(x).float(), 1),
                                                   self.alpha, ctx.generator)
            total = 0.0
            for role in self.roles:
                total = total + self.criterion(torch.softmax(ctx.networks[role](x_mix).float(), 1), target)
        return total
