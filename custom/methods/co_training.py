"""Co-training between two networks: deep co-training (Qiao et al. 2018) with rotation as the
second view. (Cross pseudo supervision and cross teaching are ours' CPS term,
:class:`custom.training.terms.CrossPseudoSupervisionTerm`, in both directions.)

Symbols: ``x_u`` the unlabelled images, ``p_r = softmax(f_r(x))`` the trainer's forward of role
``r`` (``p_r,u`` its unlabelled part), ``f_t`` the EMA teacher of ``r`` (the trainer's ``teachers[r]``),
``K`` the number of classes. Defaults follow the public SSL4MIS baselines (HiLab-git/SSL4MIS, 2D
scripts) that the semi-supervised tables of the field, the reference's included, are run with.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from custom.training.losses import entropy
from custom.training.terms import IterationContext, UnsupervisedTerm

__all__ = ["DeepCoTrainingTerm"]


class DeepCoTrainingTerm(UnsupervisedTerm):
    """Deep co-training (Qiao et al., ECCV 2018) for segmentation between two networks, with a
    rotation as the second view (the 2D reference baseline replaces the adversarial views by
    rotation consistency).

    With ``p_a = p_a,u``, ``p_b = p_b,u`` (the trainer's forward of the two roles on ``x_u``)
    and ``R = rot90^k`` in the image plane, ``k`` drawn uniformly from ``rotations`` ({1,2,3}:
    the view always differs) once per iteration:

    - co-training (agreement), the Jensen-Shannon divergence per pixel, both sides trained:
      ``L_cot = mean_{b,h,w}[ H((p_a + p_b)/2) - (H(p_a) + H(p_b))/2 ]``, ``H(p) = -sum_c p log(p + 1e-8)``;
    - view difference / rotation consistency: each network, shown the rotated view, is taught
      by the other network's detached prediction of the original view, rotated:
      ``L_view = mean( (softmax(f_a(R x_u)) - R p_b.detach())^2 ) + mean( (softmax(f_b(R x_u)) - R p_a.detach())^2 )``.

    ``L_dct = L_cot + view_weight * L_view``. Square images keep their shape under ``R``;
    others are rotated too (both networks take any size divisible by 32).
    """

    name = "dct"

    def __init__(
        self,
        roles: Sequence[str] = ("cnn", "cnn2"),
        weight: Callable[[int], float] | float = 1.0,
        view_weight: float = 1.0,
        cot_weight: float = 1.0,
        rotations: Sequence[int] = (1, 2, 3),
        name: str | None = None,
    ) -> None:
        super().__init__(weight, name)
        self.roles, self.view_weight, self.cot_weight = tuple(roles), float(view_weight), float(cot_weight)
        if len(self.roles) != 2:
            raise ValueError(f"deep co-training needs two roles, got {self.roles}")
        self.rotations = tuple(int(k) % 4 for k in rotations)
        if not self.rotations:
            raise ValueError("rotations must list at least one multiple of 90 degrees")
        self.last_rotation = 0

    def draw_rotation(self, generator: torch.Generator | None) -> int:
        i = (
            int(torch.randint(len(self.rotations), (1,), generator=generator))
            if generator is not None
            else int(torch.randint(len(self.rotations), (1,)))
        )
        return self.rotations[i]

    @staticmethod
    def co_training(p_a: torch.Tensor, p_b: torch.Tensor) -> torch.Tensor:
        """``L_cot``: the per-pixel Jensen-Shannon divergence, averaged."""
        return (entropy(0.5 * (p_a + p_b)) - 0.5 * (entropy(p_a) + entropy(p_b))).mean()

    def loss(self, ctx: IterationContext) -> torch.Tensor:
        a, b = self.roles
        p_a, p_b = ctx.unlabeled_probs(a), ctx.unlabeled_probs(b)
        total = self.cot_weight * self.co_training(p_a, p_b) if self.cot_weight else p_a.new_zeros(())
        if self.view_weight:
            k = self.last_rotation = self.draw_rotation(ctx.generator)
            x_r = torch.rot90(ctx.unlabeled_images, k, dims=(2, 3))
            with ctx.autocast(a):
                q_a = torch.softmax(ctx.networks[a](x_r).float(), 1)
            with ctx.autocast(b):
                q_b = torch.softmax(ctx.networks[b](x_r).float(), 1)
            view = torch.mean((q_a - torch.rot90(p_b.detach(), k, dims=(2, 3))) ** 2) + torch.mean(
                (q_b - torch.rot90(p_a.detach(), k, dims=(2, 3))) ** 2
            )
            total = total + self.view_weight * view
        return total
