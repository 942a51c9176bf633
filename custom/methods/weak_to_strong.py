"""Weak-to-strong self-ensembling (FixMatch, Sohn et al. 2020; UniMatch, Yang et al., CVPR 2023)."""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable

import torch
from torch import nn

from custom.methods.perturb import cutmix, frozen_norm_statistics, random_boxes, strong_intensity
from custom.training.losses import CrossPseudoSupervisionLoss
from custom.training.terms import IterationContext, UnsupervisedTerm

__all__ = ["WeakToStrongTerm"]


def _accepts_feature_dropout(net: nn.Module) -> bool:
    module = getattr(net, "module", net)  # a DistributedDataParallel wrapper forwards keywords
    return "feature_dropout" in inspect.signature(module.forward).parameters


class WeakToStrongTerm(UnsupervisedTerm):
    """A network learns from its own EMA teacher's pseudo-labels on strongly perturbed views.

    The teacher (``ctx.teachers[role]``, an EMA of the network ``role``, in eval mode) labels
    the unlabelled images as they come (the weak view): ``p_t = softmax(f_t(x_u))``,
    ``y = argmax p_t``. The student ``f = networks[role]`` is then trained on

    * ``views`` image-level strong views: ``s = strong(x_u)`` (gamma, contrast, noise, blur:
      :func:`custom.methods.strong_intensity`) CutMixed with the strong view of another
      unlabelled image of the batch (``pi`` a random permutation, box ``B`` of
      :func:`custom.methods.random_boxes`, probability ``cutmix_prob``):
      ``x_s = s (1 - B) + s[pi] B``, target ``p_t (1 - B) + p_t[pi] B`` (the same box, so the
      pseudo-labels move with the pixels);
    * one feature-perturbation stream: ``f(x_u)`` with channel dropout ``feature_dropout`` on
      the encoder features (UniMatch's FP stream; networks whose ``forward`` takes
      ``feature_dropout``, the UNeXt).

    Each stream's loss is the soft Dice of the student's probabilities against the one-hot
    pseudo-labels on the pixels where the teacher is at least ``confidence`` sure
    (:meth:`custom.training.losses.CrossPseudoSupervisionLoss.pseudo`; with ``per_class``, its
    class's threshold: :func:`custom.training.losses.class_thresholds`); the streams are weighted as in
    UniMatch: ``(1 - fp_weight) / views`` each strong view, ``fp_weight`` the FP stream
    (0.25, 0.25, 0.5). With ``clean_statistics`` these forwards leave the network's
    batch-normalisation running statistics as the clean images set them
    (:func:`custom.methods.frozen_norm_statistics`; off by default, as in UniMatch, where it
    was not better in one validation run). It needs no second network, so it reaches ``role`` whichever network
    leads the cross terms.
    """

    name = "w2s"
    own_graph = True  # forwards of its own views; only detached teacher values from outside

    def __init__(
        self,
        role: str = "cnn",
        weight: Callable[[int], float] | float = 1.0,
        confidence: float = 0.95,
        views: int = 2,
        cutmix_prob: float = 0.5,
        cutmix_area: tuple[float, float] = (0.02, 0.4),
        feature_dropout: float = 0.5,
        fp_weight: float = 0.5,
        noise_std: float = 0.05,
        blur_prob: float = 0.5,
        clean_statistics: bool = False,
        per_class: bool = False,
        name: str | None = None,
    ) -> None:
        super().__init__(weight, name)
        if views < 0 or not 0.0 <= fp_weight <= 1.0 or (views == 0 and fp_weight == 0.0):
            raise ValueError(
                f"need views >= 0 and fp_weight within [0, 1], not both empty; got views {views}, fp_weight {fp_weight}"
            )
        if not 0.0 <= feature_dropout < 1.0:
            raise ValueError(f"feature_dropout must be within [0, 1), got {feature_dropout}")
        self.role, self.views, self.fp_weight = role, int(views), float(fp_weight if views else 1.0)
        self.teacher_roles = (role,)
        self.cutmix_prob, self.cutmix_area = float(cutmix_prob), tuple(float(a) for a in cutmix_area)
        self.feature_dropout, self.noise_std, self.blur_prob = (
            float(feature_dropout),
            float(noise_std),
            float(blur_prob),
        )
        self.clean_statistics = bool(clean_statistics)
        self.criterion = CrossPseudoSupervisionLoss(confidence=confidence, per_class=per_class)
        #: share of unlabelled pixels above the confidence gate in the latest call
        self.last_confident_fraction = float("nan")

    def strong_views(
        self, x_u: torch.Tensor, p_t: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One CutMixed strong view of ``x_u`` and the teacher probabilities mixed by the same box."""
        n, _, h, w = x_u.shape
        s = strong_intensity(x_u, generator, noise_std=self.noise_std, blur_prob=self.blur_prob)
        box = random_boxes(n, h, w, self.cutmix_prob, self.cutmix_area, generator=generator, device=x_u.device)
        perm = torch.randperm(n, generator=generator).to(x_u.device)
        return cutmix(s, s[perm], box), cutmix(p_t, p_t[perm], box)

    def loss(self, ctx: IterationContext) -> torch.Tensor:
        net = ctx.networks[self.role]
        p_t = ctx.teacher_probs(self.role)
        x_u = ctx.unlabeled_images
        if self.criterion.confidence > 0:
            self.last_confident_fraction = float((p_t.amax(dim=1) >= self.criterion.confidence).float().mean())
        total = x_u.new_zeros(())
        frozen = frozen_norm_statistics(net) if self.clean_statistics else contextlib.nullcontext()
        with ctx.autocast(self.role), frozen:
            for _ in range(self.views):
                x_s, target = self.strong_views(x_u, p_t, ctx.generator)
                p_s = torch.softmax(net(x_s).float(), 1)
                total = total + (1.0 - self.fp_weight) / self.views * self.criterion.pseudo(p_s, target)
            if self.fp_weight > 0:
                if not _accepts_feature_dropout(net):
                    raise ValueError(
                        f"WeakToStrongTerm: the {self.role!r} network ({type(getattr(net, 'module', net)).__name__}) "
                        "has no feature_dropout input; set fp_weight: 0 for it"
                    )
                p_fp = torch.softmax(net(x_u, feature_dropout=self.feature_dropout).float(), 1)
                total = total + self.fp_weight * self.criterion.pseudo(p_fp, p_t)
        return total
