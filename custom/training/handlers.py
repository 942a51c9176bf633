"""Ignite handlers of the trainer that MONAI does not have: every learning-rate schedule of the
method in one entry, the method's own handlers by name and the Swin-Unet's validation (the
choice of the leading network is :class:`custom.training.coupling.Coupling`'s). train.yaml
lists them once; a method fills the mappings they read (``lr_schedulers``, ``method_handlers``),
so no method edits the handler list."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ignite.engine import Engine
from monai.handlers import LrScheduleHandler, ValidationHandler

__all__ = ["LrSchedules", "Handlers", "NetworkValidationHandler"]


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
