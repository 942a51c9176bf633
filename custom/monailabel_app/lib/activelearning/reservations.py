"""Several annotators on one server: a frame handed out by a next-sample strategy is reserved for
the client that asked, for ``reserve_s`` seconds (``--conf reserve_s``, default 300; 0: off), and
no strategy hands it to another client meanwhile. Labelling the frame ends its reservation (it
leaves the unlabelled images); asking again with the same ``client_id`` may return the same
frame. A request without ``client_id`` is a client of its own: it never gets a frame reserved by
another request.

MONAI Label's own ``random`` strategy weights each frame by the seconds since it was last handed
out, so a frame handed out in the current second weighs 0, and when all weigh 0
``random.choices`` raises ``ValueError: Total of weights must be greater than zero``.
:class:`RandomStrategy` draws among the free frames with a weight of at least 1.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from typing import Any, Dict, Iterable

from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.strategy import Strategy

logger = logging.getLogger(__name__)

DEFAULT_RESERVE_S = 300.0


class Reservations:
    """``{image id: (client, expiry)}`` in memory (one server process), thread-safe."""

    def __init__(self, reserve_s: float = DEFAULT_RESERVE_S, clock=time.time) -> None:
        self.reserve_s = max(0.0, float(reserve_s))
        self._clock = clock
        self._held: Dict[str, tuple[str, float]] = {}
        self.lock = threading.RLock()

    def _purge(self) -> None:
        now = self._clock()
        for image in [i for i, (_, until) in self._held.items() if until <= now]:
            del self._held[image]

    def held_by_others(self, client: str) -> set[str]:
        with self.lock:
            self._purge()
            return {i for i, (who, _) in self._held.items() if who != client}

    def reserve(self, image: str, client: str) -> float | None:
        """Reserve ``image`` for ``client``; returns the expiry (epoch seconds), ``None`` when off."""
        if self.reserve_s <= 0:
            return None
        with self.lock:
            until = self._clock() + self.reserve_s
            self._held[image] = (client, until)
            return until

    def release(self, images: Iterable[str]) -> None:
        with self.lock:
            for image in images:
                self._held.pop(image, None)


class FreeImagesView:
    """The datastore as a strategy sees it: unlabelled images reserved by other clients left out;
    everything else is the datastore's own."""

    def __init__(self, datastore: Datastore, excluded: set[str]) -> None:
        self._datastore, self._excluded = datastore, set(excluded)
        self.excluded_count = 0

    def get_unlabeled_images(self, *args: Any, **kwargs: Any):
        images = self._datastore.get_unlabeled_images(*args, **kwargs)
        free = [i for i in images if i not in self._excluded]
        self.excluded_count = len(images) - len(free)
        return free

    def __getattr__(self, name: str) -> Any:
        return getattr(self._datastore, name)


class RandomStrategy(Strategy):
    """A random unlabelled frame, frames handed out longer ago being likelier (as MONAI Label's
    ``random``), never failing on frames handed out this second."""

    def __init__(self) -> None:
        super().__init__("Random unlabelled image (not reserved by another client)")

    def __call__(self, request, datastore: Datastore):
        images = sorted(datastore.get_unlabeled_images(request.get("label_tag"), request.get("labels")))
        if not images:
            return None
        strategy, now = request.get("strategy", "random"), int(time.time())
        weights = [
            max(1, now - int(datastore.get_image_info(i).get("strategy", {}).get(strategy, {}).get("ts", 0) or 0))
            for i in images
        ]
        image = random.choices(images, weights=weights)[0]
        logger.info("random strategy: selected %s among %d", image, len(images))
        return {"id": image}
