"""Loss terms of the method (method.md, "Losses, per iteration"), in its symbols.

Conventions: ``p1``, ``p2`` are class probabilities ``B x K x H x W`` (softmax of the
UNeXt and Swin-Unet logits); labels are integer maps ``B x 1 x H x W``. Each module has
an explicit ``reduction``.
"""

from __future__ import annotations

import torch
from monai.losses import DiceCELoss, DiceLoss, MaskedDiceLoss
from monai.networks.utils import one_hot
from torch import nn

__all__ = [
    "SupervisedLoss",
    "SoftDiceLoss",
    "CrossPseudoSupervisionLoss",
    "InformationDivergenceLoss",
    "InterpolationConsistencyLoss",
    "class_thresholds",
    "confidence_mask",
    "masked_mean",
    "masked_soft_dice",
    "entropy",
    "kl_divergence",
    "mutual_information_gap",
]

SMOOTH = 1e-5
EPS = 1e-8


class SupervisedLoss(DiceCELoss):
    """``0.5 * CE(logits, y) + 0.5 * Dice(softmax(logits), y)`` on the labelled images.

    The reference Dice sums over the whole batch and all pixels of a class, uses squared
    terms in the denominator, smooth 1e-5 in numerator and denominator, includes the
    background and averages over classes:
    ``Dice_c = 1 - (2 sum p_c y_c + s) / (sum p_c^2 + sum y_c^2 + s)``.
    MONAI's ``DiceCELoss`` with ``batch=True, squared_pred=True`` is exactly that (tested
    against a hand computation), so it is reused rather than rewritten.

    Input: logits ``B x K x H x W``; target: ``B x 1 x H x W`` integer labels.
    """

    def __init__(self, ce_weight: float = 0.5, dice_weight: float = 0.5, smooth: float = SMOOTH) -> None:
        super().__init__(
            include_background=True,
            to_onehot_y=True,
            softmax=True,
            squared_pred=True,
            batch=True,
            smooth_nr=smooth,
            smooth_dr=smooth,
            lambda_dice=dice_weight,
            lambda_ce=ce_weight,
        )


class SoftDiceLoss(DiceLoss):
    """The reference soft Dice on probabilities (no activation applied): batch-summed,
    squared denominator, background included, smooth 1e-5, mean over classes."""

    def __init__(self, smooth: float = SMOOTH) -> None:
        super().__init__(
            include_background=True,
            to_onehot_y=True,
            softmax=False,
            squared_pred=True,
            batch=True,
            smooth_nr=smooth,
            smooth_dr=smooth,
        )


def hard_labels(p: torch.Tensor) -> torch.Tensor:
    """Detached argmax pseudo-labels ``B x 1 x H x W`` of probabilities ``B x K x H x W``.

    ``max(dim=1).indices`` rather than ``argmax(dim=1)``: the same indices (the first maximum), but
    PyTorch's CPU kernel reduces over the class axis of a ``B x K x H x W`` tensor several times
    faster this way (bundle/docs/performance.md)."""
    return p.detach().max(dim=1, keepdim=True).indices


def class_thresholds(p: torch.Tensor, threshold: float) -> torch.Tensor:
    """Per-class confidence thresholds ``tau_c = threshold * m_c / max_k m_k`` (``K`` values), where
    ``m_c`` is the mean largest probability of the batch's pixels whose argmax is ``c``; a class no
    pixel is assigned to keeps ``threshold``.

    A small structure is predicted less surely than the background around it (its pixels are
    mostly boundary), so one global threshold keeps the background's pseudo-labels and drops the
    structure's, and the student then learns that the structure is not there. Scaling each class's
    threshold by how sure the teacher is of that class relative to its surest class keeps the
    minority class's confident core (the class-adaptive thresholds of FlexMatch, Zhang et al. 2021,
    and FreeMatch, Wang et al. 2023, taken over the current batch, so nothing is carried between
    iterations and a resume needs no extra state). Written here because no library provides it for
    dense predictions.
    """
    p = p.detach()
    conf, label = (v.flatten() for v in p.max(dim=1))  # the largest probability and its class (hard_labels)
    k = p.shape[1]
    counts = torch.bincount(label, minlength=k).to(conf.dtype)
    means = torch.zeros(k, dtype=conf.dtype, device=conf.device).scatter_add_(0, label, conf) / counts.clamp_min(1)
    present = counts > 0
    scale = means / means[present].max() if bool(present.any()) else torch.ones_like(means)
    return torch.where(present, threshold * scale, torch.full_like(means, threshold))


def confidence_mask(p: torch.Tensor, threshold: float, per_class: bool = False) -> torch.Tensor:
    """``B x 1 x H x W`` float mask of the pixels whose largest class probability is at least
    ``threshold``, or with ``per_class`` at least their argmax class's threshold
    (:func:`class_thresholds`); detached: a mask selects pixels, it is not trained."""
    p_d = p.detach()
    conf = p_d.amax(dim=1, keepdim=True)
    if not per_class:
        return (conf >= threshold).to(p.dtype)
    tau = class_thresholds(p_d, threshold)[hard_labels(p_d)]
    return (conf >= tau).to(p.dtype)


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``x`` (``B x H x W``) over the pixels where ``mask`` (``B x 1 x H x W``) is 1; 0 when none is."""
    m = mask.reshape(x.shape)
    return (x * m).sum() / m.sum().clamp_min(1.0)


def masked_soft_dice(smooth: float = SMOOTH) -> MaskedDiceLoss:
    """The reference soft Dice (:class:`SoftDiceLoss`) over the pixels of a mask (MONAI's
    ``MaskedDiceLoss``: prediction and target zeroed outside it). Its targets are one-hot, since an
    integer label map zeroed by the mask would read as background."""
    return MaskedDiceLoss(
        include_background=True, to_onehot_y=False, squared_pred=True, batch=True, smooth_nr=smooth, smooth_dr=smooth
    )


class CrossPseudoSupervisionLoss(nn.Module):
    """``L_cps = Dice(p1_u, argmax p2_u) + Dice(p2_u, argmax p1_u)`` with detached pseudo-labels.

    Inputs are probabilities of the unlabelled images; Dice only, no CE (method.md, 2).
    ``confidence`` > 0 gates each pseudo-label: a pixel counts in ``Dice(p_student, argmax
    p_teacher)`` only where ``max_c p_teacher >= confidence`` (student probabilities and one-hot
    pseudo-labels are both zeroed elsewhere, MONAI's ``MaskedDiceLoss``); 0 (the paper) keeps
    every pixel. No confident pixel gives a loss of 0. ``per_class`` gates each pixel by its
    pseudo-label's class threshold instead (:func:`class_thresholds`), so a small structure
    keeps its pseudo-labels.
    """

    def __init__(self, smooth: float = SMOOTH, confidence: float = 0.0, per_class: bool = False) -> None:
        super().__init__()
        if not 0.0 <= confidence < 1.0:
            raise ValueError(f"confidence must be within [0, 1), got {confidence}")
        self.confidence, self.per_class = float(confidence), bool(per_class)
        self.dice = SoftDiceLoss(smooth)
        self.masked_dice = masked_soft_dice(smooth)

    def pseudo(self, p_student: torch.Tensor, p_teacher: torch.Tensor) -> torch.Tensor:
        """``Dice(p_student, argmax p_teacher)``, on the teacher's confident pixels when gated."""
        if self.confidence <= 0.0:
            return self.dice(p_student, hard_labels(p_teacher))
        target = one_hot(hard_labels(p_teacher), num_classes=p_teacher.shape[1], dim=1).to(p_student.dtype)
        return self.masked_dice(p_student, target, confidence_mask(p_teacher, self.confidence, self.per_class))

    def forward(self, p1: torch.Tensor, p2: torch.Tensor) -> torch.Tensor:
        return self.pseudo(p1, p2) + self.pseudo(p2, p1)


def entropy(p: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """Per-pixel ``H(p) = -sum_c p log(p + eps)`` over dim 1 (natural log)."""
    return -(p * torch.log(p + eps)).sum(dim=1)


def kl_divergence(p1: torch.Tensor, p2: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """Per-pixel ``KL(p1 || p2) = sum_c p1 log((p1 + eps) / (p2 + eps))`` over dim 1."""
    return (p1 * (torch.log(p1 + eps) - torch.log(p2 + eps))).sum(dim=1)


def mutual_information_gap(p1: torch.Tensor, p2: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """Per-pixel ``MIG = H(p1) + H(p2) - H((p1 + p2) / 2)``.

    Equals ``(H1 + H2) / 2 - JS(p1, p2)``: identical predictions give ``H(p)``, opposite
    one-hot predictions give ``-ln 2``.
    """
    return entropy(p1, eps) + entropy(p2, eps) - entropy(0.5 * (p1 + p2), eps)


_REDUCTIONS = ("mean", "image", "none")


def _reduce(x: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        return x.mean()
    if reduction == "image":
        return x.flatten(1).mean(dim=1)
    return x


class InformationDivergenceLoss(nn.Module):
    """``L_ID = mig_weight * mean(MIG(p1, p2)) + kl_weight * mean(KL(p1 || p2))`` (method.md, 4).

    Neither side is detached, eps = 1e-8, natural log. Either term can be switched off by a
    zero weight. ``reduction``: ``"mean"`` (a scalar), ``"image"`` (``B``: the per-image
    divergence score), ``"none"`` (the per-pixel map ``B x H x W``).
    """

    def __init__(
        self, kl_weight: float = 1.0, mig_weight: float = 1.0, eps: float = EPS, reduction: str = "mean"
    ) -> None:
        super().__init__()
        if reduction not in _REDUCTIONS:
            raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
        self.kl_weight, self.mig_weight, self.eps, self.reduction = (
            float(kl_weight),
            float(mig_weight),
            float(eps),
            reduction,
        )

    def forward(self, p1: torch.Tensor, p2: torch.Tensor) -> torch.Tensor:
        if p1.shape != p2.shape:
            raise ValueError(f"p1 and p2 must have the same shape, got {tuple(p1.shape)} and {tuple(p2.shape)}")
        per_pixel = p1.new_zeros(p1.shape[:1] + p1.shape[2:])
        if self.kl_weight:
            per_pixel = per_pixel + self.kl_weight * kl_divergence(p1, p2, self.eps)
        if self.mig_weight:
            per_pixel = per_pixel + self.mig_weight * mutual_information_gap(p1, p2, self.eps)
        return _reduce(per_pixel, self.reduction)


class InterpolationConsistencyLoss(nn.Module):
    """``L_ict = mean((softmax(f(x_mix)) - target)^2)``, the target being the mixed,
    detached EMA-teacher probabilities (see :mod:`custom.training.mixup`)."""

    def __init__(self, reduction: str = "mean") -> None:
        super().__init__()
        if reduction not in _REDUCTIONS:
            raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
        self.reduction = reduction

    def forward(self, p_mix: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        sq = (p_mix - target.detach()) ** 2
        return _reduce(sq.mean(dim=1) if self.reduction != "mean" else sq, self.reduction)
