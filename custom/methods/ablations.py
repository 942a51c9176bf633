"""Terms that only the ablations of ours use (bundle/configs/ablations/), kept out of the
production terms so that those take one option per real choice:

* :class:`ReverseKLDivergenceTerm`: the information divergence with ``KL(model || target)``
  (mode-seeking) instead of ``KL(target || model)`` (``ablations/reverse_kl.yaml``);
* :class:`SelfTrainingTerm`: self-training of one network under intensity perturbation
  (``ablations/self_training.yaml``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from custom.methods.perturb import perturb_intensity
from custom.training.losses import CrossPseudoSupervisionLoss
from custom.training.terms import InformationDivergenceTerm, IterationContext, UnsupervisedTerm

__all__ = ["ReverseKLDivergenceTerm", "SelfTrainingTerm"]


class ReverseKLDivergenceTerm(InformationDivergenceTerm):
    """:class:`custom.training.terms.InformationDivergenceTerm` with the KL's arguments swapped
    in every direction: ``MIG(target, model) + KL(model || target)`` (MIG is symmetric)."""

    def divergence(self, target: torch.Tensor, model: torch.Tensor) -> torch.Tensor:
        return self.criterion(model, target)


class SelfTrainingTerm(UnsupervisedTerm):
    """Self-training under perturbation (FixMatch-style, for segmentation): each network in
    ``roles`` predicts a strongly perturbed copy of the unlabelled images
    (:func:`custom.methods.perturb.perturb_intensity`) and is pulled (Dice) towards its own
    detached pseudo-labels on the clean images (from the shared forward), on the pixels where
    those are at least ``confidence`` sure. It needs no other network, so a network that leads
    the cross terms still learns from the unlabelled images."""

    name = "self"
    own_graph = True  # its own forward of the perturbed images; only detached values of the shared one

    def __init__(
        self,
        roles: Sequence[str] = ("cnn",),
        weight=1.0,
        confidence: float = 0.9,
        noise_std: float = 0.05,
        name: str | None = None,
    ) -> None:
        super().__init__(weight, name)
        self.roles, self.noise_std = tuple(roles), float(noise_std)
        self.criterion = CrossPseudoSupervisionLoss(confidence=confidence)

    def loss(self, ctx: IterationContext) -> torch.Tensor:
        x_s = perturb_intensity(ctx.unlabeled_images, noise_std=self.noise_std, generator=ctx.generator)
        total = 0.0
        for role in self.roles:
            with ctx.autocast(role):
                p_s = torch.softmax(ctx.networks[role](x_s).float(), 1)
            total = total + self.criterion.pseudo(p_s, ctx.unlabeled_probs(role).detach())
        return total
