"""Ramp-up weights, the poly learning-rate schedule (method.md, "Schedule") and the optimiser and
schedule of every network of a method."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["sigmoid_rampup", "ramp_weight", "poly_lr", "PolyLRLambda", "RampUp", "per_role", "poly_schedules"]


def sigmoid_rampup(current: float, length: float) -> float:
    """``exp(-5 (1 - s / length)^2)`` with ``s = clip(current, 0, length)``; 1 when ``length == 0``."""
    if length <= 0:
        return 1.0
    s = min(max(float(current), 0.0), float(length))
    phase = 1.0 - s / length
    return math.exp(-5.0 * phase * phase)


def ramp_weight(
    iteration: int,
    beta: float,
    total_iterations: int,
    ramp_steps: int = 200,
    ramp_fraction: float = 1.0,
    start: int = 0,
) -> float:
    """The weight ``w(t) = beta * exp(-5 (1 - s / ramp_steps)^2)``, ``s = clip((t - start) // r, 0, ramp_steps)``.

    ``r`` is chosen so that the ramp spans ``ramp_fraction`` of the iterations after ``start``
    (the whole run by default). Before ``start`` (a warm-up) the weight is 0.
    """
    if iteration < start:
        return 0.0
    span = max(1.0, (total_iterations - start) * ramp_fraction)
    step = math.floor((iteration - start) * ramp_steps / span)  # (t - start) // r with r = span / ramp_steps
    return float(beta) * sigmoid_rampup(step, ramp_steps)


def poly_lr(base_lr: float, iteration: int, total_iterations: int, power: float = 0.9) -> float:
    """``lr = base * (1 - t / T)^power``, clipped at 0 after ``T``."""
    frac = min(max(iteration / float(total_iterations), 0.0), 1.0)
    return base_lr * (1.0 - frac) ** power


class PolyLRLambda:
    """Multiplicative factor for ``torch.optim.lr_scheduler.LambdaLR`` (picklable, config-friendly)."""

    def __init__(self, total_iterations: int, power: float = 0.9) -> None:
        if total_iterations <= 0:
            raise ValueError(f"total_iterations must be positive, got {total_iterations}")
        self.total_iterations, self.power = int(total_iterations), float(power)

    def __call__(self, iteration: int) -> float:
        return poly_lr(1.0, iteration, self.total_iterations, self.power)


class RampUp:
    """A term's weight as a function of the iteration: ``ramp_weight`` with fixed settings.

    Args:
        beta: the final weight.
        total_iterations: the run length the ramp is fitted to.
        ramp_fraction: share of the run (after ``start``) the ramp spans (1.0: the whole run).
        start: iterations before the term starts (weight 0), e.g. a supervised warm-up.
        ramp_steps: the reference's 200 ramp steps.
    """

    def __init__(
        self,
        beta: float = 1.0,
        total_iterations: int = 1,
        ramp_fraction: float = 1.0,
        start: int = 0,
        ramp_steps: int = 200,
    ) -> None:
        self.beta, self.total_iterations = float(beta), int(total_iterations)
        self.ramp_fraction, self.start, self.ramp_steps = float(ramp_fraction), int(start), int(ramp_steps)

    def __call__(self, iteration: int) -> float:
        return ramp_weight(iteration, self.beta, self.total_iterations, self.ramp_steps, self.ramp_fraction, self.start)

    def __repr__(self) -> str:
        return (
            f"RampUp(beta={self.beta}, total_iterations={self.total_iterations}, "
            f"ramp_fraction={self.ramp_fraction}, start={self.start})"
        )


def per_role(optimizer: Callable[..., Any], networks: Mapping[str, Any]) -> dict[str, Any]:
    """``{role: optimizer(network.parameters())}`` for every network of the method, in order
    (``optimizer``: a partial optimiser, e.g. train.yaml's ``optimizer_def``)."""
    return {role: optimizer(net.parameters()) for role, net in networks.items()}


def poly_schedules(optimizers: Mapping[str, Any], total_iterations: int, power: float = 0.9) -> dict[str, Any]:
    """A ``LambdaLR`` with the poly schedule (:class:`PolyLRLambda`) for every optimiser, by role."""
    from torch.optim.lr_scheduler import LambdaLR

    return {role: LambdaLR(opt, PolyLRLambda(total_iterations, power)) for role, opt in optimizers.items()}
