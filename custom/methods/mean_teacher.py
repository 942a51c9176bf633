"""Mean-teacher family on the UNeXt: mean teacher (Tarvainen & Valpola 2017) and the
uncertainty-aware mean teacher (Yu et al. 2019), both against the trainer's EMA teacher.

Symbols: ``x_u`` the unlabelled images, ``p_r = softmax(f_r(x))`` the trainer's forward of role
``r`` (``p_r,u`` its unlabelled part), ``f_t`` the EMA teacher of ``r`` (the trainer's ``teachers[r]``),
``K`` the number of classes. Defaults follow the public SSL4MIS baselines (HiLab-git/SSL4MIS, 2D
scripts) that the semi-supervised tables of the field, the reference's included, are run with.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from custom.training.schedules import sigmoid_rampup
from custom.training.terms import IterationContext, UnsupervisedTerm

__all__ = ["clipped_noise", "MeanTeacherTerm", "UncertaintyAwareMeanTeacherTerm"]


def clipped_noise(
    x: torch.Tensor, std: float = 0.1, clip: float = 0.2, generator: torch.Generator | None = None
) -> torch.Tensor:
    """``n = clip(N(0, std^2), -clip, clip)`` shaped like ``x`` (the mean teacher's input noise).

    Drawn on the generator's device (CPU) and moved to ``x``'s, so a seeded generator makes
    it reproducible on any device.
    """
    if std <= 0:
        return torch.zeros_like(x)
    if generator is None:
        n = torch.randn_like(x)
    else:
        n = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=generator.device).to(x.device)
    return (n * std).clamp(-clip, clip)


class MeanTeacherTerm(UnsupervisedTerm):
    """Mean teacher (Tarvainen & Valpola, 2017) on one network and its EMA teacher.

    ``L_mt = mean( (p_s,u - p_t)^2 )`` with ``p_s,u`` the student's probabilities on ``x_u``
    (the trainer's forward of ``role``) and ``p_t = softmax(f_t(x_u + n))`` the teacher's on a
    noisy copy, ``n = clip(N(0, 0.1^2), -0.2, 0.2)`` (no gradient to the teacher). The teacher
    is the EMA of ``role`` (the trainer's ``teachers[role]``, decay 0.99).
    """

    name = "mt"

    def __init__(
        self,
        role: str = "cnn",
        weight: Callable[[int], float] | float = 1.0,
        noise_std: float = 0.1,
        noise_clip: float = 0.2,
        name: str | None = None,
    ) -> None:
        super().__init__(weight, name)
        self.role, self.noise_std, self.noise_clip = role, float(noise_std), float(noise_clip)
        self.teacher_roles = (role,)

    def loss(self, ctx: IterationContext) -> torch.Tensor:
        teacher = ctx.teacher(self.role)
        x_u = ctx.unlabeled_images
        with torch.no_grad(), ctx.autocast(self.role):
            p_t = torch.softmax(
                teacher(x_u + clipped_noise(x_u, self.noise_std, self.noise_clip, ctx.generator)).float(), 1
            )
        return torch.mean((ctx.unlabeled_probs(self.role) - p_t) ** 2)


class UncertaintyAwareMeanTeacherTerm(UnsupervisedTerm):
    """Uncertainty-aware mean teacher (UA-MT, Yu et al., MICCAI 2019).

    The teacher predicts ``x_u`` under ``T`` noise draws (Monte Carlo passes; the UNeXt has no
    dropout, so the input noise ``n_k = clip(N(0, 0.1^2), -0.2, 0.2)`` is the stochasticity,
    as in the 2D reference): ``mu = (1/T) sum_k softmax(f_t(x_u + n_k))``, the per-pixel
    uncertainty ``U = -sum_c mu_c log(mu_c + 1e-6)``. Pixels with ``U < tau(t)`` enter the
    consistency, the threshold rising from ``0.75 H_max`` to ``H_max = ln K`` over the run:
    ``tau(t) = (0.75 + 0.25 exp(-5 (1 - t/T_max)^2)) ln K``. With ``M = 1[U < tau(t)]`` and
    ``p_t = softmax(f_t(x_u + n_0))``:

    ``L_uamt = sum_{b,c,h,w} M (p_s,u - p_t)^2 / (K sum_{b,h,w} M + 1e-16)``

    (the masked mean over classes and kept pixels; 0 when every pixel is uncertain).
    ``last_mask_fraction`` holds the share of kept pixels of the latest call.
    """

    name = "uamt"

    def __init__(
        self,
        role: str = "cnn",
        weight: Callable[[int], float] | float = 1.0,
        total_iterations: int = 1,
        passes: int = 8,
        noise_std: float = 0.1,
        noise_clip: float = 0.2,
        threshold_start: float = 0.75,
        name: str | None = None,
    ) -> None:
        super().__init__(weight, name)
        if passes < 1:
            raise ValueError(f"passes must be >= 1, got {passes}")
        self.role, self.total_iterations, self.passes = role, int(total_iterations), int(passes)
        self.teacher_roles = (role,)
        self.noise_std, self.noise_clip, self.threshold_start = (
            float(noise_std),
            float(noise_clip),
            float(threshold_start),
        )
        self.last_mask_fraction = float("nan")

    def threshold(self, iteration: int, num_classes: int) -> float:
        """``tau(t) = (s + (1 - s) exp(-5 (1 - t/T_max)^2)) ln K`` with ``s = threshold_start``."""
        ramp = sigmoid_rampup(iteration, self.total_iterations)
        return (self.threshold_start + (1.0 - self.threshold_start) * ramp) * math.log(num_classes)

    @torch.no_grad()
    def uncertainty(
        self, teacher: Callable, x_u: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """``U = -sum_c mu_c log(mu_c + 1e-6)`` (``B x 1 x H x W``), ``mu`` the mean of ``passes`` noisy teacher
        softmaxes."""
        mu = 0.0
        for _ in range(self.passes):
            mu = mu + torch.softmax(
                teacher(x_u + clipped_noise(x_u, self.noise_std, self.noise_clip, generator)).float(), 1
            )
        mu = mu / self.passes
        return -(mu * torch.log(mu + 1e-6)).sum(dim=1, keepdim=True)

    def loss(self, ctx: IterationContext) -> torch.Tensor:
        teacher = ctx.teacher(self.role)
        x_u, p_s = ctx.unlabeled_images, ctx.unlabeled_probs(self.role)
        with torch.no_grad(), ctx.autocast(self.role):
            p_t = torch.softmax(
                teacher(x_u + clipped_noise(x_u, self.noise_std, self.noise_clip, ctx.generator)).float(), 1
            )
            u = self.uncertainty(teacher, x_u, ctx.generator)
        mask = (u < self.threshold(ctx.iteration, p_s.shape[1])).to(p_s.dtype)
        self.last_mask_fraction = float(mask.mean())
        return (mask * (p_s - p_t) ** 2).sum() / (p_s.shape[1] * mask.sum() + 1e-16)
