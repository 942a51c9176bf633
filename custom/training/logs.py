"""Console output of the bundle's training: the iteration-log interval, and on a terminal one
progress bar per epoch with the log lines printed above it rather than through it (off a
terminal, a log file or a pipe, no bar: the log lines are the progress).

``train.yaml`` uses both::

    - _target_: StatsHandler
      iteration_log: '$custom.training.logs.every_n(@log_every)'   # one line every log_every iterations
    - _target_: custom.training.logs.ProgressBar                   # ignite's bar, kept after each epoch
      persist: true
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import Any

from ignite.engine import Events
from ignite.handlers import ProgressBar as _IgniteProgressBar

__all__ = ["every_n", "on_terminal", "ProgressBar", "TqdmStreamHandler", "route_console_through_tqdm"]


def every_n(n: int) -> Callable[[Any, int], bool] | bool:
    """An event filter for MONAI's ``StatsHandler(iteration_log=...)``: true every ``n``-th iteration.

    ``StatsHandler`` takes a bool or a callable ``(engine, event) -> bool`` (``event`` is the
    engine's global iteration), not an interval. ``n <= 0`` turns iteration lines off.
    """
    n = int(n)
    if n <= 0:
        return False

    def _every(engine: Any, event: int) -> bool:
        return event % n == 0

    _every.__name__ = f"every_{n}"
    return _every


class TqdmStreamHandler(logging.StreamHandler):
    """A ``StreamHandler`` that writes through ``tqdm.write``: an open progress bar is cleared,
    the line printed, and the bar drawn again below it."""

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm import tqdm

        try:
            tqdm.write(self.format(record), file=self.stream)
            self.flush()
        except RecursionError:
            raise
        except Exception:  # noqa: BLE001 - logging must never raise
            self.handleError(record)


def route_console_through_tqdm(logger: logging.Logger | None = None) -> int:
    """Replace the console ``StreamHandler`` s (stdout/stderr) of ``logger`` (default: root) by
    :class:`TqdmStreamHandler` s with the same level, formatter and filters; returns how many."""
    logger = logger or logging.getLogger()
    replaced = 0
    for i, handler in enumerate(list(logger.handlers)):
        if type(handler) is not logging.StreamHandler or handler.stream not in (sys.stdout, sys.stderr):
            continue
        new = TqdmStreamHandler(handler.stream)
        new.setLevel(handler.level)
        new.setFormatter(handler.formatter)
        for f in handler.filters:
            new.addFilter(f)
        logger.handlers[i] = new
        replaced += 1
    return replaced


def on_terminal(stream: Any = None) -> bool:
    """Whether ``stream`` (default: stderr, where the bars go) is an interactive terminal."""
    stream = sys.stderr if stream is None else stream
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


class ProgressBar(_IgniteProgressBar):
    """Ignite's ``ProgressBar`` that prints the console log lines above the bar (through
    ``tqdm.write``) instead of through it, and closes the bar before the epoch's other handlers
    (validation, saving) log, so with ``persist=True`` each epoch leaves one finished bar."""

    def attach(self, engine: Any, *args: Any, **kwargs: Any) -> None:
        if not on_terminal():
            # a log file or a pipe gets lines, not ~1,400 redraws glued to them: the StatsHandler's
            # iteration lines and ignite's "Epoch[n] Complete" line are the progress there
            logging.getLogger(__name__).info("output is not a terminal: progress as log lines, no progress bar")
            return
        route_console_through_tqdm()
        super().attach(engine, *args, **kwargs)
        closing = kwargs.get("closing_event_name", args[3] if len(args) > 3 else Events.EPOCH_COMPLETED)
        handlers = getattr(engine, "_event_handlers", {}).get(closing)
        if handlers:  # ignite appends; run our close first (no public API to prepend)
            mine = [h for h in handlers if h[0] == self._close]
            handlers[:] = mine + [h for h in handlers if h[0] != self._close]
