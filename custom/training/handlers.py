"""Ignite handlers of the trainer that MONAI does not have: every learning-rate schedule of the
method in one entry, the method's own handlers by name, the Swin-Unet's validation and the
choice of the leading network. train.yaml lists them once; a method fills the mappings they
read (``lr_schedulers``, ``method_handlers``), so no method edits the handler list."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ignite.engine import Engine, Events
from monai.handlers import LrScheduleHandler, ValidationHandler

__all__ = ["LrSchedules", "Handlers", "NetworkValidationHandler", "LeaderSelector"]


class LrSchedules:
    """MONAI's ``LrScheduleHandler`` (stepped every iteration) for every scheduler of
    ``lr_schedulers`` (role -> scheduler, in order)."""

    def __init__(self, lr_schedulers: Mapping[str, Any], epoch_level: bool = False) -> None:
        self.handlers = [
            LrScheduleHandler(s, epoch_level=epoch_level, print_lr=False) for s in dict(lr_schedulers).values()
        ]

    def attach(self, engine: Engine) -> None:
        for h in self.handlers:
            h.attach(engine)


class Handlers:
    """Handlers given by name (``{name: handler}``, in order; a disabled one is ``None``),
    attached in that order where this entry stands in the engine's handler list."""

    def __init__(self, handlers: Mapping[str, Any] | None = None) -> None:
        self.handlers = {name: h for name, h in dict(handlers or {}).items() if h is not None}

    def attach(self, engine: Engine) -> None:
        for h in self.handlers.values():
            h.attach(engine)


class NetworkValidationHandler(ValidationHandler):
    """MONAI's ``ValidationHandler`` for a further network (the Swin-Unet) validated on the
    same schedule as the deployed one. A separate class name keeps MONAI's bundle property
    check, which expects every plain ``ValidationHandler`` to run ``validate#evaluator``,
    meaningful for the deployed network."""


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
