"""Unsupervised terms: the unit of variation between semi-supervised methods.

A term is a small component with one job: given what the trainer computed this iteration
(:class:`IterationContext`), return a loss. The trainer multiplies it by the term's
ramp-up weight and skips the term entirely while that weight is 0 (a warm-up), so a
method is a list of terms in a config, never a new training loop.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from .ema import EMATeacher
from .losses import (
    CrossPseudoSupervisionLoss,
    InformationDivergenceLoss,
    InterpolationConsistencyLoss,
    confidence_mask,
    masked_mean,
)
from .mixup import interpolation_mixup

__all__ = [
    "IterationContext",
    "UnsupervisedTerm",
    "CrossPseudoSupervisionTerm",
    "InterpolationConsistencyTerm",
    "InformationDivergenceTerm",
    "SelfTrainingTerm",
    "perturb_intensity",
    "LeaderSelector",
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
    leader: str | None = None
    #: role -> EMA teacher of that role's network (the trainer's ``teachers``)
    teachers: dict[str, EMATeacher] = field(default_factory=dict)
    #: values computed once per iteration and shared by the terms (see :meth:`teacher_probs`)
    cache: dict = field(default_factory=dict)

    def teacher_probs(self, role: str) -> torch.Tensor:
        """``softmax(teacher_role(x_u))`` of the EMA teacher of ``role`` on the unlabelled images,
        computed once per iteration whichever terms ask for it (no gradient)."""
        key = ("teacher_probs", role)
        if key not in self.cache:
            teacher = self.teachers.get(role)
            if teacher is None:
                raise RuntimeError(
                    f"no EMA teacher of {role!r}: set train#trainer#teachers, e.g. {{{role}: '@cnn_teacher'}}"
                )
            with torch.no_grad(), self.autocast():
                self.cache[key] = torch.softmax(teacher(self.unlabeled_images).float(), 1)
        return self.cache[key]

    @property
    def unlabeled_images(self) -> torch.Tensor:
        return self.images[self.labeled_bs :]

    def unlabeled_probs(self, role: str) -> torch.Tensor:
        return self.probs[role][self.labeled_bs :]

    def teacher_student(self, roles: Sequence[str]) -> tuple[str, str]:
        """``(leader, follower)`` among two roles; the leader is the trainer's current one
        (chosen by validation, see :class:`LeaderSelector`), else the first role."""
        a, b = roles
        leader = self.leader if self.leader in (a, b) else a
        return leader, (b if leader == a else a)


DIRECTIONS = ("both", "mutual", "follower", "ensemble")


def _check_direction(direction: str) -> str:
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    return direction


class UnsupervisedTerm(nn.Module):
    """Base class: ``name`` (used in logs as ``loss_<name>``), a ``weight`` schedule, ``loss(ctx)``."""

    name = "term"

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

    def loss(self, ctx: IterationContext) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


class CrossPseudoSupervisionTerm(UnsupervisedTerm):
    """Cross pseudo supervision between two networks (method.md, 2).

    ``direction="both"`` (the paper): ``Dice(p_a_u, argmax p_b_u) + Dice(p_b_u, argmax p_a_u)``.
    ``direction="follower"``: only ``Dice(p_follower_u, argmax p_leader_u)``: the network that
    validates worse learns from the better one's pseudo-labels, never the other way round.
    ``"mutual"`` is ``"both"`` (pseudo-labels are always detached). ``"ensemble"``: each network
    learns from the pseudo-labels of the two networks' mean probabilities (detached):
    ``Dice(p_a_u, argmax m_u) + Dice(p_b_u, argmax m_u)``, ``m = (p_a + p_b) / 2``.
    ``confidence`` > 0 keeps only the pixels where the pseudo-label's source is at least that
    confident (:class:`custom.losses.CrossPseudoSupervisionLoss`).
    """

    name = "cps"

    def __init__(
        self,
        roles: Sequence[str] = ("cnn", "transformer"),
        weight=1.0,
        direction: str = "both",
        confidence: float = 0.0,
        name: str | None = None,
    ) -> None:
        super().__init__(weight, name)
        self.roles, self.direction = tuple(roles), _check_direction(direction)
        self.criterion = CrossPseudoSupervisionLoss(confidence=confidence)

    def loss(self, ctx: IterationContext) -> torch.Tensor:
        if self.direction == "follower":
            leader, follower = ctx.teacher_student(self.roles)
            return self.criterion.pseudo(ctx.unlabeled_probs(follower), ctx.unlabeled_probs(leader))
        if self.direction == "ensemble":
            p_a, p_b = (ctx.unlabeled_probs(r) for r in self.roles)
            mean = (0.5 * (p_a + p_b)).detach()
            return self.criterion.pseudo(p_a, mean) + self.criterion.pseudo(p_b, mean)
        a, b = self.roles
        return self.criterion(ctx.unlabeled_probs(a), ctx.unlabeled_probs(b))


class InformationDivergenceTerm(UnsupervisedTerm):
    """Information divergence on every image of the batch (method.md, 4).

    ``direction="both"`` (the paper): ``mean(MIG(p_a, p_b)) + mean(KL(p_a || p_b))``, neither
    side detached. ``direction="follower"``: the leader's probabilities are a detached
    target, ``mean(MIG(p_leader, p_follower)) + mean(KL(p_leader || p_follower))``, so only
    the follower is moved (KL(target || model), the distillation direction).
    ``direction="mutual"``: both directions, each network moved towards the other's detached
    probabilities: ``L(sg(p_a), p_b) + L(sg(p_b), p_a)``. ``reverse_kl`` swaps the KL's
    arguments (``KL(p_model || p_target)``, mode-seeking) in every direction.
    ``direction="ensemble"``: each network is moved towards the two networks' detached mean
    ``m``: ``L(m, p_a) + L(m, p_b)``, gated by ``m``'s confidence.
    ``confidence`` > 0 averages over the confident pixels only: where the leader's largest
    probability is at least ``confidence`` (follower), or either network's is (both).
    """

    name = "id"

    def __init__(
        self,
        roles: Sequence[str] = ("cnn", "transformer"),
        weight=1.0,
        kl_weight: float = 1.0,
        mig_weight: float = 1.0,
        unlabeled_only: bool = False,
        direction: str = "both",
        confidence: float = 0.0,
        reverse_kl: bool = False,
        name: str | None = None,
    ) -> None:
        super().__init__(weight, name)
        if not 0.0 <= confidence < 1.0:
            raise ValueError(f"confidence must be within [0, 1), got {confidence}")
        self.roles, self.direction = tuple(roles), _check_direction(direction)
        self.unlabeled_only, self.confidence, self.reverse_kl = unlabeled_only, float(confidence), bool(reverse_kl)
        self.criterion = InformationDivergenceLoss(kl_weight=kl_weight, mig_weight=mig_weight, reduction="none")

    def _pair(self, target: torch.Tensor, model: torch.Tensor, sources: Sequence[torch.Tensor]) -> torch.Tensor:
        """``mean(MIG(target, model) + KL(target || model))`` (reversed: ``KL(model || target)``),
        over the pixels where one of ``sources`` is confident when gated."""
        per_pixel = (
            self.criterion(model, target) if self.reverse_kl else self.criterion(target, model)
        )  # MIG is symmetric
        if self.confidence <= 0:
            return per_pixel.mean()
        mask = torch.stack([confidence_mask(p, self.confidence) for p in sources]).amax(dim=0)
        return masked_mean(per_pixel, mask)

    def loss(self, ctx: IterationContext) -> torch.Tensor:
        start = ctx.labeled_bs if self.unlabeled_only else 0
        if self.direction == "follower":
            leader, follower = ctx.teacher_student(self.roles)
            target = ctx.probs[leader][start:].detach()
            return self._pair(target, ctx.probs[follower][start:], (target,))
        a, b = (ctx.probs[r][start:] for r in self.roles)
        if self.direction == "ensemble":
            mean = (0.5 * (a + b)).detach()
            return self._pair(mean, a, (mean,)) + self._pair(mean, b, (mean,))
        if self.direction == "mutual":
            return self._pair(a.detach(), b, (a,)) + self._pair(b.detach(), a, (b,))
        return self._pair(a, b, (a, b))


class InterpolationConsistencyTerm(UnsupervisedTerm):
    """ICT: the unlabelled halves are mixed with ``lambda ~ Beta(alpha, alpha)``; each network
    in ``roles`` predicts the mixed images and is pulled (MSE) towards the mixed EMA-teacher
    probabilities (method.md, 3). The reference applies it to the Swin-Unet only."""

    name = "ict"
    own_graph = True  # its loss needs none of the shared forward: the trainer backpropagates it apart

    def __init__(
        self, roles: Sequence[str] = ("transformer",), weight=1.0, alpha: float = 0.5, name: str | None = None
    ) -> None:
        super().__init__(weight, name)
        self.roles, self.alpha = tuple(roles), float(alpha)
        self.criterion = InterpolationConsistencyLoss()

    def loss(self, ctx: IterationContext) -> torch.Tensor:
        if ctx.teacher is None:
            raise RuntimeError("InterpolationConsistencyTerm needs an EMA teacher: set the trainer's teacher")
        with ctx.autocast():
            x_mix, target, _ = interpolation_mixup(
                ctx.unlabeled_images, lambda x: torch.softmax(ctx.teacher(x).float(), 1), self.alpha, ctx.generator
            )
            total = 0.0
            for role in self.roles:
                total = total + self.criterion(torch.softmax(ctx.networks[role](x_mix).float(), 1), target)
        return total


def perturb_intensity(
    x: torch.Tensor,
    gamma: tuple[float, float] = (0.5, 1.5),
    scale: tuple[float, float] = (0.8, 1.2),
    noise_std: float = 0.05,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """A strongly perturbed copy of images in [0, 1]: per image ``clip(s * x ** g + n, 0, 1)``
    with ``g ~ U(gamma)``, ``s ~ U(scale)`` (drawn from ``generator``) and Gaussian noise ``n``
    of std ``noise_std``; the same intensity changes as the labelled augmentation, applied to
    a whole batch on its device (no geometry, so the pseudo-labels stay aligned)."""
    n = x.shape[0]
    u = torch.rand(2, n, generator=generator).to(x.device, x.dtype).view(2, n, *([1] * (x.ndim - 1)))
    g = gamma[0] + (gamma[1] - gamma[0]) * u[0]
    s = scale[0] + (scale[1] - scale[0]) * u[1]
    out = s * x.clamp_min(0).pow(g)
    if noise_std > 0:
        out = out + noise_std * torch.randn_like(x)
    return out.clamp(0.0, 1.0)


class SelfTrainingTerm(UnsupervisedTerm):
    """Self-training under perturbation (FixMatch-style, for segmentation): each network in
    ``roles`` predicts a strongly perturbed copy of the unlabelled images
    (:func:`perturb_intensity`) and is pulled (Dice) towards its own detached pseudo-labels on
    the clean images (from the shared forward), on the pixels where those are at least
    ``confidence`` sure. It needs no other network, so a network that leads the cross terms
    still learns from the unlabelled images."""

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
        with ctx.autocast():
            for role in self.roles:
                p_s = torch.softmax(ctx.networks[role](x_s).float(), 1)
                total = total + self.criterion.pseudo(p_s, ctx.unlabeled_probs(role).detach())
        return total


class LeaderSelector:
    """Chooses the leader among networks by their latest validation metric.

    Attach after the validation handlers: at the end of each epoch it reads
    ``evaluators[role].state.metrics[metric_names[role]]`` and sets ``trainer.leader`` to
    the role with the highest value (ties keep the current leader). Before any validation
    the trainer's ``leader`` (its ``initial_leader``) holds.
    """

    def __init__(self, evaluators: dict, metric_names: dict, margin: float = 0.0) -> None:
        self.evaluators, self.metric_names, self.margin = dict(evaluators), dict(metric_names), float(margin)
        self.history: list[dict] = []

    def attach(self, engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine) -> None:
        scores = {}
        for role, ev in self.evaluators.items():
            value = ev.state.metrics.get(self.metric_names[role]) if getattr(ev, "state", None) is not None else None
            if value is not None:
                scores[role] = float(value)
        if len(scores) < 2:
            return
        current = getattr(engine, "leader", None)
        best = max(scores, key=scores.get)
        if current in scores and scores[best] <= scores[current] + self.margin:
            best = current
        engine.leader = best
        self.history.append({"iteration": engine.state.iteration, "leader": best, **scores})
        engine.logger.info("leader for the cross terms: %s (validation %s)", best, scores)
