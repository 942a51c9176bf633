"""Bidirectional copy-paste (BCP, Bai et al., CVPR 2023) between labelled and unlabelled images."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
import torch.nn.functional as F
from monai.networks.utils import one_hot

from custom.methods.perturb import cutmix, frozen_norm_statistics, random_boxes
from custom.training.losses import confidence_mask, hard_labels, masked_soft_dice
from custom.training.terms import IterationContext, UnsupervisedTerm

__all__ = ["copy_paste_pairs", "BidirectionalCopyPasteTerm"]


def copy_paste_pairs(
    x_l: torch.Tensor, y_l: torch.Tensor, x_u: torch.Tensor, y_u: torch.Tensor, box: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The two copy-paste images of every unlabelled image ``j`` and the labelled image ``j mod L``.

    With ``B`` the box of pair ``j`` (1 inside):

    * inward: ``x_u (1 - B) + x_l B`` (a labelled box pasted into the unlabelled image),
      target ``y_u (1 - B) + y_l B``;
    * outward: ``x_l (1 - B) + x_u B`` (an unlabelled box pasted into the labelled image),
      target ``y_l (1 - B) + y_u B``.

    ``y_l`` is the ground truth, ``y_u`` the unlabelled images' pseudo-labels (``N x 1 x H x W``
    label maps). Returns the images (inward first, then outward; ``2U`` of them), their
    targets, and a mask that is 1 where a target pixel is ground truth (it came from a
    labelled image) and 0 where it is a pseudo-label.
    """
    n_l, n_u = x_l.shape[0], x_u.shape[0]
    if n_l == 0 or n_u == 0:
        raise ValueError(f"copy-paste needs labelled and unlabelled images, got {n_l} and {n_u}")
    idx = torch.arange(n_u, device=x_u.device) % n_l
    xl, yl = x_l[idx], y_l[idx].to(y_u.dtype)
    images = torch.cat([cutmix(x_u, xl, box), cutmix(xl, x_u, box)])
    targets = torch.cat([cutmix(y_u, yl, box), cutmix(yl, y_u, box)])
    from_labelled = torch.cat([box, 1 - box]).to(x_u.dtype)
    return images, targets, from_labelled


class BidirectionalCopyPasteTerm(UnsupervisedTerm):
    """BCP for the network ``role`` with its EMA teacher (``ctx.teachers[role]``).

    Every unlabelled image is paired with a labelled one (:func:`copy_paste_pairs`), with a box
    of ``box_area`` of the image (BCP: two thirds of each side, at a random place). The
    teacher's hard pseudo-labels ``argmax softmax(f_t(x_u))`` stand for the unlabelled pixels.
    The student predicts both mixed images and is trained with ``0.5 (Dice + CE)`` taken apart
    over the two kinds of pixel, as BCP's ``mix_loss`` does:
    ``L = w_gt L(ground-truth pixels) + w_pl L(pseudo-labelled pixels)``, ``w_gt = 1``,
    ``w_pl = unlabeled_weight`` (0.5 in BCP), each ``L`` being the masked soft Dice (MONAI's
    ``MaskedDiceLoss``) plus the masked mean cross-entropy. ``confidence`` > 0 further keeps
    only the pseudo-labelled pixels where the teacher is at least that sure (BCP: 0; with
    ``per_class``, at least that class's threshold: :func:`custom.training.losses.class_thresholds`). With
    ``clean_statistics`` the forward of the mixed images leaves the batch-normalisation
    running statistics as the clean images set them (:func:`custom.methods.frozen_norm_statistics`;
    off by default, as in BCP: the mixed images are realistic mosaics).
    """

    name = "bcp"
    own_graph = True  # its own forward of the mixed images; only detached teacher values from outside

    def __init__(
        self,
        role: str = "cnn",
        weight: Callable[[int], float] | float = 1.0,
        unlabeled_weight: float = 0.5,
        box_area: float = 4 / 9,
        confidence: float = 0.0,
        clean_statistics: bool = False,
        per_class: bool = False,
        name: str | None = None,
    ) -> None:
        super().__init__(weight, name)
        if not 0.0 <= confidence < 1.0:
            raise ValueError(f"confidence must be within [0, 1), got {confidence}")
        self.per_class = bool(per_class)
        self.role, self.unlabeled_weight = role, float(unlabeled_weight)
        self.teacher_roles = (role,)
        self.box_area, self.confidence = float(box_area), float(confidence)
        self.clean_statistics = bool(clean_statistics)
        self.dice = masked_soft_dice()

    def _region_loss(self, logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``0.5 (masked Dice + masked mean CE)`` of ``logits`` against the label map ``target`` on ``mask``."""
        probs = torch.softmax(logits, 1)
        dice = self.dice(probs, one_hot(target, num_classes=logits.shape[1], dim=1).to(probs.dtype), mask)
        ce = F.cross_entropy(logits, target[:, 0], reduction="none")
        ce = (ce * mask[:, 0]).sum() / mask.sum().clamp_min(1.0)
        return 0.5 * (dice + ce)

    def loss(self, ctx: IterationContext) -> torch.Tensor:
        x_l, x_u = ctx.images[: ctx.labeled_bs], ctx.unlabeled_images
        p_t = ctx.teacher_probs(self.role)
        n, _, h, w = x_u.shape
        box = random_boxes(n, h, w, 1.0, (self.box_area, self.box_area), (1.0, 1.0), ctx.generator, x_u.device)
        images, targets, gt = copy_paste_pairs(x_l, ctx.labels.long(), x_u, hard_labels(p_t), box)
        pl = 1.0 - gt
        if self.confidence > 0:
            conf = confidence_mask(p_t, self.confidence, self.per_class)
            pl = pl * torch.cat([cutmix(conf, torch.zeros_like(conf), box), cutmix(torch.zeros_like(conf), conf, box)])
        net = ctx.networks[self.role]
        frozen = frozen_norm_statistics(net) if self.clean_statistics else contextlib.nullcontext()
        with ctx.autocast(self.role), frozen:
            logits = net(images).float()
        return self._region_loss(logits, targets, gt) + self.unlabeled_weight * self._region_loss(logits, targets, pl)
