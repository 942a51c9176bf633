"""The comparison methods of method.md as unsupervised terms of the one trainer.

Every method trains the UNeXt (role ``cnn``, the deployed network) with the supervised loss
on the labelled images; a method differs from another only by the term below that it adds
for the unlabelled images (``bundle/configs/methods/<method>.yaml`` plugs it in). Symbols:
``x_u`` the unlabelled images, ``p_r = softmax(f_r(x))`` the trainer's forward of role ``r``
(``p_r,u`` its unlabelled part), ``f_t`` the EMA teacher of the trainer (``teacher_role``),
``K`` the number of classes, ``y_hat = argmax(p.detach())`` hard pseudo-labels, ``Dice`` the
reference soft Dice (:class:`custom.losses.SoftDiceLoss`), means over every element unless
stated. Defaults follow the public SSL4MIS baselines (HiLab-git/SSL4MIS, 2D scripts) that the
semi-supervised tables of the field, the reference's included, are run with.

The ramp-up weight ``w(t)`` of each term is its config's ``RampUp`` (SSL4MIS: ``0.1 *
exp(-5 (1 - s/200)^2)`` over the run); the trainer skips a term while ``w(t) = 0``.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from monai.networks.blocks import Convolution
from torch import nn

from .losses import SoftDiceLoss, entropy, hard_labels
from .schedules import sigmoid_rampup
from .terms import CrossPseudoSupervisionTerm, InterpolationConsistencyTerm, IterationContext, UnsupervisedTerm

__all__ = [
    "clipped_noise",
    "MeanTeacherTerm",
    "UncertaintyAwareMeanTeacherTerm",
    "ICTTerm",
    "ConvDiscriminator",
    "AdversarialTerm",
    "DeepCoTrainingTerm",
    "CPSTerm",
    "CrossTeachingTerm",
    "labeled_union_datalist",
]


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


def _teacher(ctx: IterationContext, term: str) -> Callable[[torch.Tensor], torch.Tensor]:
    if ctx.teacher is None:
        raise RuntimeError(f"{term} needs an EMA teacher: set the trainer's teacher (and teacher_role: cnn)")
    return ctx.teacher


class MeanTeacherTerm(UnsupervisedTerm):
    """Mean teacher (Tarvainen & Valpola, 2017) on one network and its EMA teacher.

    ``L_mt = mean( (p_s,u - p_t)^2 )`` with ``p_s,u`` the student's probabilities on ``x_u``
    (the trainer's forward of ``role``) and ``p_t = softmax(f_t(x_u + n))`` the teacher's on a
    noisy copy, ``n = clip(N(0, 0.1^2), -0.2, 0.2)`` (no gradient to the teacher). The teacher
    is the trainer's ``teacher`` (EMA of ``role``, decay 0.99).
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

    def loss(self, ctx: IterationContext) -> torch.Tensor:
        teacher = _teacher(ctx, type(self).__name__)
        x_u = ctx.unlabeled_images
        with torch.no_grad(), ctx.autocast():
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
        teacher = _teacher(ctx, type(self).__name__)
        x_u, p_s = ctx.unlabeled_images, ctx.unlabeled_probs(self.role)
        with torch.no_grad(), ctx.autocast():
            p_t = torch.softmax(
                teacher(x_u + clipped_noise(x_u, self.noise_std, self.noise_clip, ctx.generator)).float(), 1
            )
            u = self.uncertainty(teacher, x_u, ctx.generator)
        mask = (u < self.threshold(ctx.iteration, p_s.shape[1])).to(p_s.dtype)
        self.last_mask_fraction = float(mask.mean())
        return (mask * (p_s - p_t) ** 2).sum() / (p_s.shape[1] * mask.sum() + 1e-16)


class ICTTerm(InterpolationConsistencyTerm):
    """Interpolation consistency training (Verma et al., 2019) on the UNeXt with its own EMA teacher.

    Unlabelled halves ``ua, ub``, ``lambda ~ Beta(alpha, alpha)`` per pair (``alpha = 0.2`` in
    the 2D reference, ``ict_alpha``): ``x_mix = (1 - lambda) ua + lambda ub``,
    ``target = (1 - lambda) softmax(f_t(ua)) + lambda softmax(f_t(ub))`` (no gradient),
    ``L_ict = mean( (softmax(f_cnn(x_mix)) - target)^2 )``. Same computation as the method's
    ICT term (:class:`custom.terms.InterpolationConsistencyTerm`), applied to ``roles = (cnn,)``
    with the teacher an EMA of the UNeXt (``teacher_role: cnn``).
    """

    name = "ict"

    def __init__(
        self,
        roles: Sequence[str] = ("cnn",),
        weight: Callable[[int], float] | float = 1.0,
        alpha: float = 0.2,
        name: str | None = None,
    ) -> None:
        super().__init__(roles=roles, weight=weight, alpha=alpha, name=name)


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
    Each call, in order:

    1. discriminator step, on detached predictions of the whole batch, ``D`` in train mode:
       ``L_D = CE(D(p_l.detach(), x_l), 1) + ... = mean_i CE(D(p_i.detach(), x_i), d_i)`` with
       ``d_i = 1`` for labelled and ``0`` for unlabelled images; ``D``'s optimiser steps.
    2. the segmenter's adversarial loss with ``D`` in eval mode and frozen (no gradient into
       ``D``): ``L_dan = mean_u CE(D(p_u, x_u), 1)``: unlabelled predictions should look
       like labelled ones. Returned; the trainer adds ``w(t) L_dan`` to the total.

    The reference steps the segmenter first and then trains ``D`` on the updated segmenter's
    predictions (eval mode); here ``D`` steps first on this iteration's training-mode
    predictions, so one forward of the segmenter serves both. ``last_discriminator_loss``
    holds ``L_D`` of the latest call.
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
        return loss.detach()

    def loss(self, ctx: IterationContext) -> torch.Tensor:
        self.last_discriminator_loss = float(self.discriminator_step(ctx))
        p_u = ctx.unlabeled_probs(self.role)
        self.discriminator.eval()
        with frozen(self.discriminator):
            logits = self.discriminator(p_u, ctx.unlabeled_images)
        target = torch.ones(p_u.shape[0], dtype=torch.long, device=p_u.device)
        return F.cross_entropy(logits, target)


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
            with ctx.autocast():
                q_a = torch.softmax(ctx.networks[a](x_r).float(), 1)
                q_b = torch.softmax(ctx.networks[b](x_r).float(), 1)
            view = torch.mean((q_a - torch.rot90(p_b.detach(), k, dims=(2, 3))) ** 2) + torch.mean(
                (q_b - torch.rot90(p_a.detach(), k, dims=(2, 3))) ** 2
            )
            total = total + self.view_weight * view
        return total


def _cross_pseudo_label_loss(
    ctx: IterationContext, a: str, b: str, dice: nn.Module, dice_weight: float, ce_weight: float
) -> torch.Tensor:
    """``sum over (r, s) in {(a, b), (b, a)}: dice_weight Dice(p_r,u, y_hat_s) + ce_weight CE(z_r,u, y_hat_s)``,
    ``y_hat_s = argmax(p_s,u.detach())``, ``z`` the logits."""
    total = ctx.logits[a].new_zeros(())
    for r, s in ((a, b), (b, a)):
        y_hat = hard_labels(ctx.unlabeled_probs(s))
        if dice_weight:
            total = total + dice_weight * dice(ctx.unlabeled_probs(r), y_hat)
        if ce_weight:
            total = total + ce_weight * F.cross_entropy(ctx.logits[r][ctx.labeled_bs :], y_hat[:, 0])
    return total


class CPSTerm(CrossPseudoSupervisionTerm):
    """Cross pseudo supervision (Chen et al., CVPR 2021) between two UNeXts, both directions.

    ``L_cps = Dice(p_cnn,u, y_hat_cnn2) + Dice(p_cnn2,u, y_hat_cnn)`` with detached argmax
    pseudo-labels (the same Dice-only form as the method's CPS, method.md 2); ``ce_weight``
    adds ``ce_weight (CE(z_cnn,u, y_hat_cnn2) + CE(z_cnn2,u, y_hat_cnn))``, the cross-entropy
    form of Chen et al. and of the 2D reference script (``dice_weight: 0, ce_weight: 1``).
    """

    name = "cps"

    def __init__(
        self,
        roles: Sequence[str] = ("cnn", "cnn2"),
        weight: Callable[[int], float] | float = 1.0,
        dice_weight: float = 1.0,
        ce_weight: float = 0.0,
        name: str | None = None,
    ) -> None:
        super().__init__(roles=roles, weight=weight, direction="both", name=name)
        self.dice_weight, self.ce_weight = float(dice_weight), float(ce_weight)

    def loss(self, ctx: IterationContext) -> torch.Tensor:
        a, b = self.roles
        return _cross_pseudo_label_loss(ctx, a, b, self.criterion.dice, self.dice_weight, self.ce_weight)


class CrossTeachingTerm(UnsupervisedTerm):
    """Cross teaching between CNN and Transformer (Luo et al., MIDL 2022).

    Each network learns from the other's detached hard pseudo-labels on the unlabelled images:
    ``L_ct = Dice(p_cnn,u, y_hat_transformer) + Dice(p_transformer,u, y_hat_cnn)``,
    ``y_hat = argmax(p.detach())`` (Luo et al.'s eq. and code: Dice only, weight 0.1 ramped;
    the supervised part is ``0.5 (CE + Dice)`` per network, as for every method here).
    ``ce_weight > 0`` adds ``ce_weight (CE(z_cnn,u, y_hat_transformer) + CE(z_transformer,u, y_hat_cnn))``
    (a Dice + CE variant). It is the method's CPS term without its ICT and divergence terms.
    """

    name = "ct"

    def __init__(
        self,
        roles: Sequence[str] = ("cnn", "transformer"),
        weight: Callable[[int], float] | float = 1.0,
        dice_weight: float = 1.0,
        ce_weight: float = 0.0,
        name: str | None = None,
    ) -> None:
        super().__init__(weight, name)
        self.roles = tuple(roles)
        if len(self.roles) != 2:
            raise ValueError(f"cross teaching needs two roles, got {self.roles}")
        self.dice_weight, self.ce_weight = float(dice_weight), float(ce_weight)
        self.dice = SoftDiceLoss()

    def loss(self, ctx: IterationContext) -> torch.Tensor:
        a, b = self.roles
        return _cross_pseudo_label_loss(ctx, a, b, self.dice, self.dice_weight, self.ce_weight)


def labeled_union_datalist(datalist_file: str, dataset_dir: str) -> list[dict]:
    """The fully supervised bound's training list: every ``training`` entry plus every
    ``unlabeled`` entry that has a ``label`` (paths resolved like MONAI's
    ``load_decathlon_datalist``).

    Raises ``ValueError`` when no unlabelled entry has a mask (the set was prepared with
    ``--hide-unlabeled-masks``); warns when only some have one.
    """
    from monai.data import load_decathlon_datalist

    labeled = load_decathlon_datalist(datalist_file, True, "training", dataset_dir)
    try:
        unlabeled = load_decathlon_datalist(datalist_file, True, "unlabeled", dataset_dir)
    except ValueError:  # no "unlabeled" key
        unlabeled = []
    with_mask = [e for e in unlabeled if e.get("label")]
    if unlabeled and not with_mask:
        raise ValueError(
            f"fully_supervised trains on the masks of the unlabelled images, but none of the {len(unlabeled)} "
            f"'unlabeled' entries of {datalist_file} has a 'label' (the set was prepared with --hide-unlabeled-masks). "
            "Prepare the data again without --hide-unlabeled-masks for this bound."
        )
    if len(with_mask) < len(unlabeled):
        warnings.warn(
            f"fully_supervised: {len(unlabeled) - len(with_mask)} of {len(unlabeled)} unlabelled entries "
            "have no mask and are left out",
            stacklevel=2,
        )
    return labeled + with_mask
