"""The coupling of two networks in the cross terms: how they teach each other, and which one leads.

One component holds the decision (method.md; ``bundle/docs/measurements.md`` for the measurements):

* ``direction``, one vocabulary for every cross term (:mod:`custom.training.terms`):
  ``follower`` (only the network that validates worse learns, from the leader's detached
  predictions), ``both`` (the paper: both directions, nothing detached), ``mutual`` (both
  directions, each towards the other's detached probabilities; for pseudo-labels, which are
  always detached, the same as ``both``) and ``ensemble`` (each towards the two networks'
  detached mean);
* ``leader``: ``validation`` (the network with the better validation metric, re-chosen at the
  end of every epoch; the first role until then) or a role that always leads.

It is an Ignite handler (attached among the method's handlers, after validation and before the
training state is saved): at the end of each epoch it chooses the leader and, under torchrun,
sets every rank's leader to rank 0's (the metric handlers all-gather their values, so every rank
computes the same leader; the broadcast makes that an invariant rather than an assumption, as a
differing leader would make the ranks optimise different losses). The trainer reads
:attr:`Coupling.leader` each iteration and saves it with its state.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from ignite.engine import Engine, Events

__all__ = ["COUPLINGS", "LEADER_BY_VALIDATION", "Coupling", "check_direction"]

logger = logging.getLogger(__name__)

COUPLINGS = ("follower", "both", "mutual", "ensemble")
LEADER_BY_VALIDATION = "validation"


def check_direction(direction: str) -> str:
    if direction not in COUPLINGS:
        raise ValueError(f"coupling direction must be one of {COUPLINGS}, got {direction!r}")
    return direction


class Coupling:
    """How ``roles`` (two networks) teach each other, and which one leads (see the module).

    Args:
        direction: one of :data:`COUPLINGS`.
        roles: the two coupled networks; the first leads until a validation has chosen.
        leader: ``"validation"`` or one of ``roles`` (always that one).
        evaluators: role -> evaluator whose ``state.metrics[metric_names[role]]`` rates it
            (``leader="validation"``); a role whose evaluator has not run yet is not rated,
            and the leader stays until both are.
        metric_names: role -> metric name.
        margin: a challenger must beat the leader's metric by more than this (ties keep the leader).
        src: the rank whose leader every rank takes.
    """

    def __init__(
        self,
        direction: str = "follower",
        roles: Sequence[str] = ("cnn", "transformer"),
        leader: str = LEADER_BY_VALIDATION,
        evaluators: Mapping[str, Any] | None = None,
        metric_names: Mapping[str, str] | None = None,
        margin: float = 0.0,
        src: int = 0,
    ) -> None:
        self.direction = check_direction(direction)
        self.roles = tuple(roles)
        if len(self.roles) != 2:
            raise ValueError(f"a coupling is between two networks, got roles {self.roles}")
        if leader not in (LEADER_BY_VALIDATION, *self.roles):
            raise ValueError(f"leader must be {LEADER_BY_VALIDATION!r} or one of {self.roles}, got {leader!r}")
        self.by_validation = leader == LEADER_BY_VALIDATION
        self.leader = self.roles[0] if self.by_validation else leader
        self.evaluators, self.metric_names = dict(evaluators or {}), dict(metric_names or {})
        if self.by_validation and set(self.evaluators) != set(self.roles):
            raise ValueError(f"leader by validation needs an evaluator of each role {self.roles}")
        self.margin, self.src = float(margin), int(src)
        self.history: list[dict] = []
        self.mismatches = 0

    # ----------------------------------------------------------------- the Ignite handler
    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        if self.direction == "follower" and self.by_validation:
            self.select(engine)
        self.broadcast()

    def select(self, engine: Engine | None = None) -> str:
        """The role with the best latest validation metric leads (ties, or within ``margin``,
        keep the current leader); unchanged until every role has been validated."""
        scores = {}
        for role, ev in self.evaluators.items():
            state = getattr(ev, "state", None)
            value = state.metrics.get(self.metric_names[role]) if state is not None else None
            if value is not None:
                scores[role] = float(value)
        if len(scores) < len(self.roles):
            return self.leader
        best = max(scores, key=scores.get)
        if scores[best] <= scores[self.leader] + self.margin:
            best = self.leader
        self.leader = best
        iteration = engine.state.iteration if engine is not None else None
        self.history.append({"iteration": iteration, "leader": best, **scores})
        (engine.logger if engine is not None else logger).info(
            "leader for the cross terms: %s (validation %s)", best, scores
        )
        return best

    def broadcast(self) -> str:
        """Every rank's leader set to rank ``src``'s (a no-op in one process; a collective under
        torchrun: every rank calls it at the same events). A rank whose own choice differed logs a
        warning: it saw different validation metrics."""
        from custom.training.distributed import broadcast_object, get_rank

        chosen = broadcast_object(self.leader, self.src)
        if chosen != self.leader:
            self.mismatches += 1
            logger.warning("rank %d: leader %r replaced by rank %d's %r", get_rank(), self.leader, self.src, chosen)
        self.leader = chosen
        return chosen
