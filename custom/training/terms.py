"""Unsupervised terms: the unit of variation between semi-supervised methods.

A term is a small component with one job: given what the trainer computed this iteration
(:class:`IterationContext`), return a loss. The trainer multiplies it by the term's
ramp-up weight and skips the term entirely while that weight is 0 (a warm-up), so a
method is a list of terms in a config, never a new training loop.

What a term asks of the trainer is declared on :class:`UnsupervisedTerm`, never found by
name: ``teacher_roles`` (the roles whose EMA teacher it reads, ``ctx.teacher(role)``: the
trainer refuses to start without them), ``own_graph`` (its loss builds its own forward,
backpropagated apart) and :meth:`UnsupervisedTerm.before_loss` (a step of its own taken
before the losses, e.g. an adversarial term's discriminator).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from custom.training.coupling import check_direction
from custom.training.ema import EMATeacher
from custom.training.losses import (
    CrossPseudoSupervisionLoss,
    InformationDivergenceLoss,
    InterpolationConsistencyLoss,
    confidence_mask,
    hard_labels,
    masked_mean,
)
from custom.training.mixup import interpolation_mixup

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
    iteration: int
    generator: torch.Generator | None = None
    #: mixed precision for a role's network: ``with ctx.autocast(role):`` (the trainer's policy)
    autocast: Callable = contextlib.nullcontext
    leader: str | None = None
    #: role -> EMA teacher of that role's network (the trainer's ``teachers``)
    teachers: dict[str, EMATeacher] = field(default_factory=dict)
    #: values computed once per iteration and shared by the terms (see :meth:`teacher_probs`)
    cache: dict = field(default_factory=dict)

    def teacher(self, role: str) -> EMATeacher:
        """The EMA teacher of ``role``'s network (a term lists ``role`` in its ``teacher_roles``)."""
        teacher = self.teachers.get(role)
        if teacher is None:
            raise RuntimeError(f"no EMA teacher of {role!r}: add it to the method's teachers, e.g. {{{role}: ...}}")
        return teacher

    def teacher_probs(self, role: str) -> torch.Tensor:
        """``softmax(f_t(x_u))`` of the EMA teacher of ``role`` on the unlabelled images,
        computed once per iteration whichever terms ask for it (no gradient)."""
        key = ("teacher_probs", role)
        if key not in self.cache:
            teacher = self.teacher(role)
            with torch.no_grad(), self.autocast(role):
                self.cache[key] = torch.softmax(teacher(self.unlabeled_images).float(), 1)
        return self.cache[key]

    @property
    def unlabeled_images(self) -> torch.Tensor:
        return self.images[self.labeled_bs :]

    def unlabeled_probs(self, role: str) -> torch.Tensor:
        return self.probs[role][self.labeled_bs :]

    def teacher_student(self, roles: Sequence[str]) -> tuple[str, str]:
        """``(leader, follower)`` among two roles; the leader is the trainer's current one
        (its :class:`custom.training.coupling.Coupling`'s), else the first role."""
        a, b = roles
        leader = self.leader if self.leader in (a, b) else a
        return leader, (b if leader == a else a)


class UnsupervisedTerm(nn.Module):
    """Base class: ``name`` (used in logs as ``loss_<name>``), a ``weight`` schedule, ``loss(ctx)``,
    and what the term asks of the trainer (``teacher_roles``, ``own_graph``, :meth:`before_loss`)."""

    name = "term"
    #: the roles whose EMA teacher the term reads (``ctx.teacher(role)``); the trainer checks
    #: that its ``teachers`` hold them when it is built
    teacher_roles: tuple[str, ...] = ()

    def __init__(self, weight: Callable[[int], float] | float = 1.0, name: str | None = None) -> None:
        super().__init__()
        self.schedule = weight if callable(weight) else (lambda _t, w=float(weight): w)
        if name is not None:
            self.name = name

    #: True when ``loss`` builds its own forward graph and uses nothing of the shared forward's
    #: graph: the trainer then backpropagates it separately (same gradients, lower memory peak)
    own_graph = False

    def weight(self, iteration: int) -> float:
        return float(self.schedule(iteration))

    def before_loss(self, ctx: IterationContext) -> dict[str, torch.Tensor]:
        """A step of the term's own, taken by the trainer before the losses while the term's weight
        is not 0 (an adversarial term's discriminator steps here, as MONAI's ``GanTrainer`` steps
        D before G); returns values to log by name. None by default."""
        return {}

    def loss(self, ctx: IterationContext) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


class CrossPseudoSupervisionTerm(UnsupervisedTerm):
    """Cross pseudo supervision between two networks (method.md, 2), and the cross-teaching and
    CPS baselines (the same term in both directions between other roles).

    ``direction`` is the coupling's (:data:`custom.training.coupling.COUPLINGS`).
    ``direction="both"`` (the paper): ``Dice(p_a_u, argmax p_b_u) + Dice(p_b_u, argmax p_a_u)``;
    ``"mutual"`` is the same, pseudo-labels being always detached.
    ``direction="follower"``: only ``Dice(p_follower_u, argmax p_leader_u)``: the network that
    validates worse learns from the better one's pseudo-labels, never the other way round.
    ``"ensemble"``: each network learns from the pseudo-labels of the two networks' mean
    probabilities (detached): ``Dice(p_a_u, argmax m_u) + Dice(p_b_u, argmax m_u)``,
    ``m = (p_a + p_b) / 2``. Pseudo-labels are always detached.
    ``confidence`` > 0 keeps only the pixels where the pseudo-label's source is at least that
    confident (:class:`custom.training.losses.CrossPseudoSupervisionLoss`); with ``per_class``, at
    least its class's threshold (:func:`custom.training.losses.class_thresholds`).
    ``ce_weight`` > 0 adds the cross-entropy of the logits to the same pseudo-labels (the form of
    Chen et al.'s CPS; ``dice_weight: 0, ce_weight: 1`` is that form alone), ungated.
    """

    name = "cps"

    def __init__(
        self,
        roles: Sequence[str] = ("cnn", "transformer"),
        weight=1.0,
        direction: str = "both",
        confidence: float = 0.0,
        dice_weight: float = 1.0,
        ce_weight: float = 0.0,
        per_class: bool = False,
        name: str | None = None,
    ) -> None:
        super().__init__(weight, name)
        self.roles, self.direction = tuple(roles), check_direction(direction)
        if len(self.roles) != 2:
            raise ValueError(f"cross pseudo supervision needs two roles, got {self.roles}")
        self.dice_weight, self.ce_weight = float(dice_weight), float(ce_weight)
        self.criterion = CrossPseudoSupervisionLoss(confidence=confidence, per_class=per_class)

    def _pairs(self, ctx: IterationContext) -> list[tuple[str, torch.Tensor]]:
        """``(student role, source probabilities of its pseudo-labels)`` for every pair taught."""
        if self.direction == "follower":
            leader, follower = ctx.teacher_student(self.roles)
            return [(follower, ctx.unlabeled_probs(leader))]
        a, b = self.roles
        if self.direction == "ensemble":
            mean = (0.5 * (ctx.unlabeled_probs(a) + ctx.unlabeled_probs(b))).detach()
            return [(a, mean), (b, mean)]
        return [(a, ctx.unlabeled_probs(b)), (b, ctx.unlabeled_probs(a))]

    def loss(self, ctx: IterationContext) -> torch.Tensor:
        total = ctx.probs[self.roles[0]].new_zeros(())
        for student, source in self._pairs(ctx):
            if self.dice_weight:
                dice = self.criterion.pseudo(ctx.unlabeled_probs(student), source)
                total = total + (dice if self.dice_weight == 1.0 else self.dice_weight * dice)
            if self.ce_weight:
                target = hard_labels(source)[:, 0]
                total = total + self.ce_weight * F.cross_entropy(ctx.logits[student][ctx.labeled_bs :], target)
        return total


class InformationDivergenceTerm(UnsupervisedTerm):
    """Information divergence on every image of the batch (method.md, 4).

    ``direction="both"`` (the paper): ``mean(MIG(p_a, p_b)) + mean(KL(p_a || p_b))``, neither
    side detached. ``direction="follower"``: the leader's probabilities are a detached
    target, ``mean(MIG(p_leader, p_follower)) + mean(KL(p_leader || p_follower))``, so only
    the follower is moved (KL(target || model), the distillation direction).
    ``direction="mutual"``: both directions, each network moved towards the other's detached
    probabilities: ``L(sg(p_a), p_b) + L(sg(p_b), p_a)``.
    ``direction="ensemble"``: each network is moved towards the two networks' detached mean
    ``m``: ``L(m, p_a) + L(m, p_b)``, gated by ``m``'s confidence.
    ``confidence`` > 0 averages over the confident pixels only: where the leader's largest
    probability is at least ``confidence`` (follower), or either network's is (both); with
    ``per_class``, at least the threshold of its argmax class (:func:`custom.training.losses.class_thresholds`).
    """

    name = "id"

    def __init__(
        self,
        roles: Sequence[str] = ("cnn", "transformer"),
        weight=1.0,
        kl_weight: float = 1.0,
        mig_weight: float = 1.0,
        direction: str = "both",
        confidence: float = 0.0,
        per_class: bool = False,
        name: str | None = None,
    ) -> None:
        super().__init__(weight, name)
        if not 0.0 <= confidence < 1.0:
            raise ValueError(f"confidence must be within [0, 1), got {confidence}")
        self.roles, self.direction = tuple(roles), check_direction(direction)
        self.confidence, self.per_class = float(confidence), bool(per_class)
        self.criterion = InformationDivergenceLoss(kl_weight=kl_weight, mig_weight=mig_weight, reduction="none")

    def divergence(self, target: torch.Tensor, model: torch.Tensor) -> torch.Tensor:
        """Per pixel ``MIG(target, model) + KL(target || model)``."""
        return self.criterion(target, model)

    def _pair(self, target: torch.Tensor, model: torch.Tensor, sources: Sequence[torch.Tensor]) -> torch.Tensor:
        """``mean(divergence(target, model))`` over the pixels where one of ``sources`` is
        confident when gated."""
        per_pixel = self.divergence(target, model)
        if self.confidence <= 0:
            return per_pixel.mean()
        mask = torch.stack([confidence_mask(p, self.confidence, self.per_class) for p in sources]).amax(dim=0)
        return masked_mean(per_pixel, mask)

    def loss(self, ctx: IterationContext) -> torch.Tensor:
        if self.direction == "follower":
            leader, follower = ctx.teacher_student(self.roles)
            target = ctx.probs[leader].detach()
            return self._pair(target, ctx.probs[follower], (target,))
        a, b = (ctx.probs[r] for r in self.roles)
        if self.direction == "ensemble":
            mean = (0.5 * (a + b)).detach()
            return self._pair(mean, a, (mean,)) + self._pair(mean, b, (mean,))
        if self.direction == "mutual":
            return self._pair(a.detach(), b, (a,)) + self._pair(b.detach(), a, (b,))
        return self._pair(a, b, (a, b))


class InterpolationConsistencyTerm(UnsupervisedTerm):
    """ICT: the unlabelled halves are mixed with ``lambda ~ Beta(alpha, alpha)``; each network
    in ``roles`` predicts the mixed images and is pulled (MSE) towards the mixed probabilities of
    the EMA teacher of ``teacher`` (default: the first role) (method.md, 3). The reference
    applies it to the Swin-Unet only, with the Swin-Unet's EMA teacher."""

    name = "ict"
    own_graph = True  # its loss needs none of the shared forward: the trainer backpropagates it apart

    def __init__(
        self,
        roles: Sequence[str] = ("transformer",),
        weight=1.0,
        alpha: float = 0.5,
        teacher: str | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(weight, name)
        self.roles, self.alpha = tuple(roles), float(alpha)
        self.teacher_roles = (teacher or self.roles[0],)
        self.criterion = InterpolationConsistencyLoss()

    def loss(self, ctx: IterationContext) -> torch.Tensor:
        role_t = self.teacher_roles[0]
        teacher = ctx.teacher(role_t)
        with ctx.autocast(role_t):
            x_mix, target, _ = interpolation_mixup(
                ctx.unlabeled_images, lambda x: torch.softmax(teacher(x).float(), 1), self.alpha, ctx.generator
            )
        total = 0.0
        for role in self.roles:
            with ctx.autocast(role):
                total = total + self.criterion(torch.softmax(ctx.networks[role](x_mix).float(), 1), target)
        return total
